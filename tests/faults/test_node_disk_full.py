"""The node's own data disk full (its data dir on a small tmpfs): a backup and a restore
fail with a clear error and leave nothing half-made; once space is freed, both work."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.faults.test_restore_faults import (  # noqa: F401
    assert_settled,
    stallable_image,
    wait_for,
)
from tests.integration.test_restore_cases import PAGE, setup_wiki
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman
DISK_MB = 64
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def small_disk(target: Path) -> Iterator[Path]:
    """A DISK_MB tmpfs at target for the test's length (root only)."""
    target.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", "tmpfs", str(target)],
        check=True,
    )
    try:
        yield target
    finally:
        subprocess.run(["umount", "--lazy", str(target)], check=False)


@pytest.fixture
def full_node(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str, restic_image: str
) -> Iterator[ClusterHarness]:
    """A one-node cluster whose data dir (modules, volumes, logs) is on a small disk; its
    destinations stay on the test's own disk."""
    with small_disk(tmp_path / "disk") as disk:
        cluster = ClusterHarness(disk, redis_url)
        node = cluster.add_node(1, start=False)
        backups.set_node_option(node.settings.config_path, local_roots=[str(tmp_path)])
        node.start()
        try:
            yield cluster
        finally:
            cluster.stop()


def fill(disk: Path, leave: int = 0) -> Path:
    """A file taking every free byte of disk but `leave`."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    size = stat.f_bavail * stat.f_frsize - leave
    with filler.open("ab") as out:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            try:
                size -= out.write(chunk[: min(size, len(chunk))])
                out.flush()
            except OSError:
                break
    return filler


def assert_no_half_made(
    cluster: ClusterHarness, client: redis.Redis, repo: Path, modules: set[str]
) -> None:
    """Only these modules; the repository has no restic lock; a repository lease left by
    a run that could not remove restic's locks is marked abandoned, so the next run takes
    it over at once (and removes the locks)."""
    leases = list(client.scan_iter(match="cluster/repository_lease/*"))
    assert len(leases) <= 1
    for key in leases:
        assert client.hget(key, "expires") == "0", client.hgetall(key)
        client.rename(key, "test/abandoned-lease")  # assert_settled wants no lease at all
    try:
        assert_settled(cluster, client, modules)
    finally:
        if leases:
            client.rename("test/abandoned-lease", leases[0])
    assert not list((repo / "locks").iterdir())


def test_backup_and_restore_on_a_full_node_disk_fail_cleanly_then_work(
    full_node: ClusterHarness,
    redis_client: redis.Redis,
    stallable_image: str,  # noqa: F811
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    cluster = full_node
    disk = cluster.base
    wiki, destination, path = setup_wiki(cluster, redis_client, stallable_image, tmp_path / "dest")
    repo = tmp_path / "dest" / path
    live = cluster.volume_dir(1, wiki, "pages")
    (live / "big.bin").write_bytes(os.urandom(4 << 20))
    cluster.api_ok("run-backup", {"id": 1})
    page, big = (live / PAGE).read_bytes(), (live / "big.bin").read_bytes()
    request = {"repository": destination, "path": path, "snapshot": "", "node": 1}

    filler = fill(disk)
    with subtests.test("a backup fails: its dump hook cannot write, the reason names the disk"):
        code, _, error = cluster.api_json("run-backup", {"id": 1}, timeout=300)
        assert code == 1, error
        status = backups.status(redis_client, 1, 1, wiki)
        assert status["outcome"] == "failed", status
        assert "the node's disk holding" in status["reason"], status
        assert "is full" in status["reason"], status
        assert len(backups.snapshots(repo)) == 1
        assert_no_half_made(cluster, redis_client, repo, {wiki})

    with subtests.test("a restore cannot install its instance: one clear line, no ghost"):
        code, _, error = cluster.api_json("cluster/restore-module", request, timeout=300)
        assert code == 1, error
        assert "No space left on device" in error, error
        assert "Traceback" not in error and "shutil.Error" not in error, error
        assert_no_half_made(cluster, redis_client, repo, {wiki})

    with subtests.test("restoring files needs restic, whose container has no room: said so"):
        target = cluster.nodes[1].root / "restored" / "picked"
        code, output, error = cluster.api_json(
            "node/1/restore-files",
            {
                "repository": destination,
                "path": path,
                "snapshot": "",
                "target": str(target),
                "paths": [f"/volumes/pages/{PAGE}"],
            },
            timeout=300,
        )
        assert code == 1, (output, error)
        # The message itself names the cause, not only a warning logged before it.
        assert "no space left on device" in error.strip().splitlines()[-1].lower(), error
        assert_no_half_made(cluster, redis_client, repo, {wiki})

    filler.unlink()
    with subtests.test("space freed: the next backup works and takes the abandoned lease"):
        assert cluster.api_ok("run-backup", {"id": 1})["outcome"] == "ok"
        assert backups.status(redis_client, 1, 1, wiki)["outcome"] == "ok"
        assert not list(redis_client.scan_iter(match="cluster/repository_lease/*"))
        assert len(backups.snapshots(repo)) == 2

    with subtests.test("a restore that runs out of space in restic restore fails cleanly"):
        redis_client.set("test/stall", "restore-module/05stall")
        restoring = subprocess.Popen(
            [str(BIN / "api-cli"), "run", "cluster/restore-module", "--data", json.dumps(request)],
            env=cluster.nodes[1].env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for("the restore held before restic", lambda: redis_client.get("test/stalled"))
            filler = fill(disk)
            redis_client.delete("test/stall")
            out, error = restoring.communicate(timeout=300)
        finally:
            redis_client.delete("test/stall")  # the restore below must not be held
            if restoring.poll() is None:
                restoring.kill()
                restoring.communicate()
        assert restoring.returncode == 1, (out, error)
        assert "no space left on device" in error.lower(), error
        assert_no_half_made(cluster, redis_client, repo, {wiki})

    filler.unlink(missing_ok=True)
    restored = cluster.api_ok("cluster/restore-module", request)["module_id"]
    with subtests.test("space freed: the restore is byte-exact, the repository sound"):
        assert (cluster.volume_dir(1, restored, "pages") / PAGE).read_bytes() == page
        assert (cluster.volume_dir(1, restored, "pages") / "big.bin").read_bytes() == big
        assert len(backups.snapshots(repo)) == 2
        assert backups.restic(repo, "check", check=False).returncode == 0

    with subtests.test("the copy beside its source has a uuid of its own, its lineage noted"):
        copy_uuid = redis_client.hget("cluster/module_uuid", restored)
        lineage = {copy_uuid: redis_client.hget("cluster/module_uuid", wiki)}
        assert redis_client.hgetall("private/nodes/restore_uuid") == lineage
    redis_client.delete("private/nodes/restore_uuid")  # assert_settled wants none left
    assert_settled(cluster, redis_client, {wiki, restored})
