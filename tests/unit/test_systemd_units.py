"""Rendered systemd units: golden files, `systemd-analyze verify`, escaping, argv builders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.adapters import systemd
from agent.core.errors import AgentError

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "systemd"
GOLDEN = Path(__file__).parent / "golden" / "systemd"
NODE = systemd.NodeUnits(
    agent_root="/var/lib/backup-agent", runagent="/usr/local/bin/runagent", randomized_delay=600
)
CASES = {
    "daily": systemd.BackupSchedule(1, "mybackup", "daily"),
    "weekday-time": systemd.BackupSchedule(12, "Nightly 100% of it", "Mon *-*-* 03:00"),
}

JOBS = (
    systemd.JobSchedule("check", 1, "mybackup", "Sun *-*-* 04:00"),
    systemd.JobSchedule("drill", 12, "Nightly 100% of it", "monthly"),
)


def _rendered() -> dict[str, str]:
    files: dict[str, str] = {}
    for backup in CASES.values():
        files.update(systemd.render_backup_units(backup, NODE, TEMPLATES))
    for job in JOBS:
        files.update(systemd.render_job_units(job, NODE, TEMPLATES))
    files["agent.service"] = systemd.render_agent_service(
        "/usr/local/bin/agent", "/var/lib/backup-agent", TEMPLATES
    )
    return files


@pytest.mark.parametrize("name", sorted(_rendered()))
def test_units_match_golden_files(name: str) -> None:
    text = _rendered()[name]
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{name} differs; UPDATE_GOLDEN=1 rewrites the goldens"


def test_no_stale_golden_files() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(_rendered())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants ExecStart's binary to exist: use this venv's real scripts.
    bin_dir = Path(sys.executable).parent
    node = systemd.NodeUnits(str(tmp_path / "root dir"), str(bin_dir / "runagent"), 0)
    names = []
    for backup in CASES.values():
        for name, text in systemd.render_backup_units(backup, node, TEMPLATES).items():
            (tmp_path / name).write_text(text)
            names.append(name)
    for job in JOBS:
        for name, text in systemd.render_job_units(job, node, TEMPLATES).items():
            (tmp_path / name).write_text(text)
            names.append(name)
    agent_service = systemd.render_agent_service(str(bin_dir / "agent"), "/srv/n", TEMPLATES)
    (tmp_path / "agent.service").write_text(agent_service)
    names.append("agent.service")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    # Unknown keys and unparsable values are only warnings: any output is a failure too.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_timer_keeps_the_schedule_and_persists() -> None:
    units = systemd.render_backup_units(CASES["weekday-time"], NODE, TEMPLATES)
    timer = units["backup12.timer"].splitlines()
    assert "OnCalendar=Mon *-*-* 03:00" in timer
    assert "Persistent=true" in timer
    assert "FixedRandomDelay=true" in timer
    assert "RandomizedDelaySec=600" in timer
    service = units["backup12.service"].splitlines()
    assert "ExecStart=/usr/local/bin/runagent -m node run-backup --backup=12" in service
    assert "Environment=AGENT_ROOT=/var/lib/backup-agent" in service


def test_spaces_and_percent_are_escaped() -> None:
    node = systemd.NodeUnits('/srv/my "node"', "/opt/x y/runagent", 0)
    units = systemd.render_backup_units(CASES["weekday-time"], node, TEMPLATES)
    service = units["backup12.service"].splitlines()
    assert 'Environment="AGENT_ROOT=/srv/my \\"node\\""' in service
    assert 'ExecStart="/opt/x y/runagent" -m node run-backup --backup=12' in service
    assert "Description=Backup 12 (Nightly 100%% of it)" in service


@pytest.mark.parametrize(
    "backup",
    [
        systemd.BackupSchedule(3, "x\nExecStartPre=/bin/evil", "daily"),
        systemd.BackupSchedule(3, "x", "daily\nOnCalendar=minutely"),
    ],
)
def test_control_characters_are_refused(backup: systemd.BackupSchedule) -> None:
    with pytest.raises(AgentError):
        systemd.render_backup_units(backup, NODE, TEMPLATES)


def test_systemctl_argv() -> None:
    ctl = ["podman", "exec", "node1", "systemctl"]
    assert systemd.daemon_reload_argv(ctl) == [*ctl, "daemon-reload"]
    assert systemd.enable_now_argv(ctl, ["backup1.timer"]) == [
        *ctl, "enable", "--no-reload", "--now", "backup1.timer"
    ]  # fmt: skip
    assert systemd.disable_now_argv(["systemctl"], ["a.timer", "b.timer"]) == [
        "systemctl", "disable", "--no-reload", "--now", "a.timer", "b.timer"
    ]  # fmt: skip
    listed = systemd.list_timers_argv(["systemctl"], ["backup1.timer"])
    assert listed == ["systemctl", "list-timers", "--all", "--output=json", "backup1.timer"]


def test_parse_list_timers() -> None:
    text = (
        '[{"next":1795324020000000,"left":1795324020000000,"last":0,"passed":0,'
        '"unit":"backup1.timer","activates":"backup1.service"},'
        '{"next":0,"left":0,"last":1700000000123456,"passed":5,"unit":"backup2.timer"}]'
    )
    states = systemd.parse_list_timers(text)
    assert states["backup1.timer"] == systemd.TimerState(
        "backup1.timer", "2026-11-22T05:07:00+00:00", None
    )
    assert states["backup2.timer"].next is None
    assert states["backup2.timer"].last == "2023-11-14T22:13:20+00:00"
    assert systemd.parse_list_timers("") == {}
    with pytest.raises(AgentError):
        systemd.parse_list_timers("Sun 2026-11-22")


def test_generated_units_and_atomic_write(tmp_path: Path) -> None:
    systemd.write_unit_file(tmp_path, "backup1.timer", systemd.GENERATED_MARK + " x\n")
    (tmp_path / "backup2.timer").write_text("# an operator's own unit\n")
    (tmp_path / "other.service").write_text(systemd.GENERATED_MARK + "\n")
    assert list(systemd.generated_backup_units(tmp_path)) == ["backup1.timer"]
    assert (tmp_path / "backup1.timer").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "backup1.timer", "backup2.timer", "other.service"
    ]  # fmt: skip
