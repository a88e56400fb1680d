"""A timer's run (what backup1.service executes) firing while the same module is being
restored: the restore's result stays byte-exact, the backup waits for what it must not
overlap, and Redis, the repository and the node are consistent afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.faults.test_restore_faults import assert_settled, stallable_image  # noqa: F401
from tests.integration.test_restore_cases import OTHER, PAGE, setup_wiki
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.stalls import wait_for

pytestmark = pytest.mark.podman
BIN = Path(sys.executable).parent


def start(cluster: ClusterHarness, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        env=cluster.nodes[1].env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def timer_run(cluster: ClusterHarness) -> subprocess.Popen[str]:
    """What backup1.service executes when its timer fires."""
    return start(cluster, [str(BIN / "runagent"), "-m", "node", "run-backup", "--backup=1"])


def restore(cluster: ClusterHarness, request: dict[str, object]) -> subprocess.Popen[str]:
    api_cli = str(BIN / "api-cli")
    return start(cluster, [api_cli, "run", "cluster/restore-module", "--data", json.dumps(request)])


def pause_dump_hook(cluster: ClusterHarness, module_id: str, marker: Path, release: Path) -> None:
    """The module's module-dump-state touches marker, then waits for release (at most two
    minutes) before its real work: a backup held at a known point."""
    home = cluster.nodes[1].settings.agent_home(f"module/{module_id}")
    hook = home / "bin" / "module-dump-state"
    original = hook.with_name("module-dump-state.real")
    hook.rename(original)
    hook.write_text(
        f"#!/bin/sh\ntouch {marker}\n"
        f"for _ in $(seq 1200); do [ -e {release} ] && break; sleep 0.1; done\n"
        f'exec {original} "$@"\n'
    )
    hook.chmod(0o755)


def finish(client: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = client.communicate(timeout=timeout)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    return client.returncode, out, err


def snapshot_file(repo: Path, snapshot: str, path: str) -> bytes:
    """A (text) file as the snapshot holds it."""
    return backups.restic(repo, "dump", snapshot, path).stdout.encode()


def test_timer_run_during_a_replacing_restore_finishes_before_the_module_goes(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    stallable_image: str,  # noqa: F811
    restic_image: str,
    tmp_path: Path,
) -> None:
    wiki, destination, path = setup_wiki(cluster, redis_client, stallable_image, tmp_path / "dest")
    cluster.api_ok("run-backup", {"id": 1})
    repo = tmp_path / "dest" / path
    page = (cluster.volume_dir(1, wiki, "pages") / PAGE).read_bytes()
    redis_client.set("test/stall", "restore-module/15stall")
    request = {"repository": destination, "path": path, "snapshot": "", "node": 1, "replace": True}
    restoring = restore(cluster, request)
    wait_for("the restore held in its module steps", lambda: redis_client.get("test/stalled"))
    [copy] = set(redis_client.hkeys("cluster/module_node")) - {wiki}

    # The timer fires: its run of the old instance is held in the dump hook while the
    # restore goes on to relink the schedule and remove the old instance.
    marker, release = tmp_path / "dump-started", tmp_path / "release"
    pause_dump_hook(cluster, wiki, marker, release)
    timer = timer_run(cluster)
    wait_for("the timer's backup in the dump hook", marker.exists)
    redis_client.delete("test/stall")
    # Schedules are relinked just before the old instance is removed.
    wait_for(
        "the schedule relinked",
        lambda: copy in (redis_client.hget("cluster/backup/1", "instances") or "").split(),
    )
    time.sleep(3)  # the removal's chance to run under the backup (it must wait instead)
    release.touch()

    code, out, err = finish(restoring)
    assert code == 0, (out, err)
    assert json.loads(out)["module_id"] == copy
    code, out, err = finish(timer)
    assert code == 0, (out, err)
    assert out.startswith(f"{wiki}: ok snapshot ")

    # The restore is byte-exact; the old instance is gone everywhere, with no status of
    # a backup that ran into its removal.
    assert (cluster.volume_dir(1, copy, "pages") / PAGE).read_bytes() == page
    assert_settled(cluster, redis_client, {copy})
    assert wiki not in redis_client.hkeys("node/1/backup_status/1")
    assert redis_client.hget("cluster/backup/1", "instances") == copy
    # Both snapshots are whole (the timer's one is of the old instance before it went).
    snapshots = backups.snapshots(repo)
    assert len(snapshots) == 2
    assert backups.restic(repo, "check", check=False).returncode == 0
    for snapshot in snapshots:
        assert snapshot_file(repo, snapshot["id"], f"/volumes/pages/{PAGE}") == page
    # The next run backs up the restored instance.
    assert cluster.api_ok("run-backup", {"id": 1})["outcome"] == "ok"
    assert len(backups.snapshots(repo)) == 3


def test_timer_run_during_a_partial_restore_waits_for_it(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    stallable_image: str,  # noqa: F811
    restic_image: str,
    tmp_path: Path,
) -> None:
    wiki, destination, path = setup_wiki(cluster, redis_client, stallable_image, tmp_path / "dest")
    live = cluster.volume_dir(1, wiki, "pages")
    backed_up = (live / PAGE).read_bytes()
    cluster.api_ok("run-backup", {"id": 1})
    repo = tmp_path / "dest" / path
    (live / PAGE).write_text("# edited after the backup\n")
    (live / OTHER).write_text("# also edited\n")

    # "The last backup's copy of PAGE back": held before restic restore starts.
    redis_client.set("test/stall", "restore-module/05stall")
    restoring = restore(
        cluster,
        {
            "repository": destination,
            "path": path,
            "snapshot": "",
            "module_id": wiki,
            "paths": [f"volumes/pages/{PAGE}"],
        },
    )
    wait_for("the restore held before restic", lambda: redis_client.get("test/stalled"))
    timer = timer_run(cluster)
    deadline = time.monotonic() + 5  # the timer's chance to back up under the restore
    while timer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    redis_client.delete("test/stall")

    code, out, err = finish(restoring)
    assert code == 0, (out, err)
    # The restore brought back what the last backup before it held, not what a backup
    # made during it read.
    assert (live / PAGE).read_bytes() == backed_up
    assert (live / OTHER).read_text() == "# also edited\n"
    code, out, err = finish(timer)
    assert code == 0, (out, err)
    assert out.startswith(f"{wiki}: ok snapshot ")
    # The timer's snapshot was taken after the restore: it holds the restored file.
    snapshots = backups.snapshots(repo)
    assert len(snapshots) == 2
    latest = max(snapshots, key=lambda s: s["time"])["id"]
    assert snapshot_file(repo, latest, f"/volumes/pages/{PAGE}") == backed_up
    assert backups.restic(repo, "check", check=False).returncode == 0
    assert_settled(cluster, redis_client, {wiki})
