"""Instances being added (cluster/module_pending): whose task added them, and their
removal once that task ended without completing them, so none stays half-made."""

from __future__ import annotations

import json
import logging

from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.runtime import tasks
from agent.runtime.task_input import parse_task

log = logging.getLogger("agent.recovery")


def pending_modules(redis: Redis) -> dict[str, dict[str, str]]:
    """Instances still being added, by module id: {agent, task, restore_uuid}."""
    found = {}
    for module_id, text in redis.hgetall(redis_keys.MODULE_PENDING).items():
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        found[module_id] = record if isinstance(record, dict) else {}
    return found


def modules_of_task(redis: Redis, agent_id: str, task_id: str) -> list[str]:
    """Instances the task was adding and had not completed."""
    return sorted(
        module_id
        for module_id, record in pending_modules(redis).items()
        if record.get("agent") == agent_id and record.get("task") == task_id
    )


def queue_removal_of_pending(
    redis: Redis, agent_id: str | None = None, task_id: str | None = None
) -> dict[str, str]:
    """Queue a cluster remove-module for each pending instance (of agent_id/task_id when
    given) whose owner is no longer running; returns module id → removal task id. One
    already queued is not queued again."""
    pending = sorted(
        (module_id, record)
        for module_id, record in pending_modules(redis).items()
        if task_id is None or (record.get("agent"), record.get("task")) == (agent_id, task_id)
    )
    queued = _queued_removals(redis) if pending else {}
    removals = {}
    for module_id, record in pending:
        if module_id in queued:
            removals[module_id] = queued[module_id]
            continue
        task = tasks.make_task(
            "remove-module",
            {"module_id": module_id, "preserve_data": False},
            str(record.get("task", "")),
        )
        redis.lpush(redis_keys.task_queue(redis_keys.CLUSTER), json.dumps(task))
        removals[module_id] = task["id"]
        log.warning(
            "%s was being added by task %s/%s, which ended without completing it: "
            "removing it (task %s)",
            module_id,
            record.get("agent", "?"),
            record.get("task", "?"),
            task["id"],
        )
    return removals


def _queued_removals(redis: Redis) -> dict[str, str]:
    found = {}
    for raw in tasks.queue_entries(redis, redis_keys.task_queue(redis_keys.CLUSTER)):
        task = parse_task(raw)  # never raises: any Redis client may have queued poison
        if isinstance(task, dict) and task["action"] == "remove-module":
            data = task.get("data")
            if isinstance(data, dict) and isinstance(data.get("module_id"), str):
                found[data["module_id"]] = str(task["id"])
    return found
