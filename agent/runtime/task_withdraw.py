"""Cancelling a task that no worker has claimed yet: it leaves its queue and never runs."""

from __future__ import annotations

from typing import Any, NamedTuple

from agent.adapters.redis_api import BinaryRedis
from agent.core import redis_keys

CANCEL_ACTION = "cancel-task"
NOT_STARTED = "cancelled before it started\n"


class Withdrawn(NamedTuple):
    """A task taken out of its queue: the exact queued JSON and what it holds."""

    raw: str
    task: dict[str, Any]


def jumps_the_queue(action: str) -> bool:
    """True for actions queued at the end workers claim from: a cancel must reach the
    daemon before the task it cancels, which may still be waiting in the same queue."""
    return action == CANCEL_ACTION


def find_queued(entries: list[bytes], task_id: str) -> Withdrawn | None:
    """The runnable entry whose id is task_id (hostile entries are skipped, never raised)."""
    from agent.runtime.task_input import Rejected, parse_task  # api-cli never withdraws

    needle = task_id.encode()
    for entry in entries:
        if needle not in entry:
            continue
        try:
            raw = entry.decode()
        except UnicodeDecodeError:
            continue
        task = parse_task(raw)
        if not isinstance(task, Rejected) and task["id"] == task_id:
            return Withdrawn(raw, task)
    return None


def withdraw_queued(binary: BinaryRedis, agent_id: str, task_id: str) -> Withdrawn | None:
    """Remove task_id from agent_id's queue; None when it is not there (or a worker claimed
    it meanwhile: LREM of the exact entry and the worker's BLMOVE cannot both take it)."""
    queue = redis_keys.task_queue(agent_id)
    found = find_queued(binary.lrange(queue, 0, -1), task_id)
    if found is None or not binary.lrem(queue, 1, found.raw.encode()):
        return None
    return found
