"""Scheduled backups under a real systemd: the node daemon runs as agent.service in the
test node, renders the timers itself, and the timers fire on their own."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from agent.adapters import systemd
from agent.core.settings import Settings
from tests.e2e.conftest import BIN, SystemdNode, node_agent_service, node_api
from tests.support import backups

pytestmark = pytest.mark.podman
EVENT = "cluster/event/backup-schedule-changed"


@pytest.fixture
def node_agent(
    systemd_node: SystemdNode, redis_client: redis.Redis, redis_url: str
) -> Iterator[Settings]:
    """Node 1's daemon running as agent.service inside the systemd node."""
    with node_agent_service(systemd_node, redis_client, redis_url) as settings:
        yield settings


def _at(seconds: float) -> str:
    """A one-shot calendar expression `seconds` from now, in UTC."""
    when = datetime.now(UTC) + timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _define(client: redis.Redis, backup_id: int, schedule: str, **fields: str) -> None:
    client.hset("cluster/module_node", "wiki1", "1")
    backups.add_backup(
        client,
        backup_id,
        fields.pop("repository", str(uuid.uuid4())),
        fields.pop("instances", "wiki1").split(),
        name=f"b{backup_id}",
        schedule=schedule,
        **fields,
    )
    client.publish(EVENT, json.dumps({"backup_ids": [backup_id]}))


def _timers(node: SystemdNode) -> dict[str, systemd.TimerState]:
    listed = node.exec("systemctl", "list-timers", "--output=json", "backup*").stdout
    return systemd.parse_list_timers(listed)


def _ran(node: SystemdNode, backup_id: int) -> bool:
    """The service has been started at least once since it was loaded."""
    props = node.show(f"backup{backup_id}.service", "ExecMainStartTimestampMonotonic")
    return int(props.get("ExecMainStartTimestampMonotonic") or 0) > 0


def test_timer_fires_by_itself_and_disabling_removes_it(
    systemd_node: SystemdNode, node_agent: Settings, redis_client: redis.Redis
) -> None:
    # Far enough ahead that the timer is listed before it fires, even on a busy machine
    # (6 s was seen to pass before the daemon's sync had installed it).
    schedule = _at(30)
    _define(redis_client, 1, schedule)
    _define(redis_client, 2, "*-*-* 03:15:00", instances="elsewhere1")  # not on node 1
    systemd_node.wait_for("backup1.timer", lambda: "backup1.timer" in _timers(systemd_node))
    timers = _timers(systemd_node)
    assert list(timers) == ["backup1.timer"]
    expected = datetime.strptime(schedule, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    assert timers["backup1.timer"].next == expected.isoformat()
    assert not _ran(systemd_node, 1)
    systemd_node.wait_for("backup1.service to run", lambda: _ran(systemd_node, 1), 90)
    journal = systemd_node.exec("journalctl", "--no-pager", "-u", "backup1.service").stdout
    assert "Backup 1 (b1)" in journal  # systemd started it (Description in the journal)
    assert _timers(systemd_node)["backup1.timer"].last is not None
    rows = node_api(node_agent, "node/1/list-backup-timers", None)  # the operator's view
    assert [(r["id"], r["timer"], r["active"]) for r in rows] == [(1, "backup1.timer", False)]
    assert rows[0]["last"] is not None  # a one-shot date: no next run once it has fired
    shown = systemd_node.exec(str(BIN / "agent"), "timers", "--root", str(node_agent.root))
    assert "backup1.timer" in shown.stdout

    redis_client.hset("cluster/backup/1", "enabled", "")
    redis_client.publish(EVENT, json.dumps({"backup_ids": [1]}))
    systemd_node.wait_for("backup1.timer to go", lambda: _timers(systemd_node) == {})
    listed = systemd_node.exec("ls", "/etc/systemd/system").stdout.split()
    assert not [name for name in listed if name.startswith("backup")]


def test_missed_run_is_caught_up_when_timers_start_again(
    systemd_node: SystemdNode, node_agent: Settings, redis_client: redis.Redis
) -> None:
    # Far enough ahead that the timer is installed and stopped before it is due, even on a
    # busy machine (the sync and the container's systemd can take many seconds).
    schedule = _at(40)
    due = datetime.strptime(schedule, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    _define(redis_client, 3, schedule)
    systemd_node.wait_for("backup3.timer", lambda: "backup3.timer" in _timers(systemd_node))
    systemd_node.exec("systemctl", "stop", "backup3.timer")
    assert datetime.now(UTC) < due, "the timer was installed only after it was due"
    # the scheduled time passes while the timer is stopped
    time.sleep((due - datetime.now(UTC)).total_seconds() + 2)
    assert not _ran(systemd_node, 3)
    systemd_node.exec("systemctl", "start", "backup3.timer")
    systemd_node.wait_for("the missed run (Persistent=true)", lambda: _ran(systemd_node, 3), 20)


def test_scheduled_backup_leaves_a_snapshot_and_status(
    systemd_node: SystemdNode,
    node_agent: Settings,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
) -> None:
    module = node_api(node_agent, "add-module", {"image": minwiki_image, "node": 1})
    module_id = module["module_id"]
    try:
        target = systemd_node.base / f"repo-{uuid.uuid4().hex[:8]}"
        target.mkdir()
        destination = backups.add_destination(redis_client, "local", f"local:{target}")
        _define(redis_client, 4, _at(5), repository=destination, instances=module_id)
        systemd_node.wait_for("backup4.service to run", lambda: _ran(systemd_node, 4), 40)
        systemd_node.wait_for(
            "backup4.service to finish",
            lambda: (
                systemd_node.show("backup4.service", "ActiveState")["ActiveState"]
                in ("inactive", "failed")
            ),
            180,
        )
        result = systemd_node.show("backup4.service", "Result")["Result"]
        journal = systemd_node.exec("journalctl", "--no-pager", "-u", "backup4.service").stdout
        assert result == "success", journal
        status = backups.status(redis_client, 1, 4, module_id)
        assert status["errors"] == 0
        found = [s for d in target.rglob("config") for s in backups.snapshots(d.parent)]
        assert [s["id"] for s in found] == [status["snapshot_id"]]
    finally:  # its volumes live in the host's podman: leave none behind
        node_api(node_agent, "remove-module", {"module_id": module_id})
