"""The node's private Redis killed and restarted while tasks run: every task that was
claimed still gets its exit code, `agent cluster up` restarts Redis and says so."""

from __future__ import annotations

import json
from pathlib import Path

from agent.core import redis_keys
from tests.support import backups
from tests.support.cluster import NodeHarness
from tests.support.embedded_node import (
    EmbeddedNode,
    containers,
    pause_dump_hook,
    settled,
    wait_until,
    wiki_with_backup,
)


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


def test_redis_killed_and_restarted_mid_backup(
    node: EmbeddedNode, minwiki_image: str, restic_image: str, tmp_path: Path
) -> None:
    wiki = wiki_with_backup(node, minwiki_image, tmp_path / "dest")
    marker, release = tmp_path / "dump-started", tmp_path / "release"
    pause_dump_hook(node, wiki.module_id, marker, release)
    client = node.api_background("run-backup", {"id": 1})
    wait_until("the dump hook starting", marker.exists)

    node.kill_redis()
    wait_until("the daemon noticing", lambda: "Redis error" in node.log_tail())
    up = node.agent("cluster", "up")
    assert up.returncode == 0, up.stderr
    assert "private Redis had stopped: restarted it" in up.stdout, up.stdout
    release.touch()

    out, err = client.communicate(timeout=300)
    assert client.returncode == 0, (out, err)
    assert json.loads(out)["outcome"] == "ok"
    status = wiki.status(node)
    assert status["snapshot_id"] and not status["errors"]
    [snapshot] = backups.snapshots(wiki.repository)
    assert snapshot["id"].startswith(status["snapshot_id"][:8])
    backups.restic(wiki.repository, "check")
    assert "volumes/pages" in backups.listing(wiki.repository)
    assert settled(node) == []
    assert leftover_processing(node) == {}
    assert containers(node) == []
