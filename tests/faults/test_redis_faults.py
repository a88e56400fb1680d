"""The node's private Redis killed and restarted while tasks run: every task that was
claimed still gets its exit code, `agent cluster up` restarts Redis and says so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import redis_keys
from tests.support.cluster import NodeHarness
from tests.support.embedded_node import EmbeddedNode, wait_until


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EmbeddedNode]:
    """A node as `agent cluster init --private-storage` + `agent cluster up` make it."""
    embedded = EmbeddedNode(tmp_path / "node1")
    try:
        init = embedded.agent("cluster", "init", "--private-storage")
        assert init.returncode == 0, init.stderr
        up = embedded.agent("cluster", "up")
        assert up.returncode == 0, up.stderr
        yield embedded
    finally:
        embedded.down()


def leftover_processing(node: EmbeddedNode) -> dict[str, list[str]]:
    client = node.redis()
    return {
        key: client.lrange(key, 0, -1)
        for key in client.scan_iter(match="*/tasks/processing")
        if client.llen(key)
    }


def test_a_task_that_ends_while_redis_is_down_gets_its_exit_code(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    NodeHarness(node.settings).write_action(
        "cluster",
        "waits",
        {
            "10wait": f"#!/bin/sh\ntouch started\nwhile [ ! -e {release} ]; do sleep 0.1; done\n"
            "echo '\"finished\"'\n",
        },
    )
    client = node.api_background("waits")
    state = node.settings.state_dir("cluster")
    wait_until("the step starting", (state / "started").exists)

    node.kill_redis()
    release.touch()  # the step ends and the daemon tries to record it with Redis away
    wait_until("the daemon failing to record the result", lambda: "retrying" in node.log_tail())
    up = node.agent("cluster", "up")
    assert up.returncode == 0, up.stderr
    assert "private Redis had stopped: restarted it" in up.stdout
    assert "daemon: already running" in up.stdout

    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    assert json.loads(out) == "finished"
    assert leftover_processing(node) == {}
    [task_key] = node.redis().keys("task/cluster/*/exit_code")
    assert node.redis().get(task_key) == "0"
    assert node.redis().exists(redis_keys.node_daemon_lease(1))
