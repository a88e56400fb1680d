"""Faults during a backup: each ends recorded, with the repository sound, and leaves
nothing behind on the node; the next backup after the fault is cleared works.

restic is slowed where a fault must strike mid-upload: the real restic of the image with
`--limit-upload` (through the node's restic_podman_args), on a few MB of fresh data.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support import backends, backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman

# The image's restic, uploading at 64 KiB/s: 2 MB of new data take half a minute.
SLOW_RESTIC = ['--entrypoint=["/usr/bin/restic","--limit-upload=64"]']
RETRY_SECONDS = 5


# --- helpers ------------------------------------------------------------------------------
def node_env(cluster: ClusterHarness) -> dict[str, str]:
    node = cluster.nodes[1]
    return {**node.env(), **node.settings.podman_env()}


def restic_containers(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in done.stdout.split() if name.startswith("restic-")]


def volume_names(env: dict[str, str]) -> set[str]:
    done = subprocess.run(
        ["podman", "volume", "ls", "--format", "{{.Name}}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


def lock_files(repo: Path) -> list[str]:
    locks = repo / "locks"
    return sorted(p.name for p in locks.iterdir()) if locks.is_dir() else []


def wait_for(condition: Callable[[], object], what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds}s"
        time.sleep(0.1)


def run_backup(cluster: ClusterHarness, backup_id: int = 1) -> subprocess.CompletedProcess[str]:
    return cluster.api("run", "run-backup", "--data", json.dumps({"id": backup_id}), timeout=300)


def start_backup(cluster: ClusterHarness, backup_id: int = 1) -> subprocess.Popen[str]:
    api_cli = str(Path(sys.executable).parent / "api-cli")
    return subprocess.Popen(
        [api_cli, "run", "run-backup", "--data", json.dumps({"id": backup_id})],
        env=cluster.nodes[1].env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def add_data(cluster: ClusterHarness, wiki: str, name: str, megabytes: int = 2) -> None:
    pages = cluster.volume_dir(1, wiki, "pages")
    (pages / name).write_bytes(os.urandom(megabytes << 20))


def set_option(cluster: ClusterHarness, **options: object) -> None:
    backups.set_node_option(cluster.nodes[1].settings.config_path, **options)


def local_repository(
    redis_client: redis.Redis, wiki: str, directory: Path, backup_id: int = 1, retention: int = 1
) -> Path:
    directory.mkdir(exist_ok=True)
    destination = backups.add_destination(redis_client, "local", f"local:{directory}")
    backups.add_backup(redis_client, backup_id, destination, [wiki], retention=retention)
    return directory / "minwiki" / str(redis_client.hget("cluster/module_uuid", wiki))


def assert_sound_and_clean(
    env: dict[str, str], repo: Path, volumes_before: set[str], snapshots: int
) -> None:
    """The repository checks out and holds `snapshots`; no lock, container or new volume."""
    assert backups.restic(repo, "check", check=False).returncode == 0
    assert len(backups.snapshots(repo)) == snapshots
    assert lock_files(repo) == []
    assert restic_containers(env) == []
    assert volume_names(env) == volumes_before


@contextlib.contextmanager
def mounted(source: str, target: Path, *options: str) -> Iterator[Path]:
    """A mount for the test's length (root only); lazily unmounted whatever happened."""
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *options, source, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "--lazy", str(target)], check=False)


def remount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True)


