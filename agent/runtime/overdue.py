"""Overdue detection: a module with no good snapshot since a scheduled time, plus grace.

The leader's daemon runs monitor(): every overdue_check_seconds it reads each enabled
backup's schedule and each module's newest good run from every node's status, asks
systemd's own calendar arithmetic when the schedule fell due since then, and keeps the
verdict in cluster/backup_watch/<id>. A module turning overdue is announced once, and its
recovery once. It needs no timer and no node: a stopped timer, a node that is down and a
module that never ran all look the same here, as a snapshot that does not come.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.adapters import proc, systemd
from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.errors import StoredDataError
from agent.core.settings import Settings
from agent.records.backup_status import write_atomic
from agent.records.backups import BackupDefinition, backup_ids, read_backups
from agent.records.statuses import StatusRecord
from agent.runtime import notification_queue

log = logging.getLogger("agent.overdue")
CACHE_LIMIT = 10000


@dataclass(frozen=True)
class Watch:
    """What the monitor knows of one module in one backup (the stored JSON)."""

    since: int  # when the monitor first saw the module in the backup
    last_success: int  # end of the newest good (ok or partial) run, 0 when none
    due: float | None  # the first scheduled time after last_success (or since, if none)
    next_run: float | None  # the next scheduled time after now
    overdue: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Watch | None:
        try:
            data = json.loads(text or "")
            return cls(
                since=int(data["since"]),
                last_success=int(data["last_success"]),
                due=None if data["due"] is None else float(data["due"]),
                next_run=None if data["next_run"] is None else float(data["next_run"]),
                overdue=bool(data["overdue"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


class Calendar:
    """The next elapse of a schedule after a base time, from systemd-analyze, memoised:
    the answer for one (schedule, base) never changes."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int], float | None] = {}

    def next_after(self, schedule: str, base: float) -> float | None:
        key = (schedule, int(base))
        if key not in self._known:
            if len(self._known) > CACHE_LIMIT:
                self._known.clear()
            self._known[key] = self._ask(schedule, base)
        return self._known[key]

    @staticmethod
    def _ask(schedule: str, base: float) -> float | None:
        try:
            result = proc.run(systemd.calendar_argv(schedule, base), timeout=10, env={"TZ": "UTC"})
        except (OSError, proc.TimeoutExpired) as exc:
            log.warning("cannot ask systemd-analyze about %r: %s", schedule, exc)
            return None
        if result.returncode != 0:
            return None
        elapses = systemd.parse_calendar_elapses(result.text)
        return elapses[0] if elapses else None


def assess(
    schedule: str,
    previous: Watch | None,
    last_success: int,
    now: float,
    late_after: float,
    calendar: Calendar,
) -> Watch:
    """The module's verdict now: overdue once `late_after` seconds have passed since the
    first scheduled time that no good run has followed."""
    since = previous.since if previous is not None else int(now)
    # A module never backed up is late from the first scheduled time after it was seen.
    due = calendar.next_after(schedule, last_success or since)
    return Watch(
        since=since,
        last_success=last_success,
        due=due,
        next_run=calendar.next_after(schedule, now),
        overdue=due is not None and now > due + late_after,
    )


def newest_success(redis: Redis, backup_id: int, nodes: list[int]) -> dict[str, int]:
    """Module id → end of its newest good run on any node."""
    with redis.pipeline(transaction=False) as pipe:
        for node in nodes:
            pipe.hgetall(redis_keys.backup_status(node, backup_id))
        per_node = pipe.execute()
    newest: dict[str, int] = {}
    for node, statuses in zip(nodes, per_node, strict=True):
        for module_id, text in statuses.items():
            key = redis_keys.backup_status(node, backup_id)
            try:
                value = StatusRecord.from_json(f"{key} [{module_id}]", text).last_success
            except StoredDataError as exc:  # one bad record must not hide the others
                log.warning("overdue check: %s", exc)
                continue
            newest[module_id] = max(newest.get(module_id, 0), value)
    return newest


Announce = Callable[[Redis, str, int, str, str], None]


