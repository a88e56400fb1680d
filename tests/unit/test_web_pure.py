"""The console's pure parts: password hashes, origin checks, restic listings, events."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.core.errors import ConfigError, UnknownAgent, ValidationFailed
from agent.core.models import RestoreModuleRequest
from agent.core.restic_args import dump_args, ls_args
from agent.web import actions, auth, browse, events
from agent.web.app import content_disposition
from agent.web.server import Address, parse_listen


def test_password_hash_round_trip_and_malformed_hashes() -> None:
    stored = auth.make_hash("correct horse")
    assert auth.check_hash("correct horse", stored)
    assert not auth.check_hash("correct horsE", stored)
    for broken in ("", "plain", "scrypt$1$2$3", "md5$1$1$1$00$00", stored.replace("$", "|")):
        assert not auth.check_hash("correct horse", broken)
    assert auth.make_hash("same") != auth.make_hash("same")  # salted


def test_first_password_file_is_private_and_passwd_replaces_it(tmp_path: Path) -> None:
    password = auth.create_first_password(tmp_path)
    path = auth.initial_password_file(tmp_path)
    assert path.read_text().strip() == password
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth.hash_file(tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE(auth.web_dir(tmp_path).stat().st_mode) == 0o700
    assert auth.check_hash(password, auth.read_hash(tmp_path))
    assert auth.create_first_password(tmp_path) == ""  # never overwrites a password
    before = auth.password_generation(auth.read_hash(tmp_path))
    with pytest.raises(ConfigError):
        auth.set_password(tmp_path, "short")
    auth.set_password(tmp_path, "a longer one")
    assert not path.exists()
    assert auth.password_generation(auth.read_hash(tmp_path)) != before


def test_same_origin_needs_a_matching_origin_or_referer() -> None:
    host = "127.0.0.1:9311"
    assert auth.same_origin("http://127.0.0.1:9311", None, host, "http")
    assert auth.same_origin(None, "http://127.0.0.1:9311/browse", host, "http")
    assert not auth.same_origin("http://evil.example", None, host, "http")
    assert not auth.same_origin("https://127.0.0.1:9311", None, host, "http")
    assert not auth.same_origin("null", None, host, "http")
    assert not auth.same_origin(None, None, host, "http")
    assert not auth.same_origin("http://127.0.0.1:9311", None, None, "http")
    assert not auth.same_origin("http://127.0.0.1:9311.evil.example", None, host, "http")


def test_listing_keeps_the_direct_children_of_the_directory() -> None:
    lines = [
        {"struct_type": "snapshot", "id": "abc"},
        {"struct_type": "node", "name": "pages", "type": "dir", "path": "/volumes/pages"},
        {"struct_type": "node", "name": "b.md", "type": "file", "path": "/volumes/pages/b.md"},
        {"struct_type": "node", "name": "sub", "type": "dir", "path": "/volumes/pages/sub"},
        {"struct_type": "node", "name": "deep", "type": "file", "path": "/volumes/pages/sub/x"},
        {"struct_type": "node", "name": "odd", "type": "file", "path": 7},
        {"struct_type": "node", "name": "a.md", "type": "file", "path": "/volumes/pages/a.md"},
    ]
    text = "warning: something\n" + "\n".join(json.dumps(line) for line in lines)
    entries, cut = browse.parse_listing(text, "/volumes/pages")
    assert [e.path for e in entries] == [
        "volumes/pages/sub",
        "volumes/pages/a.md",
        "volumes/pages/b.md",
    ]
    assert not cut


def test_listing_of_a_flooding_directory_is_cut() -> None:
    text = "\n".join(
        json.dumps({"struct_type": "node", "name": f"f{i}", "type": "file", "path": f"/f{i}"})
        for i in range(browse.MAX_ENTRIES + 3)
    )
    entries, cut = browse.parse_listing(text, "/")
    assert len(entries) == browse.MAX_ENTRIES and cut


@pytest.mark.parametrize("bad", ["..", "../etc", "volumes/../../etc", "volumes/./x", "a//b"])
def test_browser_paths_are_checked_like_restore_paths(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        browse.snapshot_dir(bad)


def test_restic_arguments() -> None:
    assert browse.snapshot_dir("") == "/" == browse.snapshot_dir("/")
    assert browse.snapshot_dir("volumes/pages/") == "/volumes/pages"
    assert ls_args("", "/volumes") == ["ls", "--json", "--no-lock", "latest", "/volumes"]
    assert dump_args("abcd1234", "/state/x", "raw") == [
        "dump",
        "--no-lock",
        "abcd1234",
        "/state/x",
    ]
    assert dump_args("", "/volumes", "zip") == [
        "dump",
        "--no-lock",
        "--archive",
        "zip",
        "latest",
        "/volumes",
    ]


def test_progress_messages_are_reshaped_and_bad_ones_dropped() -> None:
    channel = "progress/module/minwiki1/task/0b7c"
    assert events.parse_progress(channel, '{"status": "running", "progress": 140}') == {
        "agent": "module/minwiki1",
        "task": "0b7c",
        "status": "running",
        "progress": 100,
    }
    assert events.parse_progress(channel, "not json") is None
    assert events.parse_progress(channel, '{"status": "running"}') is None
    assert events.parse_progress("progress/cluster", '{"status":"x","progress":1}') is None
    assert events.parse_event("node/2/event/backup-status-changed") == {
        "source": "node/2",
        "name": "backup-status-changed",
    }
    assert events.sse("progress", {"a": 1}) == 'event: progress\ndata: {"a": 1}\n\n'


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9311") == Address("127.0.0.1", 9311)
    assert parse_listen("[::1]:8080") == Address("::1", 8080)
    assert parse_listen(":443") == Address("0.0.0.0", 443)
    for bad in ("9311", "host:", "host:0", "host:70000", "host:x"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_action_requests_use_the_actions_models() -> None:
    assert actions.model_for("cluster", "restore-module") is RestoreModuleRequest
    assert actions.model_for("node/1", "run-backup") is not None
    assert actions.model_for("module/minwiki1", "restore-module") is not None
    assert actions.model_for("cluster", "list-backup-repositories") is None
    with pytest.raises(ValidationFailed) as refused:
        actions.check_request("cluster", "restore-module", {"repository": "x"})
    assert {row["parameter"] for row in refused.value.errors} >= {"repository", "path"}
    partial = {
        "repository": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "path": "minwiki/3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "snapshot": "",
        "module_id": "minwiki1",
        "paths": ["etc/shadow"],  # outside state/ and volumes/
    }
    with pytest.raises(ValidationFailed):
        actions.check_request("cluster", "restore-module", partial)
    actions.check_request("cluster", "restore-module", {**partial, "paths": ["volumes/pages"]})
    with pytest.raises(UnknownAgent):
        actions.check_request("../cluster", "list-backups", None)
    with pytest.raises(ValidationFailed):
        actions.check_request("cluster", "../../etc", None)


def test_download_names_reach_the_header_encoded() -> None:
    header = content_disposition('we"ird\r\nname.md')
    assert "\r" not in header and "\n" not in header
    assert header.startswith('attachment; filename="we_ird__name.md"')
    assert "filename*=UTF-8''we%22ird%0D%0Aname.md" in header
