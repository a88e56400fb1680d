"""The agent's file access in restored trees, the restore-files target rule, the names an
env file may set, and the literal snapshot paths: against real files, without mocks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.core import restored_files
from agent.core.errors import ValidationFailed
from agent.core.models import RestoreFilesRequest
from agent.core.settings import Settings
from agent.operations.restore_data import allowed_target
from agent.runtime.agentenv import agent_environment, module_variable

UUID = "48ce000a-79b7-5fe6-8558-177fd70c27b4"


def test_open_beneath_refuses_links_and_creates_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(restored_files.NotPlain):
        restored_files.open_beneath(tmp_path, ["link", "b"], create=True)
    assert not (tmp_path / "a" / "b").exists()
    with pytest.raises(FileNotFoundError):
        restored_files.open_beneath(tmp_path, ["a", "b"])
    opened = restored_files.open_beneath(tmp_path, ["a", "b", "c"], create=True)
    opened.close()
    assert opened.created == ["a/b", "a/b/c"]
    assert stat.S_IMODE((tmp_path / "a" / "b" / "c").stat().st_mode) == 0o700
    (tmp_path / "a" / "b" / "c" / "file").write_text("x")
    restored_files.remove_created(tmp_path, opened.created)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == []


def test_reads_and_writes_never_follow_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("host file\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "result.json").symlink_to(outside)
    (tree / "dump").symlink_to(outside)
    os.mkfifo(tree / "fifo")
    with restored_files.directory(tmp_path, ["tree"]) as fd:
        restored_files.write_replacing(fd, "result.json", b"{}\n")
        for name in ("dump", "fifo"):
            with pytest.raises(restored_files.NotPlain, match="not a regular file"):
                restored_files.read_regular(fd, name, 100)
        assert restored_files.read_regular(fd, "result.json", 100) == b"{}\n"
        assert restored_files.read_regular(fd, "absent", 100) is None
        with pytest.raises(restored_files.NotPlain, match="larger"):
            restored_files.read_regular(fd, "result.json", 2)
    assert outside.read_text() == "host file\n"
    assert not (tree / "result.json").is_symlink()
    assert sorted(p.name for p in tree.iterdir()) == ["dump", "fifo", "result.json"]


def test_strip_setid_clears_files_only_and_stays_in_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("x")
    outside.chmod(0o4755)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub").chmod(0o2755)
    for name, mode in (("suid", 0o4750), ("sgid", 0o2711), ("plain", 0o640)):
        (tree / "sub" / name).write_text("x")
        (tree / "sub" / name).chmod(mode)
    (tree / "link").symlink_to(outside)
    with restored_files.directory(tmp_path, ["tree"]) as fd:
        assert restored_files.strip_setid(fd) == 2
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tree / "sub").iterdir()}
    assert modes == {"suid": 0o750, "sgid": 0o711, "plain": 0o640}
    assert stat.S_IMODE((tree / "sub").stat().st_mode) == 0o2755
    assert stat.S_IMODE(outside.stat().st_mode) == 0o4755


def test_restore_files_targets_are_strictly_under_a_root() -> None:
    roots = (Path("/var/lib/backup-agent/restored"), Path("/root"))
    assert allowed_target(roots, "/root/picked/x") == (Path("/root"), ("picked", "x"))
    assert allowed_target(roots, "/var/lib/backup-agent/restored/a/")[1] == ("a",)
    for bad in ("/root", "/root/../etc", "/etc/cron.d", "/rootx/a", "relative/a", "/"):
        with pytest.raises(ValidationFailed) as refused:
            allowed_target(roots, bad)
        assert refused.value.errors[0]["error"] == "target_not_allowed"


def test_env_files_set_only_plain_names_the_node_does_not_own(tmp_path: Path) -> None:
    for name in ("WIKI_TITLE", "TCP_PORT", "MODULE_ID", "REDIS_IMAGE", "lower_case"):
        assert module_variable(name), name
    for name in ("PATH", "BASH_ENV", "ENV", "LD_PRELOAD", "PYTHONPATH", "REDIS_URL"):
        assert not module_variable(name), name
    for name in ("REDIS_PASSWORD", "AGENT_ID", "NODE_ID", "BASH_FUNC_x%%", "A-B", "1A"):
        assert not module_variable(name), name
    settings = Settings(root=tmp_path, node_id=1, redis_url="redis://127.0.0.1:1/0")
    state = settings.state_dir("module/wiki1")
    state.mkdir(parents=True)
    (state / "environment").write_text("MODULE_ID=wiki1\nLD_PRELOAD=/x.so\nPATH=/x\n")
    (state / "agent.env").write_text("REDIS_USER=module/wiki1\nPYTHONPATH=/x\nHOME=/x\n")
    env = agent_environment(settings, "module/wiki1")
    assert env["MODULE_ID"] == "wiki1" and env["REDIS_USER"] == "module/wiki1"
    assert env.get("LD_PRELOAD") != "/x.so" and env.get("PYTHONPATH") != "/x"
    assert not env["PATH"].startswith("/x") and env.get("HOME") != "/x"
    (state / "environment").unlink()
    (state / "environment").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("MODULE_ID=stolen\n")
    assert "MODULE_ID" not in agent_environment(settings, "module/wiki1")


@pytest.mark.parametrize(
    "path",
    [
        "state/env*",
        "state/[e]nvironment",
        "state/environment",
        "/state/agent.env/",
        "state/apitoken.cache",
        "volumes/../state",
        "volumes/pages/..",
        "volumes//pages",
        "volumes/./pages",
        "volumes/a\\b",
        "volumes/$HOME",
        "volumes/a\nb",
        "etc/passwd",
    ],
)
def test_snapshot_paths_are_literal_and_never_instance_files(path: str) -> None:
    request = {"repository": UUID, "path": f"minwiki/{UUID}", "snapshot": "", "target": "/x"}
    with pytest.raises(ValidationError):
        RestoreFilesRequest.model_validate({**request, "paths": [path]})
    ok = ["state", "/volumes/pages/a b.md", "state/.hidden", "state/...", "state/environment.old"]
    assert RestoreFilesRequest.model_validate({**request, "paths": ok}).paths == ok
