"""Restore cases: older snapshot, partial and side restores, replace via a legacy path,
and failures that must leave no half-made module behind."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.runtime import tasks
from tests.conftest import podman_build
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman
PAGE = "topic-0/section-0/sub-0/page-0.md"
OTHER = "topic-1/section-1/sub-1/page-1.md"
HOOK = """#!/bin/bash
# Test hook: the test steers this restore step through the Redis key test/restore-hook,
# read with the node's credentials (agent.json): the module's own may not read test/*.
mode=$(python3 -c 'import json, os, redis
url = json.load(open(os.environ["AGENT_ROOT"] + "/agent.json"))["redis_url"]
r = redis.Redis.from_url(url, decode_responses=True)
print(r.get("test/restore-hook") or "")')
case $mode in
    fail) echo "restore hook: failing on purpose" >&2; exit 1 ;;
    slow) python3 -c 'import json, os, redis
url = json.load(open(os.environ["AGENT_ROOT"] + "/agent.json"))["redis_url"]
redis.Redis.from_url(url).set("test/hook-started", "1")'
          sleep 60 ;;
esac
"""
# Test create-module step: files the new instance makes for itself, outside the include
# list (state/nginx.conf) and in its own state/environment.
CREATE_EXTRA = """#!/bin/sh
echo "server_name $MODULE_ID;" > nginx.conf
echo "NGINX_FOR=$MODULE_ID" >> environment
"""


@pytest.fixture(scope="session")
def hooked_image(minwiki_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """minwiki plus a restore-module step the tests can make fail or hang, and a
    create-module step that writes state files of the instance's own."""
    tag = "localhost/minwiki-hooked:latest"
    context = tmp_path_factory.mktemp("hooked")
    (context / "15hook").write_text(HOOK)
    (context / "15hook").chmod(0o755)
    (context / "15extra").write_text(CREATE_EXTRA)
    (context / "15extra").chmod(0o755)
    (context / "Containerfile").write_text(
        f"FROM {minwiki_image}\nCOPY 15hook /imageroot/actions/restore-module/15hook\n"
        "COPY 15extra /imageroot/actions/create-module/15extra\n"
    )
    podman_build(tag, context, "build-minwiki-hooked")
    return tag


def api(cluster: ClusterHarness, action: str, data: Any = None) -> tuple[int, Any, str]:
    return cluster.api_json(action, data, timeout=300)


def setup_wiki(
    cluster: ClusterHarness, client: redis.Redis, image: str, target: Path
) -> tuple[str, str, str]:
    """(module id, destination id, repository path) of a wiki on node 1, backup 1 defined."""
    wiki = cluster.api_ok("add-module", {"image": image, "node": 1})["module_id"]
    target.mkdir()
    destination = backups.add_destination(client, "local", f"local:{target}")
    backups.add_backup(client, 1, destination, [wiki], retention=5)
    name = image.rsplit("/", 1)[1].split(":")[0]
    return wiki, destination, f"{name}/{client.hget('cluster/module_uuid', wiki)}"


