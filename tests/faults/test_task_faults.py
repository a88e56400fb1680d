"""Following sub-tasks when something goes wrong: a task that cannot be followed to its
end is reported as failed, never dropped from the results."""

from __future__ import annotations

from typing import Any

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.runtime import tasks
from tests.support.cluster import ClusterHarness


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
