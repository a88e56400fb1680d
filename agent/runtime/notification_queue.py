"""Handing messages to the leader's send-notification task: never raises, never waits.

A message that could not be queued is logged; the backup's own outcome stands.
"""

from __future__ import annotations

import logging

from agent.adapters import healthchecks
from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.records.backups import BackupSecrets
from agent.records.run_report import RunReport, as_task_data, ping_task_data
from agent.runtime import tasks

log = logging.getLogger("agent.notifications")
SEND_ACTION = "send-notification"
TARGETS = redis_keys.NOTIFICATION_TARGET_PATTERN


def _has_targets(redis: Redis) -> bool:
    return next(redis.scan_iter(match=TARGETS, count=1000), None) is not None


def queue_ping(redis: Redis, backup_id: int, ping: healthchecks.Ping, parent: str = "") -> None:
    """Queue one ping of the backup's ping_url, if it has one; never raises, never waits."""
    try:
        if not BackupSecrets.from_redis(redis, backup_id).ping_url:
            return
        data = ping_task_data(backup_id, ping)
        request = tasks.TaskRequest(redis_keys.CLUSTER, SEND_ACTION, data, parent)
        tasks.submit(redis, request, check=False)
    except Exception as exc:
        log.warning("backup %s: ping %s was not queued: %s", backup_id, ping, exc)


def queue_message(redis: Redis, event: str, backup_id: int, title: str, body: str) -> None:
    """Queue a message that is not a run's report (overdue, back on schedule)."""
    data = {"event": event, "backup_id": backup_id, "title": title, "body": body}
    try:
        if not _has_targets(redis):
            return
        tasks.submit(redis, tasks.TaskRequest(redis_keys.CLUSTER, SEND_ACTION, data), check=False)
    except Exception as exc:
        log.warning("backup %s: %s message was not queued: %s", backup_id, event, exc)


def queue_report(redis: Redis, report: RunReport, parent: str = "") -> None:
    """Queue a run's report for the targets that want its event."""
    try:
        if not _has_targets(redis):
            return  # nobody listens: no task at all
        tasks.submit(
            redis,
            tasks.TaskRequest(
                redis_keys.CLUSTER, SEND_ACTION, as_task_data(report.event, report), parent
            ),
            check=False,
        )
    except Exception as exc:
        log.warning("backup %s: the run's report was not queued: %s", report.backup_id, exc)
