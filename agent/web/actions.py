"""The console's way to act: the same validation models as the actions, then a real task."""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic

from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.errors import UnknownAgent, ValidationFailed
from agent.core.masking import mask_secrets
from agent.core.models import Request
from agent.core.schema_table import SCHEMAS
from agent.runtime import tasks
from agent.runtime.steps import pydantic_errors

ACTION_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
WAIT_SECONDS = 3600.0


def model_for(agent_id: str, action: str) -> type[Request] | None:
    """The model whose schema is the action's validate-input.json, if it has one."""
    kind = redis_keys.AgentId.parse(agent_id).kind
    if kind == "module":
        return SCHEMAS.get(f"imageroot/actions/{action}/validate-input.json")
    return SCHEMAS.get(f"actions/{kind}/{action}/validate-input.json")


def check_request(agent_id: str, action: str, data: Any) -> None:
    """Refuse what the action's own validation would refuse, before anything is queued;
    ValidationFailed carries the NS8-style rows."""
    try:
        redis_keys.AgentId.parse(agent_id)
    except redis_keys.NotAnAgentId as exc:
        raise UnknownAgent(str(exc)) from None
    if not ACTION_NAME.fullmatch(action):
        raise ValidationFailed(
            [{"field": "action", "parameter": "action", "value": action, "error": "action_invalid"}]
        )
    model = model_for(agent_id, action)
    if model is None:
        return
    try:
        model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationFailed(pydantic_errors(exc)) from None


def submit(redis: Redis, agent_id: str, action: str, data: Any) -> str:
    """Validate, then queue as a task (the daemon validates and runs it as api-cli's)."""
    check_request(agent_id, action, data)
    return tasks.submit(redis, tasks.TaskRequest(agent_id, action, data))


def run(redis: Redis, agent_id: str, action: str, data: Any = None) -> tasks.TaskResult:
    """Validate, queue and wait for the result (blocking: call it from a worker thread)."""
    check_request(agent_id, action, data)
    return tasks.run(redis, tasks.TaskRequest(agent_id, action, data), timeout=WAIT_SECONDS)


def result_json(result: tasks.TaskResult) -> dict[str, Any]:
    return {
        "agent": result.agent_id,
        "task": result.task_id,
        "exit_code": result.exit_code,
        "output": result.output,
        "error": result.error,
    }


def running_tasks(redis: Redis) -> list[dict[str, Any]]:
    """Tasks a daemon has claimed and not finished, secrets masked, queues in name order."""
    rows = []
    for key in sorted(redis.scan_iter(match=redis_keys.TASK_PROCESSING_PATTERN, count=500)):
        agent_id = redis_keys.agent_of_processing(key)
        for raw in tasks.queue_entries(redis, key, 200):
            try:
                task = json.loads(raw)
                rows.append(
                    {
                        "agent": agent_id,
                        "task": str(task["id"]),
                        "action": str(task["action"]),
                        "data": mask_secrets(task.get("data")),
                    }
                )
            except (ValueError, KeyError, TypeError):
                continue
    return rows
