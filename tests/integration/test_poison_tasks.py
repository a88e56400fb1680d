"""No task, however malformed, stops a live daemon: each ends failed or is dropped, the
worker that took it keeps serving, and so does a daemon restarted with it still queued."""

from __future__ import annotations

import json
import time

import redis

from agent.core import redis_keys
from agent.runtime import tasks
from tests.support.cluster import ClusterHarness

DEEP = "[" * 100000 + "]" * 100000
# Raw queue entries that carry no usable task id: logged and dropped.
NO_ID: list[str | bytes] = [
    "[" * 100000,
    DEEP,
    "{not json",
    "",
    "42",
    "null",
    json.dumps(["id", "action"]),
    json.dumps({"action": "echo"}),
    json.dumps({"id": 5, "action": "echo"}),
    json.dumps({"id": "a/b", "action": "echo"}),
    json.dumps({"id": "x" * 1000, "action": "echo"}),
    b'\xff\xfe{"id": "not-utf8", "action": "echo"}',
]
# Entries whose id can be read: each ends with a task record and this exit code.
WITH_ID: dict[str, tuple[str, int]] = {
    "p-no-action": (json.dumps({"id": "p-no-action", "data": {}}), 1),
    "p-bad-action": (json.dumps({"id": "p-bad-action", "action": ["echo"]}), 1),
    "p-deep-data": ('{"id": "p-deep-data", "action": "echo", "data": ' + DEEP + "}", 1),
    "p-nested-200": (
        json.dumps(
            {"id": "p-nested-200", "action": "echo", "data": json.loads("[" * 200 + "]" * 200)}
        ),
        1,
    ),
    "p-huge": (json.dumps({"id": "p-huge", "action": "echo", "data": "x" * (9 << 20)}), 1),
    "p-mega-input": (
        json.dumps(
            {
                "id": "p-mega-input",
                "action": "add-module",
                "data": {"image": "x" * (1 << 20), "node": 1},
            }
        ),
        10,
    ),
    "p-unknown-action": (json.dumps({"id": "p-unknown-action", "action": "../../bin/sh"}), 8),
    "p-truncated": ('{"id": "p-truncated", "action": "echo", "data": {"a": ', 1),
    "p-bigint": ('{"id": "p-bigint", "action": "echo", "data": ' + "1" * 5000 + "}", 1),
}
ECHO = {"10echo": "#!/bin/sh\ncat\n"}


def _push_poison(url: str, key: str) -> None:
    raw_client = redis.Redis.from_url(url)  # bytes as they are: not every entry is UTF-8
    try:
        for raw in NO_ID:
            raw_client.lpush(key, raw)
        for raw, _ in WITH_ID.values():
            raw_client.lpush(key, raw)
    finally:
        raw_client.close()


def _records(client: redis.Redis, timeout: float = 90) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(WITH_ID) and time.monotonic() < deadline:
        for task_id in WITH_ID:
            result = tasks.fetch_result(client, "cluster", task_id)
            if result is not None:
                found[task_id] = (result.exit_code, result.error + str(result.output))
        time.sleep(0.2)
    return found


def _assert_settled(client: redis.Redis, cluster: ClusterHarness) -> None:
    found = _records(client)
    assert {k: v[0] for k, v in found.items()} == {k: v[1] for k, v in WITH_ID.items()}, (
        cluster.nodes[1].log_tail()
    )
    assert "too large" in found["p-huge"][1]
    assert "nested" in found["p-deep-data"][1] and "nested" in found["p-nested-200"][1]
    assert "action" in found["p-no-action"][1]
    deadline = time.monotonic() + 30
    while client.llen(redis_keys.task_processing("cluster")) or client.llen(
        redis_keys.task_queue("cluster")
    ):
        assert time.monotonic() < deadline, cluster.nodes[1].log_tail()
        time.sleep(0.1)
    # The same worker still takes and runs a well-formed task.
    result = tasks.run(client, tasks.TaskRequest("cluster", "echo", {"ok": 1}), timeout=60)
    assert (result.exit_code, result.output) == (0, {"ok": 1})


def test_poison_tasks_fail_and_the_worker_keeps_serving(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    cluster.nodes[1].write_action("cluster", "echo", ECHO)
    _push_poison(cluster.redis_url, redis_keys.task_queue("cluster"))
    _assert_settled(redis_client, cluster)
    assert cluster.nodes[1].process is not None and cluster.nodes[1].process.poll() is None


def test_a_restarted_daemon_settles_poison_left_queued_or_claimed(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    node = cluster.nodes[1]
    node.write_action("cluster", "echo", ECHO)
    node.stop()
    # Some waiting in the queue, the rest as if a crashed daemon had claimed them.
    _push_poison(cluster.redis_url, redis_keys.task_queue("cluster"))
    for _ in range(len(NO_ID) // 2 + len(WITH_ID) // 2):
        redis_client.lmove(
            redis_keys.task_queue("cluster"), redis_keys.task_processing("cluster"), "RIGHT", "LEFT"
        )
    node.start()
    _assert_settled(redis_client, cluster)
    assert node.process is not None and node.process.poll() is None
