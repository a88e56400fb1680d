"""Following sub-tasks when something goes wrong: a task that cannot be followed to its
end is reported as failed, never dropped from the results."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.runtime import tasks
from tests.support.cluster import ClusterHarness
from tests.support.processes import alive, gone


def test_run_parallel_reports_a_watcher_that_failed_instead_of_dropping_it(
    cluster: ClusterHarness, redis_client: Any
) -> None:
    # Node 2 looks served (a lease that is about to lapse) but no daemon will ever take
    # its task: its watcher withdraws the task and raises, node 1's ends normally.
    redis_client.sadd(redis_keys.CLUSTER_NODES, 2)
    redis_client.set(redis_keys.node_daemon_lease(2), "gone 1 dead-daemon", ex=2)
    requests = [
        tasks.TaskRequest(redis_keys.node_agent(node), "list-actions", None) for node in (1, 2)
    ]
    results = tasks.run_parallel(connect(cluster.redis_url), requests)
    assert [r.agent_id for r in results] == ["node/1", "node/2"]
    assert results[0].exit_code == 0 and "run-backup" in results[0].output
    assert results[1].exit_code == 1
    assert "lost track of task" in results[1].error and "withdrawn" in results[1].error
    assert redis_client.llen(redis_keys.task_queue("node/2")) == 0


def test_a_step_killed_by_a_signal_leaves_no_process_of_its_task(
    cluster: ClusterHarness, tmp_path: Path
) -> None:
    """What a SIGKILLed step started (here a sleep; in a restore, podman and its restic)
    is stopped before the task's end is recorded, not left working for nobody."""
    pidfile = tmp_path / "child.pid"
    # The child lets go of the step's pipes (stdout, stderr, COMFD): only its life counts.
    step = f"#!/bin/sh\nsleep 300 >/dev/null 2>&1 3>&- &\necho $! > {pidfile}\nkill -KILL $$\n"
    cluster.nodes[1].write_action("node/1", "orphan-child", {"10spawn": step})
    code, _, _ = cluster.api_json("node/1/orphan-child", None, timeout=120)
    assert code != 0
    child = int(pidfile.read_text())
    try:
        assert gone(child), "the killed step's child outlived its task"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