def assert_only_modules(cluster: ClusterHarness, client: redis.Redis, modules: set[str]) -> None:
    """No trace of any other module: ids, uuids, keys, install dirs, volumes."""
    assert set(client.hkeys("cluster/module_node")) == modules
    assert set(client.hkeys("cluster/module_uuid")) == modules
    owners = {str(key).split("/")[1] for key in client.scan_iter(match="module/*")}
    assert owners <= modules
    assert not client.hkeys("private/nodes/restore_uuid")
    for node in cluster.nodes.values():
        homes = node.root / "modules"
        assert {p.name for p in homes.iterdir()} <= modules if homes.exists() else True
        listed = subprocess.run(
            ["podman", "volume", "ls", "--format", "{{.Name}}"],
            env=node.settings.podman_env() | {"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        strays = [
            v for v in listed if v.startswith("minwiki") and v.rsplit("-", 1)[0] not in modules
        ]
        assert not strays, (node.node_id, strays)


def test_older_snapshot_partial_restore_and_restore_files(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    """Each case's checks report on their own (subtests)."""
    wiki, destination, path = setup_wiki(cluster, redis_client, minwiki_image, tmp_path / "dest")
    live = cluster.volume_dir(1, wiki, "pages")
    first_page, first_other = (live / PAGE).read_bytes(), (live / OTHER).read_bytes()
    first_title = redis_client.hget(f"module/{wiki}/wiki_settings", "title")
    cluster.api_ok("run-backup", {"id": 1})
    (live / PAGE).write_text("# edited after the first backup\n")
    (live / OTHER).write_text("# also edited\n")
    redis_client.hset(f"module/{wiki}/wiki_settings", "title", "Renamed wiki")
    cluster.api_ok("run-backup", {"id": 1})

    snapshots = cluster.api_ok("read-backup-snapshots", {"repository": destination, "path": path})
    assert len(snapshots) == 2
    older = min(snapshots, key=lambda s: s["timestamp"])["id"]
    source = {"repository": destination, "path": path, "snapshot": older}

    copy = cluster.api_ok("cluster/restore-module", {**source, "node": 1})["module_id"]
    with subtests.test("the older snapshot restores as a new instance"):
        assert (cluster.volume_dir(1, copy, "pages") / PAGE).read_bytes() == first_page
        assert redis_client.hget(f"module/{copy}/wiki_settings", "title") == first_title

    # One file back into the running instance; everything else stays as it is now.
    done = cluster.api_ok(
        "cluster/restore-module",
        {**source, "module_id": wiki, "paths": [f"volumes/pages/{PAGE}"]},
    )
    with subtests.test("one file back into the running instance, nothing else"):
        assert done["module_id"] == wiki and done["files_restored"] >= 1
        assert (live / PAGE).read_bytes() == first_page
        assert (live / OTHER).read_text() == "# also edited\n" != first_other.decode()
        assert redis_client.hget(f"module/{wiki}/wiki_settings", "title") == "Renamed wiki"
    with subtests.test("a path in no snapshot fails"):
        code, _, error = api(
            cluster,
            "cluster/restore-module",
            {**source, "module_id": wiki, "paths": ["volumes/pages/no-such-file"]},
        )
        assert code == 1 and "none of the paths" in error
    # Two paths, one of them a typo: refused before anything changes, naming the typo.
    (live / PAGE).write_text("# edited again\n")
    typo = "volumes/pages/no-such-file"
    with subtests.test("a typo among paths is refused before anything changes"):
        code, output, error = api(
            cluster,
            "cluster/restore-module",
            {**source, "module_id": wiki, "paths": [f"volumes/pages/{PAGE}", typo]},
        )
        assert code == 2, error
        assert output == [
            {"field": "paths", "parameter": "paths", "value": typo, "error": "path_not_in_snapshot"}
        ]
        assert (live / PAGE).read_text() == "# edited again\n"
    restored = cluster.nodes[1].root / "restored"  # a restore-files root by default
    with subtests.test("restore-files refuses a typo too"):
        code, output, _ = api(
            cluster,
            "node/1/restore-files",
            {
                **source,
                "target": str(restored / "nothing"),
                "paths": [f"/volumes/pages/{PAGE}", typo],
            },
        )
        assert code == 2 and output[0]["value"] == typo
        assert not (restored / "nothing").exists()

    # A side restore for an operator: files in a directory, no module touched.
    picked = restored / "picked"
    done = cluster.api_ok(
        "node/1/restore-files",
        {**source, "target": str(picked), "paths": [f"/volumes/pages/{PAGE}", "state/wiki.env"]},
    )
    with subtests.test("a side restore touches no module"):
        assert (picked / "volumes" / "pages" / PAGE).read_bytes() == first_page
        assert (picked / "state" / "wiki.env").is_file()
        assert not (picked / "state" / "environment").exists()
        assert set(redis_client.hkeys("cluster/module_node")) == {wiki, copy}
    backups.restic(tmp_path / "dest" / path, "check")


def test_replace_from_a_legacy_path_keeps_the_uuid_and_the_schedule(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    cluster.add_node(2)
    wiki, destination, path = setup_wiki(cluster, redis_client, minwiki_image, tmp_path / "dest")
    cluster.api_ok("run-backup", {"id": 1})
    module_uuid = path.split("/")[1]
    settings = redis_client.hgetall(f"module/{wiki}/wiki_settings")
    page = (cluster.volume_dir(1, wiki, "pages") / PAGE).read_bytes()
    legacy = f"minwiki/{wiki}@{module_uuid}"
    (tmp_path / "dest" / path).rename(tmp_path / "dest" / legacy)

    request = {"repository": destination, "path": legacy, "snapshot": "", "node": 2}
    restored = cluster.api_ok("cluster/restore-module", {**request, "replace": True})
    new = restored["module_id"]
    assert restored["module_uuid"] == module_uuid
    assert redis_client.hgetall("cluster/module_uuid") == {new: module_uuid}
    assert redis_client.hget("cluster/backup/1", "instances") == new
    assert redis_client.hgetall(f"module/{new}/wiki_settings") == settings
    assert (cluster.volume_dir(2, new, "pages") / PAGE).read_bytes() == page
    assert_only_modules(cluster, redis_client, {new})
    backups.restic(tmp_path / "dest" / legacy, "check")


def test_failed_restores_leave_nothing_behind(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    hooked_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    cluster.add_node(2)
    wiki, destination, path = setup_wiki(cluster, redis_client, hooked_image, tmp_path / "dest")
    cluster.api_ok("run-backup", {"id": 1})
    request = {"repository": destination, "path": path, "snapshot": "", "node": 2}

    code, _, error = api(cluster, "cluster/restore-module", {**request, "snapshot": "0123abcd"})
    assert code == 1 and "snapshot 0123abcd not found" in error
    assert_only_modules(cluster, redis_client, {wiki})

    private = f"private/backup_repository/{destination}"
    redis_client.hset(private, "password", "not-the-password")
    code, _, error = api(cluster, "cluster/restore-module", request)
    assert code == 1 and "wrong repository password" in error
    redis_client.hset(private, "password", backups.PASSWORD)
    assert_only_modules(cluster, redis_client, {wiki})

    gone = backups.add_destination(redis_client, "local", f"local:{tmp_path / 'unplugged'}")
    code, _, error = api(cluster, "cluster/restore-module", {**request, "repository": gone})
    assert code == 1 and "unplugged is missing" in error
    assert_only_modules(cluster, redis_client, {wiki})

    redis_client.set("test/restore-hook", "fail")
    code, _, error = api(cluster, "cluster/restore-module", request)
    assert code == 1 and "failing on purpose" in error and "removed" in error
    assert_only_modules(cluster, redis_client, {wiki})

    redis_client.set("test/restore-hook", "slow")
    client = connect(cluster.redis_url)
    watcher = tasks.start(client, tasks.TaskRequest("cluster", "restore-module", request))
    deadline = time.monotonic() + 60
    while not redis_client.get("test/hook-started"):
        assert time.monotonic() < deadline, "the restore never reached the module's step"
        time.sleep(0.1)
    tasks.cancel(client, "cluster", watcher.task_id)
    result = watcher.wait(timeout=120)
    assert result.exit_code != 0 and "cancelled" in result.error
    assert_only_modules(cluster, redis_client, {wiki})
    assert (cluster.volume_dir(1, wiki, "pages") / PAGE).is_file(), "the source is untouched"


def test_module_pre_restore_hook_gets_the_paths_and_never_runs_for_a_refused_request(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    wiki, destination, path = setup_wiki(cluster, redis_client, minwiki_image, tmp_path / "dest")
    cluster.api_ok("run-backup", {"id": 1})
    settings = cluster.nodes[1].settings
    calls = tmp_path / "hook-calls"
    hook = settings.agent_home(f"module/{wiki}") / "bin" / "module-pre-restore"
    hook.write_text(f'#!/bin/sh\necho "$(pwd) $*" >> {calls}\n')
    hook.chmod(0o755)
    source = {"repository": destination, "path": path, "snapshot": "", "module_id": wiki}

    code, output, _ = api(
        cluster,
        "cluster/restore-module",
        {**source, "paths": [f"volumes/pages/{PAGE}", "volumes/pages/no-such-file"]},
    )
    assert code == 2 and output[0]["error"] == "path_not_in_snapshot"
    assert not calls.exists(), "a refused restore changes nothing, the hook included"

    cluster.api_ok("cluster/restore-module", {**source, "paths": [f"volumes/pages/{PAGE}"]})
    state = settings.state_dir(f"module/{wiki}")
    assert calls.read_text() == f"{state} /volumes/pages/{PAGE}\n"


def _tree(top: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every file, directory and link below top: mode and content (target of a link)."""
    entries: dict[str, tuple[int, bytes | str]] = {}
    for item in sorted(top.rglob("*")):
        info = item.lstat()
        if item.is_symlink():
            content: bytes | str = str(item.readlink())
        else:
            content = item.read_bytes() if item.is_file() else b""
        entries[str(item.relative_to(top))] = (info.st_mode, content)
    return entries


def _volume_names(cluster: ClusterHarness) -> set[str]:
    env = {**os.environ, **cluster.nodes[1].settings.podman_env()}
    done = subprocess.run(
        ["podman", "volume", "ls", "--format", "{{.Name}}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


def test_whole_restore_adds_to_the_new_instance_and_volumes_place_them(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    hooked_image: str,
    restic_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    """NS8's 10restore deletes nothing: what the new instance's create-module wrote and the
    snapshot lacks stays; its own state/environment is never the snapshot's. NS8's
    `volumes` places a volume on another directory; every volume comes back."""
    wiki, destination, path = setup_wiki(cluster, redis_client, hooked_image, tmp_path / "dest")
    (cluster.volume_dir(1, wiki, "pages") / PAGE).write_text("# edited before the backup\n")
    (cluster.volume_dir(1, wiki, "db") / "marker").write_text("only in the source's db\n")
    cluster.api_ok("run-backup", {"id": 1})
    source = {"repository": destination, "path": path, "snapshot": "", "node": 1}
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "someone's").write_text("kept\n")
    (tmp_path / "to-etc").symlink_to("/etc")
    inside = cluster.nodes[1].root / "placed"
    inside.mkdir()

    modules_dir = cluster.nodes[1].root / "modules"
    before = (
        set(redis_client.hkeys("cluster/module_node")),
        {p.name for p in modules_dir.iterdir()},
        _volume_names(cluster),
    )
    bad = {
        "relative": {"pages": "disk"},
        "dot-dot": {"pages": f"{disk}/../disk"},
        "newline": {"pages": f"{disk}\n"},
        "missing": {"pages": str(tmp_path / "no-such-dir")},
        "a file": {"pages": str(tmp_path / "full" / "someone's")},
        "not empty": {"pages": str(tmp_path / "full")},
        "system": {"pages": "/etc"},
        "a link to a system dir": {"pages": str(tmp_path / "to-etc")},
        "in the data dir": {"pages": str(inside)},
        "a bad volume name": {"-pages": str(disk)},
        "two volumes on one dir": {"pages": str(disk), "db": str(disk)},
    }
    for case, volumes in bad.items():
        with subtests.test("refused, nothing changed", case=case):
            code, output, _ = api(cluster, "cluster/restore-module", {**source, "volumes": volumes})
            assert code == 10, (code, output)
            after = (
                set(redis_client.hkeys("cluster/module_node")),
                {p.name for p in modules_dir.iterdir()},
                _volume_names(cluster),
            )
            assert after == before
            assert not any(disk.iterdir())
            assert (tmp_path / "full" / "someone's").read_text() == "kept\n"

    placed = {"pages": str(disk)}
    copy = cluster.api_ok("cluster/restore-module", {**source, "volumes": placed})["module_id"]
    state = cluster.nodes[1].settings.state_dir(f"module/{copy}")
    with subtests.test("a state file the snapshot lacks stays"):
        assert (state / "nginx.conf").read_text() == f"server_name {copy};\n"
    with subtests.test("the new instance's environment is its own"):
        environment = (state / "environment").read_text().splitlines()
        assert f"NGINX_FOR={copy}" in environment and f"MODULE_ID={copy}" in environment
        assert f"NGINX_FOR={wiki}" not in environment
    with subtests.test("the placed volume's files are in the directory, byte for byte"):
        assert (disk / PAGE).read_text() == "# edited before the backup\n"
        backed_up = _tree(cluster.volume_dir(1, wiki, "pages"))
        excluded = [name for name in backed_up if name.endswith(".tmp")]  # state-exclude.conf
        assert excluded and _tree(disk) == {
            name: entry for name, entry in backed_up.items() if name not in excluded
        }
    with subtests.test("the other volumes and the state dir come back as usual"):
        assert (cluster.volume_dir(1, copy, "db") / "marker").read_text() == (
            "only in the source's db\n"
        )
        assert (state / "wiki.env").is_file()

    restored = _tree(disk)
    cluster.api_ok("remove-module", {"module_id": copy})
    with subtests.test("remove-module removes the volume, never the directory"):
        assert f"{copy}-pages" not in _volume_names(cluster)
        assert _tree(disk) == restored

    with subtests.test("a directory that holds files is refused: nothing overwritten"):
        code, output, _ = api(cluster, "cluster/restore-module", {**source, "volumes": placed})
        assert code == 10 and output[0]["error"] == "volume_path_not_empty", output
        assert _tree(disk) == restored

    every = cluster.api_ok("cluster/restore-module", source)["module_id"]
    with subtests.test("without volumes, every volume comes back in the node's store"):
        assert (cluster.volume_dir(1, every, "db") / "marker").is_file()
        assert (cluster.volume_dir(1, every, "pages") / PAGE).is_file()
        assert (cluster.nodes[1].settings.state_dir(f"module/{every}") / "nginx.conf").is_file()
    backups.restic(tmp_path / "dest" / path, "check")
