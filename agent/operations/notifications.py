"""Notification targets (add/alter/remove/list/test) and the sending of run reports."""

from __future__ import annotations

import logging
from typing import Any

from agent.adapters import apprise_client, healthchecks
from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.errors import ActionFailed, validation_error
from agent.core.models import (
    AlterNotificationTargetRequest,
    NoInput,
    NotificationNameRequest,
    NotificationTargetRequest,
)
from agent.records import notification_targets
from agent.records.backups import BackupSecrets
from agent.records.notification_targets import Target
from agent.records.run_report import SendNotificationRequest, render
from agent.runtime.steps import Step

log = logging.getLogger("agent.notifications")
LEVELS: dict[str, apprise_client.Level] = {
    "success": "success",
    "partial": "warning",
    "failure": "failure",
    "overdue": "warning",
    "report": "info",
}


def _check_url(url: str) -> None:
    if not apprise_client.is_supported(url):
        raise validation_error("url", "url_not_supported", exit_code=10)


def _existing(redis: Redis, name: str) -> Target:
    target = notification_targets.load(redis, name)
    if target is None:
        raise validation_error("name", "notification_target_not_found", name)
    return target


def add_notification_target(step: Step, request: NotificationTargetRequest) -> Any:
    redis = step.ctx.redis
    if redis.exists(redis_keys.notification_target(request.name)):
        raise validation_error("name", "notification_target_exists", request.name)
    _check_url(request.url)
    target = Target(
        request.name, request.url, tuple(dict.fromkeys(request.events)), tuple(request.backups)
    )
    notification_targets.save(redis, target)
    return target.listing()


def alter_notification_target(step: Step, request: AlterNotificationTargetRequest) -> Any:
    redis = step.ctx.redis
    current = _existing(redis, request.name)
    url = request.url or current.url
    if request.url:
        _check_url(url)
    target = Target(request.name, url, tuple(dict.fromkeys(request.events)), tuple(request.backups))
    notification_targets.save(redis, target)
    return target.listing()


def remove_notification_target(step: Step, request: NotificationNameRequest) -> Any:
    if not notification_targets.remove(step.ctx.redis, request.name):
        raise validation_error("name", "notification_target_not_found", request.name)
    return None


def list_notification_targets(step: Step, _request: NoInput) -> Any:
    return [t.listing() for t in notification_targets.load_all(step.ctx.redis)]


def test_notification_target(step: Step, request: NotificationNameRequest) -> Any:
    target = _existing(step.ctx.redis, request.name)
    result = apprise_client.send(
        target.url,
        "Test message from the backup agent",
        f"Notification target {target.name!r} works: this is a test, nothing happened.",
    )
    notification_targets.record_delivery(
        step.ctx.redis, target.name, "test", result.ok, result.error
    )
    if not result.ok:
        raise ActionFailed(f"{target.name}: {result.error}", 1, {"sent": False})
    return {"sent": True}


def send_notification(step: Step, request: SendNotificationRequest) -> Any:
    """Send the report to every target that wants it; each delivery is recorded."""
    redis = step.ctx.redis
    if request.ping is not None and request.backup_id is not None:
        return send_ping(redis, request.backup_id, request.ping)
    if request.report is not None:
        backup_id = request.report.backup_id
        title, body = render(request.report)
    else:  # the model lets only a whole message (overdue, a failed drill) through here
        assert request.backup_id is not None and request.title and request.body is not None
        backup_id, title, body = request.backup_id, request.title, request.body
    sent, failed = [], []
    for target in notification_targets.load_all(redis):
        if not target.wants(request.event, backup_id):
            continue
        result = apprise_client.send(target.url, title, body, LEVELS[request.event])
        notification_targets.record_delivery(
            redis, target.name, request.event, result.ok, result.error
        )
        if result.ok:
            sent.append(target.name)
        else:
            failed.append({"name": target.name, "error": result.error})
    output = {"event": request.event, "sent": sent, "failed": failed}
    if failed:
        names = ", ".join(f["name"] for f in failed)
        raise ActionFailed(f"could not notify {names}", 1, output)
    return output


def send_ping(redis: Redis, backup_id: int, ping: healthchecks.Ping) -> Any:
    url = BackupSecrets.from_redis(redis, backup_id).ping_url
    if not url:
        return {"ping": ping, "sent": False, "reason": "the backup has no ping_url"}
    result = healthchecks.send_ping(url, ping)
    if not result.ok:
        raise ActionFailed(f"backup {backup_id}: {result.error}", 1, {"ping": ping, "sent": False})
    return {"ping": ping, "sent": True}
