"""Backup outcomes beyond the happy path: failures, partial, crashes, races, retention."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


@pytest.fixture
def local_backup(redis_client: redis.Redis, wiki: str, tmp_path: Path) -> Path:
    """Backup 1 of the wiki to a local destination; returns the module's repository dir."""
    target = tmp_path / "backups"
    target.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{target}")
    backups.add_backup(redis_client, 1, destination, [wiki], retention=2)
    return target / "minwiki" / str(redis_client.hget("cluster/module_uuid", wiki))


def run_backup(cluster: ClusterHarness, backup_id: int = 1) -> subprocess.CompletedProcess[str]:
    return cluster.api("run", "run-backup", "--data", json.dumps({"id": backup_id}))


def test_failed_dump_hook_fails_the_module_and_cleanup_still_runs(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    state = cluster.nodes[1].settings.state_dir(f"module/{wiki}")
    (state / "FAIL_DUMP").write_text("asked by the test\n")
    result = run_backup(cluster)
    assert result.returncode == 1
    status = backups.status(redis_client, 1, 1, wiki)
    assert status["outcome"] == "failed" and status["errors"] == 1
    assert "module-dump-state failed" in status["reason"]
    assert (state / "cleanup-ran").exists()
    assert not local_backup.exists(), "no restic run after a failed dump"
    assert not _restic_containers(
        {**cluster.nodes[1].env(), **cluster.nodes[1].settings.podman_env()}
    )
    prom = cluster.nodes[1].settings.state_dir("node/1") / "node_exporter" / "backup1.prom"
    assert 'node_backup_status{id="1",name="Backup 1"} 0' in prom.read_text()


def _slow_dump_hook(cluster: ClusterHarness, module_id: str, seconds: float) -> Path:
    """Make the module's dump hook note that it started, then sleep before dumping;
    returns the note's path (in the module's state dir)."""
    node = cluster.nodes[1]
    hook = node.settings.agent_home(f"module/{module_id}") / "bin" / "module-dump-state"
    hook.rename(hook.with_name("module-dump-state.real"))
    hook.write_text(
        "#!/bin/sh\n"
        "touch dump-started\n"
        f"sleep {seconds}\n"
        'exec "$(dirname "$0")/module-dump-state.real" "$@"\n'
    )
    hook.chmod(0o755)
    return node.settings.state_dir(f"module/{module_id}") / "dump-started"


def _start_node_backup(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "runagent"), "-m", "node", "run-backup", "--backup=1"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds}s"
        time.sleep(0.05)


