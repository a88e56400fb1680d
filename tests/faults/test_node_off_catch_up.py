"""A node off across a scheduled time: when it boots again, the missed run is caught up
once (Persistent=true), and the daemon starting its timers again adds no second run.

The whole systemd node container is stopped (systemd shuts down: the daemon, its timers)
and started again (systemd boots: timers.target, the enabled agent.service)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from agent.core.settings import Settings
from tests.e2e.conftest import SystemdNode, node_image, systemd_node  # noqa: F401
from tests.e2e.test_timers_fire import _at, _define, _ran, _timers, node_agent  # noqa: F401

pytestmark = pytest.mark.podman


class StatusEvents:
    """Node 1's backup-status-changed events, one per module and run (ok or not)."""

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe("node/1/event/backup-status-changed")
        self.seen: list[dict[str, object]] = []

    def runs(self, backup_id: int) -> int:
        while (message := self.pubsub.get_message(timeout=0.1)) is not None:
            self.seen.append(json.loads(message["data"]))
        return sum(1 for event in self.seen if event.get("backup_id") == backup_id)


@pytest.fixture
def status_events(redis_client: redis.Redis) -> Iterator[StatusEvents]:
    events = StatusEvents(redis_client)
    try:
        yield events
    finally:
        events.pubsub.close()


def podman(*args: str) -> None:
    subprocess.run(["podman", *args], check=True, capture_output=True, timeout=180)


def booted(node: SystemdNode) -> bool:
    state = node.exec("systemctl", "is-system-running", check=False).stdout.strip()
    return state in ("running", "degraded")


def test_node_off_across_a_scheduled_time_catches_up_once(
    systemd_node: SystemdNode,  # noqa: F811
    node_agent: Settings,  # noqa: F811
    redis_client: redis.Redis,
    status_events: StatusEvents,
) -> None:
    # The daemon starts at boot, as on a real node (and starts its timers once more then).
    systemd_node.exec("systemctl", "enable", "agent.service")
    try:
        schedule = _at(20)
        _define(redis_client, 3, schedule)
        systemd_node.wait_for("backup3.timer", lambda: "backup3.timer" in _timers(systemd_node))

        podman("stop", "--time", "30", systemd_node.name)
        assert status_events.runs(3) == 0, "it ran before the node went off: too slow"
        due = time.time()
        while time.time() < due + 40 and not scheduled_time_passed(schedule):
            time.sleep(0.5)
        assert scheduled_time_passed(schedule)
        time.sleep(2)  # well past it, with the node off
        podman("start", systemd_node.name)
        systemd_node.wait_for("systemd to boot again", lambda: booted(systemd_node), 120)

        systemd_node.wait_for("the caught-up run", lambda: status_events.runs(3) >= 1, 120)
        systemd_node.wait_for("the daemon back", lambda: redis_client.exists("node/1/daemon"))
        systemd_node.wait_for(
            "the daemon's timer sync",
            lambda: "backup3.timer" in _timers(systemd_node) and _ran(systemd_node, 3),
        )
        time.sleep(10)  # room for a second run, which must not come
        assert status_events.runs(3) == 1
        journal = systemd_node.exec(
            "journalctl", "--no-pager", "-b", "-u", "backup3.service", check=False
        ).stdout
        assert journal.count("Starting backup3.service") <= 1, journal
    finally:
        systemd_node.exec("systemctl", "disable", "agent.service", check=False)


def scheduled_time_passed(schedule: str) -> bool:
    when = datetime.strptime(schedule, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    return datetime.now(UTC) > when
