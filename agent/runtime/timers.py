"""Backup timers: the enabled backups with instances on this node become systemd timers
(rendered, written, enabled), kept in step with Redis by the daemon (TimerKeeper)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.adapters import systemd
from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.errors import StoredDataError
from agent.core.settings import Settings
from agent.records.backups import BackupDefinition, backup_ids

log = logging.getLogger("agent.schedule")

SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(): systemd is PID 1


@dataclass(frozen=True)
class SyncResult:
    """What one sync changed: unit files written and removed, timers enabled/disabled."""

    written: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    reloaded: bool = False


def timers_wanted(settings: Settings) -> bool:
    """Timers on: settings say so, or "auto" and systemd runs this machine."""
    if settings.timers == "auto":
        return SYSTEMD_RUNNING.is_dir()
    return settings.timers == "on"


def systemctl_command(settings: Settings) -> list[str]:
    return shlex.split(settings.systemctl)


def node_units(settings: Settings) -> systemd.NodeUnits:
    return systemd.NodeUnits(
        agent_root=str(settings.root),
        runagent=str(settings.bin_dir / "runagent"),
        randomized_delay=settings.timer_random_delay,
    )


def _enabled_backups(redis: Redis) -> list[BackupDefinition]:
    found = []
    for backup_id in backup_ids(redis):
        try:
            backup = BackupDefinition.from_redis(redis, backup_id)
        except StoredDataError as exc:  # one bad definition must not stop the others' timers
            log.error("%s", exc)
            continue
        if backup is not None and backup.enabled:
            found.append(backup)
    return found


def node_schedules(redis: Redis, node_id: int) -> list[systemd.BackupSchedule]:
    """Enabled backups with at least one instance on node_id, by id."""
    module_node: dict[str, str] = redis.hgetall(redis_keys.MODULE_NODE)
    return [
        systemd.BackupSchedule(backup.id, backup.name, backup.schedule)
        for backup in _enabled_backups(redis)
        if backup.schedule
        and any(module_node.get(module) == str(node_id) for module in backup.instances)
    ]


def node_jobs(redis: Redis, node_id: int) -> list[systemd.JobSchedule]:
    """The checks and drills this node's timers run. A check runs where the backup runs
    (each node checks the repositories of its own modules); a drill, a cluster action,
    from one node only: the drill's node, else the leader's."""
    module_node: dict[str, str] = redis.hgetall(redis_keys.MODULE_NODE)
    leader = redis.hget(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID") or "1"
    jobs = []
    for backup in _enabled_backups(redis):
        here = any(module_node.get(module) == str(node_id) for module in backup.instances)
        if backup.check is not None and backup.check.schedule and here:
            jobs.append(systemd.JobSchedule("check", backup.id, backup.name, backup.check.schedule))
        if backup.drill is not None and backup.drill.schedule:
            runner = str(backup.drill.node) if backup.drill.node else leader
            if runner == str(node_id):
                jobs.append(
                    systemd.JobSchedule("drill", backup.id, backup.name, backup.drill.schedule)
                )
    return jobs


def render_node_units(
    schedules: list[systemd.BackupSchedule],
    settings: Settings,
    jobs: list[systemd.JobSchedule] | None = None,
) -> dict[str, str]:
    """Every unit file this node should have: name → text (pure but for the settings)."""
    units: dict[str, str] = {}
    node = node_units(settings)
    templates = settings.share / "systemd"  # resolved once: share_dir() stats the disk
    for backup in schedules:
        try:
            units.update(systemd.render_backup_units(backup, node, templates))
        except Exception as exc:  # one bad definition must not stop the others' timers
            log.error("backup %s: cannot render its units: %s", backup.backup_id, exc)
    for job in jobs or ():
        try:
            units.update(systemd.render_job_units(job, node, templates))
        except Exception as exc:  # one bad definition must not stop the others' timers
            log.error("backup %s: cannot render its %s units: %s", job.backup_id, job.kind, exc)
    return units


@contextlib.contextmanager
def _sync_lock(settings: Settings) -> Iterator[None]:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / "timers.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def apply_units(wanted: dict[str, str], settings: Settings, start_all: bool = False) -> SyncResult:
    """Make the unit dir hold exactly wanted (of our backup units); reload systemd once.

    start_all (daemon start): also enable and start timers whose files did not change, in
    case a previous run stopped between writing a file and starting its timer."""
    directory = Path(settings.unit_dir)
    systemctl = systemctl_command(settings)
    current = systemd.generated_backup_units(directory)
    write = sorted(name for name, text in wanted.items() if current.get(name) != text)
    remove = sorted(set(current) - set(wanted))
    if not write and not remove:
        timers = sorted(n for n in wanted if n.endswith(".timer"))
        if start_all and timers:
            systemd.run_systemctl(systemd.enable_now_argv(systemctl, timers))
        return SyncResult(enabled=tuple(timers) if start_all else ())
    new_timers = sorted(n for n in write if n.endswith(".timer") and n not in current)
    old_timers = sorted(n for n in remove if n.endswith(".timer"))
    if old_timers:
        systemd.run_systemctl(systemd.disable_now_argv(systemctl, old_timers))
    for name in remove:
        (directory / name).unlink(missing_ok=True)
    systemd.write_unit_files(directory, {name: wanted[name] for name in write})
    systemd.run_systemctl(systemd.daemon_reload_argv(systemctl))
    if start_all:
        new_timers = sorted(n for n in wanted if n.endswith(".timer"))
    if new_timers:
        systemd.run_systemctl(systemd.enable_now_argv(systemctl, new_timers))
    log.info("timers: wrote %s, removed %s", ", ".join(write) or "-", ", ".join(remove) or "-")
    return SyncResult(tuple(write), tuple(remove), tuple(new_timers), tuple(old_timers), True)


def sync_timers(redis: Redis, settings: Settings, start_all: bool = False) -> SyncResult:
    """Render this node's backup units from Redis and apply them."""
    with _sync_lock(settings):
        schedules = node_schedules(redis, settings.node_id)
        jobs = node_jobs(redis, settings.node_id)
        return apply_units(render_node_units(schedules, settings, jobs), settings, start_all)


