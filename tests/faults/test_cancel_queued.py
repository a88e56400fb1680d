"""`cancel-task` of a task still waiting in its queue (its daemon was away when it was
queued): the task leaves the queue, never runs, and is recorded as cancelled, so whoever
waits on it returns."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from agent.core import redis_keys
from tests.support.cluster import ClusterHarness
from tests.support.stalls import API_CLI


def wait_for(what: str, condition: Callable[[], object], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds}s"
        time.sleep(0.05)


def api_cli(cluster: ClusterHarness, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [API_CLI, "run", *args],
        env=cluster.nodes[1].env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def queued_ids(client: redis.Redis, agent_id: str) -> list[str]:
    """Ids in the queue, in the order workers claim them (from the right)."""
    entries = client.lrange(redis_keys.task_queue(agent_id), 0, -1)
    return [json.loads(entry)["id"] for entry in reversed(entries)]


@pytest.mark.parametrize("how", ["ctrl-c", "cancel-task"])
def test_cancel_of_a_queued_task_withdraws_it_before_it_runs(
    cluster: ClusterHarness, redis_client: redis.Redis, tmp_path: Path, how: str
) -> None:
    node = cluster.nodes[1]
    marker = tmp_path / "it-ran"
    node.write_action("cluster", "touch-marker", {"10touch": f"#!/bin/sh\ntouch {marker}\n"})
    # The daemon dies; its lease has not lapsed yet (as in the first seconds after a crash;
    # made longer here so a loaded machine cannot let it lapse mid-test): api-cli queues.
    node.stop(signal.SIGKILL)
    redis_client.expire(redis_keys.node_daemon_lease(1), 300)
    waiting = api_cli(cluster, "touch-marker")
    canceller: subprocess.Popen[str] | None = None
    try:
        wait_for("the task queued", lambda: len(queued_ids(redis_client, "cluster")) == 1)
        [task_id] = queued_ids(redis_client, "cluster")
        if how == "ctrl-c":
            waiting.send_signal(signal.SIGINT)
        else:
            canceller = api_cli(cluster, "cancel-task", "--data", json.dumps({"task": task_id}))
        wait_for("the cancel queued", lambda: len(queued_ids(redis_client, "cluster")) == 2)

        node.start()
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 1, (out, err)
        assert "cancelled before it started" in err
        if canceller is not None:
            out, err = canceller.communicate(timeout=120)
            assert canceller.returncode == 0, (out, err)
    finally:
        for client in (waiting, canceller):
            if client is not None and client.poll() is None:
                client.kill()
                client.communicate()

    assert not marker.exists(), "the cancelled task ran"
    record = f"task/cluster/{task_id}"
    assert redis_client.get(f"{record}/exit_code") == "1"
    assert redis_client.get(f"{record}/error") == "cancelled before it started\n"
    assert json.loads(redis_client.get(f"{record}/context") or "")["action"] == "touch-marker"
    assert redis_client.llen(redis_keys.task_queue("cluster")) == 0
    assert redis_client.llen(redis_keys.task_processing("cluster")) == 0
    # The daemon serves on: the next task of the same action runs.
    again = cluster.api("run", "touch-marker")
    assert again.returncode == 0, again.stderr
    assert marker.exists()
