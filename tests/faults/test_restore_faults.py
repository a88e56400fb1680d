"""A restore interrupted at any point: the daemon SIGKILLed, cancel-task, Ctrl-C. The
source stays untouched, the half-made instance goes, every task record has its exit code."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.runtime import tasks
from tests.conftest import podman_build
from tests.integration.test_restore_cases import PAGE, assert_only_modules, setup_wiki
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.stalls import STALL, interrupt_held_action, wait_for

pytestmark = pytest.mark.podman
# Where a restore can be stopped, by the step that holds it there.
PHASES = {
    "create-module": "create-module/05stall",  # the new instance is being created
    "before-restic": "restore-module/05stall",  # created, restic restore about to start
    "module-steps": "restore-module/15stall",  # restic done, the module's own steps run
}


@pytest.fixture(scope="session")
def stallable_image(minwiki_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """minwiki with steps a test can hold: in create-module and around restic restore."""
    tag = "localhost/minwiki-stall:latest"
    context = tmp_path_factory.mktemp("stall")
    (context / "stall").write_text(STALL)
    (context / "stall").chmod(0o755)
    copies = "".join(f"COPY stall /imageroot/actions/{step}\n" for step in PHASES.values())
    (context / "Containerfile").write_text(f"FROM {minwiki_image}\n{copies}")
    podman_build(tag, context, "build-minwiki-stall")
    return tag


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


@pytest.mark.parametrize("how", ["cancel-task", "ctrl-c"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_restore_stopped_at_each_phase_leaves_the_source_and_nothing_else(
    cluster: ClusterHarness,
    redis_client: Any,
    stallable_image: str,
    restic_image: str,
    tmp_path: Path,
    phase: str,
    how: str,
) -> None:
    wiki, destination, path = setup_wiki(cluster, redis_client, stallable_image, tmp_path / "dest")
    cluster.api_ok("run-backup", {"id": 1})
    live = cluster.volume_dir(1, wiki, "pages") / PAGE
    page = live.read_bytes()
    redis_client.set("test/stall", PHASES[phase])
    request = {"repository": destination, "path": path, "snapshot": "", "node": 1}
    stopped = interrupt_held_action(
        redis_client,
        cluster.redis_url,
        cluster.nodes[1].env(),
        "cluster/restore-module",
        request,
        how,
        timeout=60,
    )
    task_id = stopped.task_id
    assert stopped.returncode == 1, (stopped.out, stopped.err)
    assert "cancelled" in stopped.err
    assert redis_client.get(f"task/cluster/{task_id}/exit_code") == "1"
    redis_client.delete("test/stall")
    assert_settled(cluster, redis_client, {wiki})
    assert live.read_bytes() == page, "the source is untouched"
    assert len(backups.snapshots(tmp_path / "dest" / path)) == 1