class TimerKeeper:
    """The daemon's side: sync on start and on events; never let a failure stop it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.active = timers_wanted(settings)
        if not self.active:
            log.info(
                "backup timers are off on this node (timers=%s; systemd is %s): scheduled "
                "backups will not run here",
                settings.timers,
                "running" if SYSTEMD_RUNNING.is_dir() else "not running",
            )

    def sync(self, redis: Redis, start_all: bool = False) -> SyncResult | None:
        if not self.active:
            return None
        try:
            return sync_timers(redis, self.settings, start_all)
        except Exception:  # the daemon must keep serving tasks; the next event retries
            log.exception("cannot sync the backup timers")
            return None


def timer_rows(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """Next and last run of this node's backups, as systemd reports them."""
    schedules = node_schedules(redis, settings.node_id)
    if not schedules:
        return []
    units = [systemd.timer_unit(b.backup_id) for b in schedules]
    states: dict[str, systemd.TimerState] = {}
    if timers_wanted(settings):
        argv = systemd.list_timers_argv(systemctl_command(settings), units)
        states = systemd.parse_list_timers(systemd.run_systemctl(argv))
    rows = []
    for backup, unit in zip(schedules, units, strict=True):
        state = states.get(unit)
        rows.append(
            {
                "id": backup.backup_id,
                "name": backup.name,
                "schedule": backup.schedule,
                "timer": unit,
                "active": state is not None and state.next is not None,
                "next": state.next if state else None,
                "last": state.last if state else None,
            }
        )
    return rows


def format_timer_table(rows: list[dict[str, Any]]) -> str:
    """`agent timers`: one line per backup timer."""
    lines = [f"{'ID':>4}  {'TIMER':<16} {'NEXT':<26} {'LAST':<26} SCHEDULE"]
    for row in rows:
        lines.append(
            f"{row['id']:>4}  {row['timer']:<16} {row['next'] or '-':<26} "
            f"{row['last'] or '-':<26} {row['schedule']}"
        )
    return "\n".join(lines)
