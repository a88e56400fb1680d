"""A queued task's raw JSON → a task dict, or the reason it cannot run (pure, bounded)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agent.records.tasks import QueuedTask, is_task_id

# Far above any real request (1000 restore paths of 4 KiB fit), far below what would
# strain the daemon: the JSON is parsed, logged, fed to steps and stored again.
MAX_TASK_CHARS = 8 << 20
# Real requests are a few levels deep; json, masking and schema checks recurse per level.
MAX_DATA_DEPTH = 64
# The id as api-cli queues it: the first member. Read only to record why a task failed.
_LEADING_ID = re.compile(r'\s*\{\s*"id"\s*:\s*"([A-Za-z0-9._-]{1,128})"')


@dataclass(frozen=True)
class Rejected:
    """A queue entry that cannot run; task_id when one could be read, to record the error."""

    task_id: str | None
    reason: str


def parse_task(raw: str) -> dict[str, Any] | Rejected:
    """The task in raw when it is a runnable one, else why not (never raises)."""
    if len(raw) > MAX_TASK_CHARS:
        return Rejected(
            _leading_id(raw), f"task too large: {len(raw)} characters (at most {MAX_TASK_CHARS})"
        )
    try:
        task = json.loads(raw)
    except RecursionError:
        return Rejected(_leading_id(raw), "task JSON nested too deeply to parse")
    except ValueError as exc:
        return Rejected(_leading_id(raw), f"task is not valid JSON: {str(exc)[:200]}")
    if not isinstance(task, dict):
        return Rejected(None, f"task is a JSON {type(task).__name__}, not an object")
    problem = QueuedTask.problem(task)
    task_id = task.get("id") if is_task_id(task.get("id")) else None
    if problem is not None:
        return Rejected(task_id, problem)
    assert isinstance(task_id, str)
    if nested_deeper_than(task.get("data"), MAX_DATA_DEPTH):
        return Rejected(task_id, f"task data nested deeper than {MAX_DATA_DEPTH} levels")
    return task


def nested_deeper_than(value: object, limit: int) -> bool:
    """True when value has more than limit levels of lists/objects (iterative: any depth)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children)
    return False


def _leading_id(raw: str) -> str | None:
    found = _LEADING_ID.match(raw[:400])
    return found.group(1) if found else None
