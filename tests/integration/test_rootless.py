"""Rootless modules (NS8's default): a Unix user per module, its own podman store, its
steps, hooks and restic containers run as that user; back up on one node, restore on
another, owners inside the user namespace as they were."""

from __future__ import annotations

import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from agent.adapters import module_users
from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.operations.verify_restore import verify
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.rootless import as_user, unique_ids, user_exists, user_volume

pytestmark = pytest.mark.podman

ROOTLESS_IMAGE = "localhost/minwiki:rootless"


@pytest.fixture
def rootless_image(minwiki_image: str, restic_image: str) -> str:
    """The sample module's rootless tag (examples/minwiki/build makes both)."""
    return ROOTLESS_IMAGE


def test_rootless_module_lives_and_dies_as_its_own_user(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    rootless_image: str,
    subtests: pytest.Subtests,
) -> None:
    unique_ids(redis_client)
    module_id = cluster.api_ok("add-module", {"image": rootless_image, "node": 1})["module_id"]
    settings = cluster.nodes[1].settings
    try:
        entry = pwd.getpwnam(module_id)
        home = Path(entry.pw_dir)
        install = home / ".config"
        with subtests.test("installed in the user's 0700 home, its state the user's"):
            assert settings.agent_home(f"module/{module_id}") == install
            assert stat.S_IMODE(home.stat().st_mode) == 0o700
            assert (install / "state" / "environment").stat().st_uid == entry.pw_uid
            assert (install / "bin" / "module-dump-state").is_file()
            assert not (install / "actions" / "restore-module" / "10restore").exists(), (
                "the agent's base steps stay the node's"
            )
        with subtests.test("create-module ran as the user, in the user's own store"):
            # Bare volume names; a file chowned to uid 1000 inside the user namespace (a
            # subordinate id on the host).
            names = as_user(module_id, "podman", "volume", "ls", "--format", "{{.Name}}").stdout
            assert {"pages", "db", "cache"} <= set(names.split())
            pages = user_volume(module_id, "pages")
            assert str(pages).startswith(str(home))
            assert (pages / "index.md").lstat().st_uid == entry.pw_uid
            inside = as_user(
                module_id, "podman", "unshare", "stat", "-c", "%u", str(pages / "user-upload.md")
            )
            assert inside.stdout.strip() == "1000"
            assert (pages / "user-upload.md").stat().st_uid != 1000
            assert cluster.api_ok(f"module/{module_id}/get-status")["pages"] == 200
        with subtests.test("a link where the node made a directory: the tasks are refused"):
            # It would send the node's own reads (env files, state-include.conf) elsewhere.
            state = install / "state"
            state.rename(install / "state.real")
            try:
                state.symlink_to("/etc")
                code, _, error = cluster.api_json(f"module/{module_id}/get-status")
                assert code != 0 and "is not a directory of" in error, error
            finally:
                state.unlink(missing_ok=True)
                (install / "state.real").rename(state)
        with subtests.test("runagent runs as the user, in its state directory"):
            runagent = Path(sys.executable).parent / "runagent"
            done = subprocess.run(
                [str(runagent), "-m", module_id, "sh", "-c", 'id -un; echo "$HOME"; pwd'],
                env=cluster.nodes[1].env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.stdout.split() == [module_id, str(home), str(install / "state")], done
    finally:
        cluster.api_ok("remove-module", {"module_id": module_id})
    assert not user_exists(module_id)
    assert not Path(entry.pw_dir).exists()
    assert not settings.module_entry(module_id).is_symlink()
    assert not module_users.user_processes(entry.pw_uid)


def test_remove_module_preserve_data_keeps_the_home(
    cluster: ClusterHarness, redis_client: redis.Redis, rootless_image: str
) -> None:
    unique_ids(redis_client)
    module_id = cluster.api_ok("add-module", {"image": rootless_image, "node": 1})["module_id"]
    home = Path(pwd.getpwnam(module_id).pw_dir)
    try:
        cluster.api_ok("remove-module", {"module_id": module_id, "preserve_data": True})
        assert not user_exists(module_id)
        assert (home / ".config" / "state" / "environment").is_file()
        volumes = home / ".local" / "share" / "containers" / "storage" / "volumes"
        assert (volumes / "pages" / "_data" / "index.md").is_symlink()
    finally:
        module_users.remove_home(home)


def test_rootless_backup_on_node_1_restores_on_node_2_with_owners(
    cluster: ClusterHarness, redis_client: redis.Redis, rootless_image: str, tmp_path: Path
) -> None:
    """Two volumes (pages, db) with files of non-root uids inside the user namespace come
    back on another node, under another user, byte for byte with those owners."""
    unique_ids(redis_client)
    cluster.add_node(2)
    source = cluster.api_ok("add-module", {"image": rootless_image, "node": 1})["module_id"]
    modules = [source]
    try:
        db = user_volume(source, "db")
        www = db / "www-data.txt"
        as_user(source, "sh", "-c", f"echo served by www-data > {www}")
        as_user(source, "podman", "unshare", "chown", "33:33", str(www))
        target = tmp_path / "dest"
        target.mkdir()
        repository = backups.add_destination(redis_client, "local", f"local:{target}")
        backups.add_backup(redis_client, 1, repository, [source], retention=5)
        cluster.api_ok("run-backup", {"id": 1})
        status = backups.status(redis_client, 1, 1, source)
        assert status["outcome"] == "ok", status
        module_uuid = redis_client.hget(redis_keys.MODULE_UUID, source)
        path = f"minwiki/{module_uuid}"
        # The repository is root's, as a rootfull module's would be: the module user was
        # given no right on the host, its restic reached it through the node.
        assert {p.stat().st_uid for p in (target / path).rglob("*")} == {0}

        restored = cluster.api_ok(
            "cluster/restore-module",
            {"node": 2, "repository": repository, "path": path, "snapshot": ""},
        )
        copy = restored["module_id"]
        modules.append(copy)
        assert pwd.getpwnam(copy).pw_uid != pwd.getpwnam(source).pw_uid
        report = verify(
            connect(cluster.redis_url),
            {n: node.settings for n, node in cluster.nodes.items()},
            source,
            copy,
        )
        assert report["ok"], report["differences"]
        assert report["compared"]["files"] > 200 and report["compared"]["volumes"] == [
            "pages",
            "db",
        ]
        copied = user_volume(copy, "db") / "www-data.txt"
        assert copied.read_text() == "served by www-data\n"
        inside = as_user(copy, "podman", "unshare", "stat", "-c", "%u:%g", str(copied))
        assert inside.stdout.strip() == "33:33"
        upload = user_volume(copy, "pages") / "user-upload.md"
        inside = as_user(copy, "podman", "unshare", "stat", "-c", "%u:%g", str(upload))
        assert inside.stdout.strip() == "1000:1000"
        status = cluster.api_ok(f"module/{copy}/get-status")
        assert status == cluster.api_ok(f"module/{source}/get-status")

        # A partial restore into the running rootless copy (two paths: restic's dry run
        # checks both first, as the user too).
        page = user_volume(copy, "pages") / "topic-0" / "section-1" / "sub-2" / "page-3.md"
        original = page.read_bytes()
        as_user(copy, "sh", "-c", f"echo oops > {page}")
        cluster.api_ok(
            "cluster/restore-module",
            {
                "repository": repository,
                "path": path,
                "snapshot": "",
                "module_id": copy,
                "paths": [
                    "volumes/pages/topic-0/section-1/sub-2/page-3.md",
                    "volumes/db/www-data.txt",
                ],
            },
        )
        assert page.read_bytes() == original
    finally:
        for module_id in modules:
            cluster.api_ok("remove-module", {"module_id": module_id})
    assert not any(user_exists(module_id) for module_id in modules)


def test_rootless_restore_places_a_volume_on_a_directory(
    cluster: ClusterHarness, redis_client: redis.Redis, rootless_image: str, tmp_path: Path
) -> None:
    """NS8's `volumes` for a rootless module: the volume, bare-named in the user's store,
    is bound to the directory, which the restore fills with the owners inside the user
    namespace; remove-module leaves the directory and its files."""
    unique_ids(redis_client)
    source = cluster.api_ok("add-module", {"image": rootless_image, "node": 1})["module_id"]
    modules = [source]
    # pytest's own directories are root's alone: the module's user could not reach one.
    base = Path(tempfile.mkdtemp(prefix="agent-placement-", dir="/var/tmp"))
    base.chmod(0o711)
    disk = base / "disk"
    disk.mkdir()
    unreachable = tmp_path / "unreachable"
    unreachable.mkdir()
    try:
        users = {entry.pw_name for entry in pwd.getpwall()}
        code, output, _ = cluster.api_json(
            "add-module",
            {"image": rootless_image, "node": 1, "volumes": {"db": str(unreachable)}},
            timeout=300,
        )
        assert code == 10 and output[0]["error"] == "volume_path_not_reachable", output
        assert {entry.pw_name for entry in pwd.getpwall()} == users
        assert set(redis_client.hkeys(redis_keys.MODULE_NODE)) == {source}

        www = user_volume(source, "db") / "www-data.txt"
        as_user(source, "sh", "-c", f"echo served by www-data > {www}")
        as_user(source, "podman", "unshare", "chown", "33:33", str(www))
        target = tmp_path / "dest"
        target.mkdir()
        repository = backups.add_destination(redis_client, "local", f"local:{target}")
        backups.add_backup(redis_client, 1, repository, [source], retention=5)
        cluster.api_ok("run-backup", {"id": 1})
        path = f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, source)}"
        restored = cluster.api_ok(
            "cluster/restore-module",
            {
                **{"node": 1, "repository": repository, "path": path, "snapshot": ""},
                "volumes": {"db": str(disk)},
            },
        )
        copy = restored["module_id"]
        modules.append(copy)
        assert (disk / "www-data.txt").read_text() == "served by www-data\n"
        inside = as_user(
            copy, "podman", "unshare", "stat", "-c", "%u:%g", str(disk / "www-data.txt")
        )
        assert inside.stdout.strip() == "33:33"
        pages = user_volume(copy, "pages")
        assert not pages.is_relative_to(disk) and (pages / "user-upload.md").is_file()
        original = sorted(
            p.relative_to(user_volume(source, "db")) for p in user_volume(source, "db").rglob("*")
        )
        assert sorted(p.relative_to(disk) for p in disk.rglob("*")) == original
        report = verify(connect(cluster.redis_url), {1: cluster.nodes[1].settings}, source, copy)
        assert report["ok"], report["differences"]  # the placed volume read from disk
        cluster.api_ok("remove-module", {"module_id": copy})
        modules.remove(copy)
        assert (disk / "www-data.txt").read_text() == "served by www-data\n"
    finally:
        for module_id in modules:
            cluster.api_ok("remove-module", {"module_id": module_id})
        shutil.rmtree(base)
    assert not any(user_exists(module_id) for module_id in modules)