def test_restic_starts_while_the_dump_hook_runs_and_reads_only_what_it_wrote(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    """The container starts during the hook; restic learns its paths (globs included:
    state/wiki-dump.* names a file only the hook writes) once the hook is done."""
    node = cluster.nodes[1]
    env = {**node.env(), **node.settings.podman_env()}
    started = _slow_dump_hook(cluster, wiki, 3)
    dump = node.settings.state_dir(f"module/{wiki}") / "wiki-dump.sqlite"
    backup = _start_node_backup(env)
    _wait_for(started.exists, "the dump hook started")
    _wait_for(lambda: bool(_restic_containers(env)), "restic's container started", 3)
    assert not dump.exists(), "the container was up before the hook had dumped"
    assert not (local_backup / "locks").exists(), "restic waits: the repository is untouched"
    _, stderr = backup.communicate(timeout=300)
    assert backup.returncode == 0, stderr.decode()
    paths = backups.listing(local_backup)
    assert "state/wiki-dump.sqlite" in paths and "state/wiki_settings.dump" in paths


def test_a_backup_killed_during_the_dump_hook_leaves_no_container_and_no_trace(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    node = cluster.nodes[1]
    env = {**node.env(), **node.settings.podman_env()}
    assert run_backup(cluster).returncode == 0
    files_before = sorted(p.relative_to(local_backup) for p in local_backup.rglob("*"))
    started = _slow_dump_hook(cluster, wiki, 30)
    started.unlink(missing_ok=True)
    backup = _start_node_backup(env)
    _wait_for(started.exists, "the dump hook started")
    _wait_for(lambda: bool(_restic_containers(env)), "restic's container started", 5)
    os.killpg(backup.pid, signal.SIGKILL)
    backup.wait()
    # restic's standard input closed with no path on it: it ends without a repository call.
    _wait_for(lambda: not _restic_containers(env), "the waiting container ended", 30)
    assert sorted(p.relative_to(local_backup) for p in local_backup.rglob("*")) == files_before
    assert len(backups.snapshots(local_backup)) == 1


def test_unreadable_file_gives_partial_with_its_path(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    node = cluster.nodes[1]
    pages = cluster.volume_dir(1, wiki, "pages")
    locked = pages / "private"
    locked.mkdir()
    (locked / "notes.md").write_text("secret notes\n")
    locked.chmod(0o000)
    # restic runs as root and root reads everything; without the DAC capabilities it meets
    # the mode-000 directory the way a rootless module's restic would.
    backups.set_node_option(
        node.settings.config_path, restic_podman_args=["--cap-drop=DAC_OVERRIDE,DAC_READ_SEARCH"]
    )
    result = run_backup(cluster)
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)["outcome"] == "partial"
    status = backups.status(redis_client, 1, 1, wiki)
    assert status["outcome"] == "partial" and status["partial"] is True
    assert any("volumes/pages/private" in path for path in status["unreadable"]), status
    assert status["snapshot_id"], "a partial backup still made its snapshot"
    assert len(backups.snapshots(local_backup)) == 1
    prom = (node.settings.state_dir("node/1") / "node_exporter" / "backup1.prom").read_text()
    assert 'node_backup_partial{id="1",name="Backup 1"} 1' in prom


def test_retention_keeps_exactly_n(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    for _ in range(3):
        assert run_backup(cluster).returncode == 0
    kept = backups.snapshots(local_backup)
    assert len(kept) == 2
    assert all("backup=1" in snap["tags"] and f"module={wiki}" in snap["tags"] for snap in kept)
    assert backups.status(redis_client, 1, 1, wiki)["snapshots_count"] == 2
    assert backups.restic(local_backup, "check").returncode == 0


def test_two_simultaneous_runs_make_one_snapshot(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(run_backup(cluster))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert len(backups.snapshots(local_backup)) == 1


def test_disabled_backup_does_nothing(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    redis_client.hset("cluster/backup/1", "enabled", "")
    result = cluster.api("run", "node/1/run-backup", "--data", json.dumps({"id": 1}))
    assert result.returncode == 0
    assert json.loads(result.stdout)["outcome"] == "skipped"
    assert not redis_client.exists("node/1/backup_status/1")
    assert not local_backup.exists()


def test_wrong_password_is_reported_and_never_reinitialises(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    local_backup.mkdir(parents=True)
    backups.restic(local_backup, "init", password="another-password")
    result = run_backup(cluster)
    assert result.returncode == 1
    status = backups.status(redis_client, 1, 1, wiki)
    assert "wrong repository password" in status["reason"]
    assert len(list((local_backup / "keys").iterdir())) == 1, "no second init"


def test_unreachable_storage_fails_fast_with_its_own_reason(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str
) -> None:
    from tests.conftest import free_port

    destination = backups.add_destination(
        redis_client, "rest", f"rest:http://127.0.0.1:{free_port()}/repos"
    )
    backups.add_backup(redis_client, 2, destination, [wiki])
    started = time.monotonic()
    result = run_backup(cluster, 2)
    assert result.returncode == 1
    assert time.monotonic() - started < 60
    status = backups.status(redis_client, 1, 2, wiki)
    assert "unreachable" in status["reason"] and "refused" in status["reason"].lower()


def test_missing_destination_directory_is_its_own_reason(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    gone = tmp_path / "gone"
    destination = backups.add_destination(redis_client, "local", f"local:{gone}")
    backups.add_backup(redis_client, 3, destination, [wiki])
    for _ in range(2):  # the failed run must not create it: the second would back up there
        assert run_backup(cluster, 3).returncode == 1
        assert "missing" in backups.status(redis_client, 1, 3, wiki)["reason"]
        assert not gone.exists()


def _restic_containers(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        ["podman", "ps", "--format", "{{.Names}}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in done.stdout.split() if name.startswith("restic-")]


def test_backup_killed_mid_upload_reruns_at_once(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, local_backup: Path
) -> None:
    node = cluster.nodes[1]
    env = {**node.env(), **node.settings.podman_env()}
    pages = cluster.volume_dir(1, wiki, "pages")
    with open(pages / "big.bin", "wb") as handle:  # enough data to be caught mid-upload
        for _ in range(24):
            handle.write(os.urandom(16 << 20))
    first = subprocess.Popen(
        [str(Path(sys.executable).parent / "runagent"), "-m", "node", "run-backup", "--backup=1"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (local_backup / "locks").is_dir() or not list((local_backup / "locks").iterdir()):
        assert time.monotonic() < deadline and first.poll() is None, "backup never started"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    for name in _restic_containers(env):
        subprocess.run(["podman", "kill", "--signal", "KILL", name], env=env, capture_output=True)
    first.wait()
    assert list((local_backup / "locks").iterdir()), "the crash left restic's lock behind"

    started = time.monotonic()
    second = subprocess.run(
        [str(Path(sys.executable).parent / "runagent"), "-m", "node", "run-backup", "--backup=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr
    # Far below the 30 minutes, yet room for 384 MiB on a machine busy with other work (the
    # whole test took 54 s with two workers beside two CPU hogs; pytest's timeout is 300).
    assert time.monotonic() - started < 180, "no waiting for restic's 30-minute stale rule"
    assert not list((local_backup / "locks").iterdir())
    assert backups.status(redis_client, 1, 1, wiki)["outcome"] == "ok"
    assert backups.restic(local_backup, "check").returncode == 0
