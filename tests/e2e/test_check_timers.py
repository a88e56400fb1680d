"""The timers of a backup's integrity check and restore drill (issue #18), synced into a
real systemd: a check runs where the backup's modules are, a drill on one node only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import redis

from agent.core.settings import Settings
from agent.operations.cluster_setup import init
from agent.records.backups import CheckPolicy, DrillPolicy
from agent.runtime import timers as schedule
from tests.e2e.conftest import SystemdNode
from tests.support import backups

pytestmark = pytest.mark.podman


@pytest.fixture
def node_settings(
    systemd_node: SystemdNode, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> Settings:
    for unit in systemd_node.unit_dir.iterdir():
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


def test_check_and_drill_timers_follow_the_definition(
    systemd_node: SystemdNode, node_settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.hset("cluster/module_node", mapping={"wiki1": "1", "wiki2": "2"})
    redis_client.hset("cluster/environment", "NODE_ID", "1")
    destination = "48ce000a-79b7-5fe6-8558-177fd70c27b4"
    check = CheckPolicy(schedule="Sun *-*-* 04:00:00", read_data_subset="1/4")
    backups.add_backup(
        redis_client, 1, destination, ["wiki1"], check=check, drill=DrillPolicy(schedule="monthly")
    )
    # Backup 2's modules are all on node 2: its check is node 2's; its drill names node 2.
    backups.add_backup(
        redis_client,
        2,
        destination,
        ["wiki2"],
        check=check,
        drill=DrillPolicy(schedule="weekly", node=2),
    )
    result = schedule.sync_timers(redis_client, node_settings)
    assert result.written == (
        "backup1.service",
        "backup1.timer",
        "check1.service",
        "check1.timer",
        "drill1.service",
        "drill1.timer",
    )
    for timer in ("check1.timer", "drill1.timer"):
        assert systemd_node.show(timer, "ActiveState")["ActiveState"] == "active"
    service = (systemd_node.unit_dir / "check1.service").read_text()
    assert f"{node_settings.bin_dir / 'runagent'} -m node run-check --backup=1" in service
    drill = (systemd_node.unit_dir / "drill1.service").read_text()
    assert 'run run-drill --data "{\\"id\\": 1}"' in drill
    next_check = [r for r in _timer_states(systemd_node) if r[0] == "check1.timer"]
    assert next_check and next_check[0][1].startswith("Sun")

    # The check removed from the definition: its units go, the backup's and drill's stay.
    redis_client.hdel("cluster/backup/1", "check")
    result = schedule.sync_timers(redis_client, node_settings)
    assert result.removed == ("check1.service", "check1.timer")
    assert systemd_node.show("check1.timer", "LoadState")["LoadState"] == "not-found"
    assert systemd_node.show("drill1.timer", "ActiveState")["ActiveState"] == "active"


def _timer_states(node: SystemdNode) -> list[tuple[str, str]]:
    listed = node.exec("systemctl", "list-timers", "--all", "--no-legend").stdout
    rows = []
    for line in listed.splitlines():
        words = line.split()
        units = [w for w in words if w.endswith(".timer")]
        if units:
            rows.append((units[0], line.strip()))
    return rows