def check(
    redis: Redis,
    settings: Settings,
    calendar: Calendar,
    now: float | None = None,
    announce: Announce = notification_queue.queue_message,
) -> dict[int, dict[str, Watch]]:
    """One look at every backup: store the verdicts, announce the changes, return them."""
    now = time.time() if now is None else now
    late_after = settings.overdue_grace_seconds + settings.timer_random_delay
    nodes = sorted(int(n) for n in redis.smembers(redis_keys.CLUSTER_NODES))
    ids = backup_ids(redis)
    verdicts: dict[int, dict[str, Watch]] = {}
    for backup_id in ids:
        try:
            definition = BackupDefinition.from_redis(redis, backup_id)
        except StoredDataError as exc:  # one malformed definition must not blind the others
            log.warning("overdue check: %s", exc)
            continue
        watch_key = redis_keys.backup_watch(backup_id)
        stored = redis.hgetall(watch_key)
        if definition is None or not definition.enabled or not definition.schedule:
            redis.delete(watch_key)  # disabled: nothing is late, and a re-enable starts afresh
            continue
        successes = newest_success(redis, backup_id, nodes)
        modules = list(dict.fromkeys(definition.instances))
        current = {
            m: assess(
                definition.schedule,
                Watch.from_json(stored.get(m)),
                successes.get(m, 0),
                now,
                late_after,
                calendar,
            )
            for m in modules
        }
        name = definition.display_name
        for module_id, watch in current.items():
            before = Watch.from_json(stored.get(module_id))
            if watch.overdue != (before.overdue if before is not None else False):
                announce(redis, "overdue", backup_id, *describe(name, backup_id, module_id, watch))
        with redis.pipeline(transaction=True) as pipe:
            gone = [m for m in stored if m not in current]
            if gone:
                pipe.hdel(watch_key, *gone)
            if current:
                pipe.hset(watch_key, mapping={m: w.to_json() for m, w in current.items()})
            pipe.execute()
        verdicts[backup_id] = current
    wanted = {redis_keys.backup_watch(i) for i in ids}
    for key in redis.scan_iter(match=redis_keys.BACKUP_WATCH_PATTERN, count=1000):
        if key not in wanted:
            redis.delete(key)  # its backup was removed
    return verdicts


def _moment(epoch: float | None) -> str:
    if not epoch:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(name: str, backup_id: int, module_id: str, watch: Watch) -> tuple[str, str]:
    """(title, body) of an overdue or back-on-schedule message."""
    if watch.overdue:
        title = f"Backup {backup_id} {name!r}: {module_id} is overdue"
        body = (
            f"{module_id} has no good snapshot since {_moment(watch.last_success)}; "
            f"a backup was due at {_moment(watch.due)}. Next scheduled run: "
            f"{_moment(watch.next_run)}."
        )
    else:
        title = f"Backup {backup_id} {name!r}: {module_id} is back on schedule"
        body = f"{module_id} has a good snapshot of {_moment(watch.last_success)}."
    return title, body


def render_prometheus(verdicts: dict[int, dict[str, Watch]], names: dict[int, str]) -> str:
    lines = [
        "# HELP node_backup_overdue 1 when the module has no good snapshot since a scheduled "
        "time plus the grace period",
        "# TYPE node_backup_overdue gauge",
    ]
    stamps = [
        "# HELP node_backup_last_snapshot_timestamp_seconds End of the module's newest good run",
        "# TYPE node_backup_last_snapshot_timestamp_seconds gauge",
    ]
    for backup_id, watches in sorted(verdicts.items()):
        name = names.get(backup_id, "").replace("\\", "\\\\").replace('"', '\\"')
        for module_id, watch in sorted(watches.items()):
            labels = f'id="{backup_id}",name="{name}",module="{module_id}"'
            lines.append(f"node_backup_overdue{{{labels}}} {int(watch.overdue)}")
            stamps.append(
                f"node_backup_last_snapshot_timestamp_seconds{{{labels}}} {watch.last_success}"
            )
    return "\n".join(lines + stamps) + "\n"


def prometheus_path(settings: Settings) -> Path:
    node_state = settings.state_dir(redis_keys.node_agent(settings.node_id))
    return node_state / "node_exporter" / "backup_overdue.prom"


def monitor(
    redis: Redis, settings: Settings, stopping: threading.Event, is_leader: Callable[[], bool]
) -> None:
    """The leader's loop; an error in one look is logged and the next look happens."""
    calendar = Calendar()
    while not stopping.wait(settings.overdue_check_seconds):
        try:
            if not is_leader():
                continue
            verdicts = check(redis, settings, calendar)
            names = {d.id: d.display_name for d in read_backups(redis, list(verdicts))}
            write_atomic(prometheus_path(settings), render_prometheus(verdicts, names))
        except Exception as exc:  # Redis away, a malformed record: look again next time
            log.warning("overdue check failed: %s", exc)
