"""A restic run that outlives its time, and a lease left as a crashed holder leaves it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from agent.adapters import restic
from agent.adapters.restic_errors import Exit
from agent.runtime import locks
from tests.support import backups

pytestmark = pytest.mark.podman


def test_a_restic_run_past_its_timeout_is_stopped_with_its_container(
    restic_image: str, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        backups.restic(disk, "init")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        target = restic.ResticTarget("/repo", volumes=((str(disk), "/repo"),))
        name = restic.container_name("restic-timeout-test")
        # restic retries the lock it cannot write for 15 minutes; the run allows 3 seconds.
        done = restic.run(
            target,
            backups.PASSWORD,
            ["backup", "/usr/bin/restic"],
            podman_env={},
            timeout=3,
            name=name,
        )
        assert done.returncode == Exit.STOPPED
        listed = subprocess.run(
            ["podman", "ps", "--all", "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert name not in listed.stdout.split()
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)
        # restic's cache volume, made in this worker's store by the run above.
        subprocess.run(
            ["podman", "volume", "rm", "--force", restic.CACHE_VOLUME],
            capture_output=True,
            check=False,
        )


def test_a_lease_released_as_crashed_makes_the_next_holder_clean_up(
    redis_client: redis.Redis,
) -> None:
    key = "cluster/repository_lease/test/minwiki/u1"
    with locks.acquire(redis_client, key) as first:
        assert not first.previous_crashed
    with locks.acquire(redis_client, key) as second:
        assert not second.previous_crashed, "a normal release leaves nothing to clean"
    abandoned = locks.acquire(redis_client, key)
    abandoned.release(crashed=True)
    with locks.acquire(redis_client, key, wait_seconds=0) as third:
        assert third.previous_crashed, "taken at once, and told to clean up"
    assert not redis_client.exists(key)