def podman_client_parent(container: str) -> int:
    """The pid of the process that started `podman run --name=container` (the step)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if argv[:2] == [b"podman", b"run"] and f"--name={container}".encode() in argv:
            return int(stat.rsplit(")", 1)[1].split()[1])
    raise AssertionError(f"no podman client for {container}")


# --- restic or its step killed --------------------------------------------------------------
def test_restic_killed_mid_backup_fails_and_its_lock_goes_with_it(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    env = node_env(cluster)
    repo = local_repository(redis_client, wiki, tmp_path / "backups")
    assert run_backup(cluster).returncode == 0
    volumes_before = volume_names(env)
    set_option(cluster, restic_podman_args=SLOW_RESTIC)
    add_data(cluster, wiki, "slow.bin")
    running = start_backup(cluster)
    wait_for(lambda: lock_files(repo) and restic_containers(env), "restic took its lock")
    for name in restic_containers(env):
        subprocess.run(["podman", "kill", "--signal=KILL", name], env=env, capture_output=True)
    _, stderr = running.communicate(timeout=300)
    assert running.returncode == 1, stderr
    status = backups.status(redis_client, 1, 1, wiki)
    assert status["outcome"] == "failed" and "exit 137" in status["reason"], status
    assert lock_files(repo) == [], "the killed run's lock outlived its lease"

    set_option(cluster, restic_podman_args=[])
    result = run_backup(cluster)  # retention 1: forget --prune needs the repository alone
    assert result.returncode == 0, result.stderr
    status = backups.status(redis_client, 1, 1, wiki)
    assert status["outcome"] == "ok" and status["snapshots_count"] == 1
    assert_sound_and_clean(env, repo, volumes_before, snapshots=1)


def test_step_killed_mid_backup_next_run_stops_its_restic_and_removes_the_lock(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    env = node_env(cluster)
    repo = local_repository(redis_client, wiki, tmp_path / "backups")
    assert run_backup(cluster).returncode == 0
    volumes_before = volume_names(env)
    set_option(cluster, restic_podman_args=SLOW_RESTIC)
    add_data(cluster, wiki, "slow.bin")
    running = start_backup(cluster)
    wait_for(lambda: lock_files(repo) and restic_containers(env), "restic took its lock")
    os.kill(podman_client_parent(restic_containers(env)[0]), signal.SIGKILL)
    _, stderr = running.communicate(timeout=300)
    assert running.returncode != 0, stderr

    set_option(cluster, restic_podman_args=[])
    started = time.monotonic()
    result = run_backup(cluster)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 120, "no waiting for the dead step's lease to expire"
    assert backups.status(redis_client, 1, 1, wiki)["outcome"] == "ok"
    assert_sound_and_clean(env, repo, volumes_before, snapshots=1)


# --- the destination fails -----------------------------------------------------------------
def test_read_only_destination_fails_within_the_set_time_then_works_again(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    env = node_env(cluster)
    set_option(cluster, storage_retry_seconds=RETRY_SECONDS)
    with mounted("tmpfs", tmp_path / "disk", "-t", "tmpfs", "-o", "size=64m") as disk:
        repo = local_repository(redis_client, wiki, disk)
        assert run_backup(cluster).returncode == 0
        volumes_before = volume_names(env)
        remount(disk, "ro")
        started = time.monotonic()
        result = run_backup(cluster)
        assert result.returncode == 1
        assert time.monotonic() - started < 90, "restic's 15-minute retries were not cut short"
        status = backups.status(redis_client, 1, 1, wiki)
        assert status["outcome"] == "failed", status
        assert "storage kept failing" in status["reason"], status
        assert "read-only file system" in status["reason"], status
        assert restic_containers(env) == []

        remount(disk, "rw")
        assert run_backup(cluster).returncode == 0
        assert backups.status(redis_client, 1, 1, wiki)["outcome"] == "ok"
        assert_sound_and_clean(env, repo, volumes_before, snapshots=1)


def test_full_destination_fails_within_the_set_time_then_works_again(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    env = node_env(cluster)
    set_option(cluster, storage_retry_seconds=RETRY_SECONDS)
    volumes_before = volume_names(env)
    add_data(cluster, wiki, "big.bin", megabytes=6)
    with mounted("tmpfs", tmp_path / "disk", "-t", "tmpfs", "-o", "size=3m") as disk:
        repo = local_repository(redis_client, wiki, disk)
        started = time.monotonic()
        result = run_backup(cluster)
        assert result.returncode == 1
        assert time.monotonic() - started < 90
        status = backups.status(redis_client, 1, 1, wiki)
        assert status["outcome"] == "failed", status
        assert "no space left on device" in status["reason"], status
        assert restic_containers(env) == [] and lock_files(repo) == []

        remount(disk, "size=64m")
        assert run_backup(cluster).returncode == 0
        assert backups.status(redis_client, 1, 1, wiki)["outcome"] == "ok"
        assert_sound_and_clean(env, repo, volumes_before | {"restic-cache"}, snapshots=1)


def test_unmounted_destination_is_never_reinitialised(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    env = node_env(cluster)
    disk = tmp_path / "disk"  # what a disk would hold; bind-mounted where backups go
    disk.mkdir()
    mount_point = tmp_path / "mnt"
    with mounted(str(disk), mount_point, "--bind"):
        repo = local_repository(redis_client, wiki, mount_point)
        assert run_backup(cluster).returncode == 0
        volumes_before = volume_names(env)
    assert list(mount_point.iterdir()) == [], "the mount point is left, empty"
    for _ in range(2):  # and stays empty: a second run finds no repository made by the first
        result = run_backup(cluster)
        assert result.returncode == 1
        status = backups.status(redis_client, 1, 1, wiki)
        assert "repository vanished (disk not mounted?)" in status["reason"], status
        assert list(mount_point.iterdir()) == []
    assert restic_containers(env) == []

    with mounted(str(disk), mount_point, "--bind"):
        assert run_backup(cluster).returncode == 0
        assert backups.status(redis_client, 1, 1, wiki)["outcome"] == "ok"
        assert_sound_and_clean(env, repo, volumes_before, snapshots=1)


def test_rest_server_down_then_back_and_a_vanished_rest_repository(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    env = node_env(cluster)
    root = tmp_path / "rest"
    port = backends.free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [backends.RCLONE, "serve", "restic", str(root), f"--addr=127.0.0.1:{port}"]
    argv += [f"--user={backends.USER}", f"--pass={backends.PASSWORD}"]
    destination = backups.add_destination(
        redis_client,
        "rest",
        f"rest:{url}/base",
        rest_user=backends.USER,
        rest_password=backends.PASSWORD,
    )
    backups.add_backup(redis_client, 1, destination, [wiki], retention=1)
    repo = root / "base" / "minwiki" / str(redis_client.hget("cluster/module_uuid", wiki))
    with backends.serve(argv, port):
        assert run_backup(cluster).returncode == 0
    volumes_before = volume_names(env)

    started = time.monotonic()
    with backends.refusing(port):
        assert run_backup(cluster).returncode == 1
    assert time.monotonic() - started < 60
    assert "unreachable" in backups.status(redis_client, 1, 1, wiki)["reason"]

    with backends.serve(argv, port):
        assert run_backup(cluster).returncode == 0
        assert backups.status(redis_client, 1, 1, wiki)["outcome"] == "ok"
    assert_sound_and_clean(env, repo, volumes_before, snapshots=1)

    # Every backend: a repository this cluster wrote that reads as missing (here: gone
    # from the server's storage) is not created again in its place.
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    with backends.serve(argv, port):
        assert run_backup(cluster).returncode == 1
    reason = backups.status(redis_client, 1, 1, wiki)["reason"]
    assert "repository vanished" in reason, reason
    assert not repo.exists()
    assert restic_containers(env) == []


# --- cancelling --------------------------------------------------------------------------------
def test_sigterm_to_api_cli_cancels_the_backup_like_ctrl_c(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    env = node_env(cluster)
    repo = local_repository(redis_client, wiki, tmp_path / "backups")
    assert run_backup(cluster).returncode == 0
    volumes_before = volume_names(env)
    set_option(cluster, restic_podman_args=SLOW_RESTIC)
    add_data(cluster, wiki, "slow.bin")
    running = start_backup(cluster)
    wait_for(lambda: lock_files(repo) and restic_containers(env), "restic took its lock")
    running.send_signal(signal.SIGTERM)
    _, stderr = running.communicate(timeout=120)
    assert running.returncode == 1, stderr
    assert "cancelling task" in stderr
    wait_for(lambda: not restic_containers(env), "restic stopped", 60)
    status = backups.status(redis_client, 1, 1, wiki)
    assert status["outcome"] == "failed" and "cancelled" in status["reason"], status
    set_option(cluster, restic_podman_args=[])
    assert_sound_and_clean(env, repo, volumes_before, snapshots=1)
