"""`cancel-task` of a task its worker has claimed but not yet registered as running (it is
still reading its action and environment): the cancel takes effect, the task ends
cancelled and its step never runs.

The daemon runs in this process on the real Redis; the task is held at the real seam
between claim and registration (Daemon._actions, read first) by a subclass that waits there, so the
cancel arrives in that window every time, with no sleep."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.core.settings import Settings, load_settings
from agent.operations import cluster_setup
from agent.runtime import lease, tasks
from agent.runtime.actiondirs import Action
from agent.runtime.daemon import Daemon, Worker

AGENT = "node/1"


class HeldDaemon(Daemon):
    """A daemon whose tasks wait, once claimed, until the test lets them register."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, shutdown_timeout=10)
        self.preparing = threading.Event()
        self.release = threading.Event()

    def _actions(self, agent_id: str) -> dict[str, Action]:
        self.preparing.set()
        assert self.release.wait(60), "the test never released the task"
        return super()._actions(agent_id)


@pytest.fixture
def daemon(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> Iterator[HeldDaemon]:
    root = tmp_path / "node1"
    cluster_setup.init(root, 1, redis_url)
    held = HeldDaemon(load_settings(root))
    # Served as a running daemon is: its lease held and renewed. Without it a watcher sees
    # no daemon and withdraws the queued cancel-task (a loaded run waited long enough).
    assert lease.acquire(held.redis, held.node_id, held.holder)
    held._register_node()
    heartbeat = threading.Thread(target=held._heartbeat, daemon=True)
    heartbeat.start()
    yield held
    held.release.set()
    held.stopping.set()
    heartbeat.join(timeout=30)
    lease.release(held.redis, held.node_id, held.holder)
    for worker in held.workers.values():
        worker.stop()
        worker.join(timeout=40)
    for thread in list(held.threads):
        thread.join(timeout=30)


def test_a_cancel_between_claim_and_registration_cancels_the_task(
    daemon: HeldDaemon, redis_client: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "it-ran"
    action = daemon.settings.agent_home(AGENT) / "actions" / "touch-marker"
    action.mkdir(parents=True)
    (action / "10touch").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (action / "10touch").chmod(0o755)
    worker = Worker(daemon, AGENT)
    daemon.workers[AGENT] = worker
    worker.start()
    client = connect(daemon.settings.redis_url)

    watcher = tasks.start(client, tasks.TaskRequest(AGENT, "touch-marker"), check=False)
    assert daemon.preparing.wait(60), "the worker never claimed the task"
    cancel = tasks.start(
        client, tasks.TaskRequest(AGENT, "cancel-task", {"task": watcher.task_id}), check=False
    )
    answer = cancel.wait(timeout=60)
    daemon.release.set()
    result = watcher.wait(timeout=60)

    assert answer.exit_code == 0, (answer.output, answer.error)
    assert result.exit_code == 1 and "cancelled" in result.error, result
    assert not marker.exists(), "a cancelled task's step never runs"
    status = json.loads(
        redis_client.get(redis_keys.task_field(AGENT, watcher.task_id, "exit_code")) or "null"
    )
    assert status == 1
    assert not redis_client.llen(redis_keys.task_processing(AGENT))
    # The worker forgets the task just after it records the exit code the watcher read.
    deadline = time.monotonic() + 30
    while (daemon.claimed or daemon.running) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not daemon.claimed and not daemon.running
