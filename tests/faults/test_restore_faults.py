"""A restore interrupted at any point: the daemon SIGKILLed, cancel-task, Ctrl-C. The
source stays untouched, the half-made instance goes, every task record has its exit code."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent import redis_keys, tasks
from agent.redis_store import connect
from tests.integration.test_restore_cases import PAGE, assert_only_modules, setup_wiki
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


def wait_for(what: str, condition: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.1)
    return value


def assert_settled(cluster: ClusterHarness, client: Any, modules: set[str]) -> None:
    """Redis and the node agree: only these modules, no claimed task without its exit code,
    no pending instance, no lock, no container."""
    wait_for(
        "every pending instance removed",
        lambda: (
            not client.hkeys(redis_keys.MODULE_PENDING)
            and set(client.hkeys(redis_keys.MODULE_NODE)) == modules
        ),
    )
    wait_for(
        "every claimed task finished",
        lambda: not [k for k in client.scan_iter(match="*/tasks/processing") if client.llen(k)],
    )
    assert_only_modules(cluster, client, modules)
    for key in client.scan_iter(match="task/*/context"):
        assert client.exists(key.rsplit("/", 1)[0] + "/exit_code"), f"{key} has no exit code"
    assert not list(client.scan_iter(match="*backup_lock*"))
    assert not list(client.scan_iter(match="cluster/repository_lease/*"))
    for node in cluster.nodes.values():
        listed = subprocess.run(
            ["podman", "ps", "--all", "--format", "{{.Names}}"],
            env=node.settings.podman_env() | {"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert listed == [], (node.node_id, listed)


def test_daemon_killed_mid_restore_leaves_no_ghost_module(
    cluster: ClusterHarness,
    redis_client: Any,
    hooked_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    wiki, destination, path = setup_wiki(cluster, redis_client, hooked_image, tmp_path / "dest")
    cluster.api_ok("run-backup", {"id": 1})
    page = (cluster.volume_dir(1, wiki, "pages") / PAGE).read_bytes()
    redis_client.set("test/restore-hook", "slow")
    client = connect(cluster.redis_url)
    request = {"repository": destination, "path": path, "snapshot": "", "node": 1}
    watcher = tasks.start(client, tasks.TaskRequest("cluster", "restore-module", request))
    wait_for("the module's own restore step", lambda: redis_client.get("test/hook-started"))
    [copy] = set(redis_client.hkeys(redis_keys.MODULE_NODE)) - {wiki}

    cluster.nodes[1].stop(signal.SIGKILL)
    redis_client.delete("test/restore-hook")
    cluster.nodes[1].start()

    result = watcher.wait(timeout=120)
    assert result.exit_code == 1
    assert "daemon stopped while it was running" in result.error
    assert f"removed: {copy}" in result.error
    assert_settled(cluster, redis_client, {wiki})
    assert (cluster.volume_dir(1, wiki, "pages") / PAGE).read_bytes() == page
    assert len(backups.snapshots(tmp_path / "dest" / path)) == 1
    backups.restic(tmp_path / "dest" / path, "check")
    # The instance can be restored again once the ghost is gone.
    restored = cluster.api_ok("cluster/restore-module", request)["module_id"]
    assert (cluster.volume_dir(1, restored, "pages") / PAGE).read_bytes() == page
    assert json.loads(redis_client.get(f"task/cluster/{watcher.task_id}/exit_code")) == 1
