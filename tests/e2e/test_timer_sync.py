"""Timer sync against a real systemd: the test node's systemctl, a unit dir mounted in it.

The sync runs here (in the test process) with `systemctl` set to `podman exec <node>
systemctl`, so every file change and every systemctl call is observable: the argv audit
log ($AGENT_ARGV_LOG, written by agent.adapters.proc) counts the reloads.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from agent.core.settings import Settings
from agent.operations.cluster_setup import init
from agent.runtime import timers as schedule
from tests.e2e.conftest import SystemdNode
from tests.support import backups

pytestmark = pytest.mark.podman


@pytest.fixture
def node_settings(
    systemd_node: SystemdNode, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> Settings:
    for unit in systemd_node.unit_dir.iterdir():  # a clean unit dir, timers stopped
        systemd_node.exec("systemctl", "disable", "--now", unit.name, check=False)
        unit.unlink()
    systemd_node.exec("systemctl", "daemon-reload")
    settings = init(tmp_path / "node1", 1, redis_url)
    return replace(
        settings,
        timers="on",
        unit_dir=str(systemd_node.unit_dir),
        systemctl=systemd_node.systemctl,
        timer_random_delay=0,
    )


def _backup(client: redis.Redis, backup_id: int, schedule_: str, instances: str, on: bool) -> None:
    backups.add_backup(
        client,
        backup_id,
        "48ce000a-79b7-5fe6-8558-177fd70c27b4",
        instances.split(),
        enabled=on,
        name=f"b{backup_id}",
        schedule=schedule_,
    )


def _systemctl_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    return [call[call.index("systemctl") + 1 :] for call in calls if "systemctl" in call]


def _files(node: SystemdNode) -> dict[str, str]:
    return {p.name: p.read_text() for p in node.unit_dir.iterdir()}


def test_each_change_touches_exactly_its_files_and_reloads_once(
    systemd_node: SystemdNode,
    node_settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    subtests: pytest.Subtests,
) -> None:
    """Each change's checks report on their own (subtests); every change first reads the
    audit log, so a failed check does not shift what the next one sees."""
    audit = tmp_path / "argv.log"
    monkeypatch.setenv("AGENT_ARGV_LOG", str(audit))
    redis_client.hset("cluster/module_node", mapping={"wiki1": "1", "wiki2": "2", "dok1": "1"})
    _backup(redis_client, 1, "daily", "wiki1 wiki2", True)
    _backup(redis_client, 2, "daily", "wiki2", True)  # no instance on node 1
    _backup(redis_client, 3, "*-*-* 04:00:00", "dok1", False)

    def sync() -> schedule.SyncResult:
        return schedule.sync_timers(redis_client, node_settings)

    result = sync()
    calls = _systemctl_calls(audit)
    with subtests.test("the first sync writes and starts backup 1's timer"):
        assert result.written == ("backup1.service", "backup1.timer")
        assert sorted(_files(systemd_node)) == ["backup1.service", "backup1.timer"]
        assert calls == [["daemon-reload"], ["enable", "--no-reload", "--now", "backup1.timer"]]
        assert systemd_node.show("backup1.timer", "ActiveState")["ActiveState"] == "active"

    # Nothing changed: no file written, systemd left alone.
    before = {p.name: p.stat().st_mtime_ns for p in systemd_node.unit_dir.iterdir()}
    result = sync()
    calls = _systemctl_calls(audit)
    with subtests.test("nothing changed: nothing written, systemd left alone"):
        assert result == schedule.SyncResult()
        assert calls == []
        assert {p.name: p.stat().st_mtime_ns for p in systemd_node.unit_dir.iterdir()} == before

    # A schedule change rewrites the timer only; systemd re-arms it on the one reload.
    redis_client.hset("cluster/backup/1", "schedule", "*-*-* 05:07:00")
    result = sync()
    calls = _systemctl_calls(audit)
    next_run = schedule.timer_rows(redis_client, node_settings)[0]["next"]
    _systemctl_calls(audit)  # (the list-timers just made)
    with subtests.test("a schedule change rewrites the timer, one reload"):
        assert (result.written, result.removed) == (("backup1.timer",), ())
        assert calls == [["daemon-reload"]]
        assert next_run is not None and next_run.endswith("T05:07:00+00:00")

    # Enabling backup 3 adds its two files and starts its timer.
    redis_client.hset("cluster/backup/3", "enabled", "1")
    result = sync()
    calls = _systemctl_calls(audit)
    with subtests.test("enabling backup 3 adds its files and starts its timer"):
        assert (result.written, result.removed) == (("backup3.service", "backup3.timer"), ())
        assert calls == [
            ["daemon-reload"],
            ["enable", "--no-reload", "--now", "backup3.timer"],
        ]

    # Disabling backup 1 stops its timer and removes its files, nothing else.
    redis_client.hset("cluster/backup/1", "enabled", "")
    result = sync()
    calls = _systemctl_calls(audit)
    with subtests.test("disabling backup 1 stops its timer and removes its files"):
        assert (result.written, result.removed) == ((), ("backup1.service", "backup1.timer"))
        assert sorted(_files(systemd_node)) == ["backup3.service", "backup3.timer"]
        assert calls == [
            ["disable", "--no-reload", "--now", "backup1.timer"],
            ["daemon-reload"],
        ]
        assert systemd_node.show("backup1.timer", "LoadState")["LoadState"] == "not-found"

    # Deleting backup 3 does the same for it.
    redis_client.delete("cluster/backup/3")
    result = sync()
    calls = _systemctl_calls(audit)
    with subtests.test("deleting backup 3 removes its timer"):
        assert (result.written, result.removed) == ((), ("backup3.service", "backup3.timer"))
        assert _files(systemd_node) == {}
        assert [c[0] for c in calls] == ["disable", "daemon-reload"]

    # A module moving to this node brings the timers of its backups.
    redis_client.hset("cluster/module_node", "wiki2", "1")
    result = sync()
    calls = _systemctl_calls(audit)
    with subtests.test("a module moving here brings its backups' timers"):
        assert result.written == ("backup2.service", "backup2.timer")
        assert [c[0] for c in calls] == ["daemon-reload", "enable"]
        rows = schedule.timer_rows(redis_client, node_settings)
        assert [(r["id"], r["active"], r["last"]) for r in rows] == [(2, True, None)]
        assert rows[0]["next"] is not None
        listed = systemd_node.exec("systemctl", "list-timers", "backup*", "--no-legend").stdout
        assert [line.split()[-2] for line in listed.splitlines()] == ["backup2.timer"]


def test_operator_units_are_never_touched(
    systemd_node: SystemdNode, node_settings: Settings, redis_client: redis.Redis
) -> None:
    mine = systemd_node.unit_dir / "backup9.timer"
    mine.write_text("[Timer]\nOnCalendar=daily\n")  # no "Generated by backup-agent" mark
    assert schedule.sync_timers(redis_client, node_settings) == schedule.SyncResult()
    assert mine.read_text() == "[Timer]\nOnCalendar=daily\n"
