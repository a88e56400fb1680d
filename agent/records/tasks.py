"""A task as queued in <agent>/tasks and as recorded in task/<agent>/<id>/{context,
output, error, exit_code} (NS8's task protocol). Named tuples, not pydantic or dataclasses
(whose import costs api-cli ~17 ms): api-cli imports this (see agent/records/__init__.py)."""

from __future__ import annotations

import json
import uuid
from typing import Any, NamedTuple

from agent.adapters.redis_api import Pipeline, TaskClient
from agent.core import redis_keys
from agent.core.errors import StoredDataError

MAX_TASK_ID = 128


def is_task_id(value: object) -> bool:
    """A task id that is safe inside a Redis key: 1–128 printable characters, no '/'."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TASK_ID
        and value.isprintable()
        and "/" not in value
    )


class QueuedTask(NamedTuple):
    """The JSON a client pushes on an agent's queue (api-cli, NS8's agents, this agent)."""

    id: str
    action: str
    data: Any = None
    parent: Any = ""  # a task id, "" at the top; never used to find anything
    extra: Any = None  # NS8's task extra; new() and to_dict() make None {}

    @classmethod
    def new(cls, action: str, data: Any, parent: str = "", extra: Any = None) -> QueuedTask:
        return cls(
            id=str(uuid.uuid4()),
            action=action,
            data=data,
            parent=parent,
            extra=extra if extra is not None else {},
        )

    @classmethod
    def problem(cls, task: dict[str, Any]) -> str | None:
        """Why the decoded JSON of a queue entry is no task, None when it is one."""
        if not is_task_id(task.get("id")):
            return "task has no usable id"
        action = task.get("action")
        if not isinstance(action, str) or not action:
            return "task has no action name"
        return None

    def to_dict(self) -> dict[str, Any]:
        return self._asdict() | {"extra": {} if self.extra is None else self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


FIELDS = ("output", "error", "exit_code")


class TaskRecord(NamedTuple):
    """A finished task's result. The context (the masked task) is written apart and
    first: it marks the task as started."""

    output: str  # JSON when the action printed JSON, else its text
    error: str
    exit_code: int

    @classmethod
    def from_values(
        cls, agent_id: str, task_id: str, values: list[str | None]
    ) -> TaskRecord | None:
        """The record in the values of FIELDS as read; None while the task runs."""
        output, error, exit_code = values
        if exit_code is None:
            return None
        try:
            code = int(exit_code)
        except ValueError:
            key = redis_keys.task_field(agent_id, task_id, "exit_code")
            raise StoredDataError(key, f"exit code {exit_code[:40]!r} is not a number") from None
        return cls(output or "", error or "", code)

    @classmethod
    def from_redis(cls, redis: TaskClient, agent_id: str, task_id: str) -> TaskRecord | None:
        """The stored result, None while the task has not finished."""
        with redis.pipeline(transaction=False) as pipe:
            for name in FIELDS:
                pipe.get(redis_keys.task_field(agent_id, task_id, name))
            values = pipe.execute()
        return cls.from_values(agent_id, task_id, values)

    def to_redis(self, pipe: Pipeline, agent_id: str, task_id: str, context: str) -> None:
        """Queue the writes of the whole record, each key expiring with the task's TTL."""
        ttl = redis_keys.TASK_TTL_SECONDS
        pipe.set(redis_keys.task_field(agent_id, task_id, "context"), context, ex=ttl)
        pipe.set(redis_keys.task_field(agent_id, task_id, "output"), self.output, ex=ttl)
        pipe.set(redis_keys.task_field(agent_id, task_id, "error"), self.error, ex=ttl)
        pipe.set(redis_keys.task_field(agent_id, task_id, "exit_code"), self.exit_code, ex=ttl)
