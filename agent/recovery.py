"""What a killed daemon left behind: its tasks' processes (stopped, so a task is never run
twice at once) and the instances its tasks were adding (removed, so none is half-made)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from agent import redis_keys, tasks, warmsteps
from agent.operations.modules import pending_modules
from agent.redis_api import Redis
from agent.task_input import parse_task

log = logging.getLogger("agent.recovery")


def processes_of_tasks(
    task_ids: Sequence[str], warm_registry: Path | None = None
) -> dict[str, list[int]]:
    """Pids of live processes whose environment carries AGENT_TASK_ID=<id>, plus the
    steps forked by the warm helper (their environ is the helper's), for each of task_ids."""
    markers = {f"AGENT_TASK_ID={task_id}".encode(): task_id for task_id in task_ids}
    found = {
        task_id: warmsteps.registered_processes(warm_registry, task_id) if warm_registry else []
        for task_id in task_ids
    }
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for variable in environ.split(b"\0"):
            task_id = markers.get(variable)
            if task_id is not None and int(entry.name) not in found[task_id]:
                found[task_id].append(int(entry.name))
    return found


def _alive(task_ids: Sequence[str], warm_registry: Path | None) -> list[int]:
    return [pid for pids in processes_of_tasks(task_ids, warm_registry).values() for pid in pids]


# A step told to stop records what it was doing (the module's failed status) and cleans up
# (a restic unlock: one more container, seconds on a busy node) before it exits.
STOP_GRACE_SECONDS = 30.0


def kill_task_processes(
    task_ids: Sequence[str],
    warm_registry: Path | None = None,
    grace_seconds: float = STOP_GRACE_SECONDS,
) -> dict[str, int]:
    """SIGTERM every process left by any of task_ids at once, SIGKILL those still there
    after grace; returns, for each task, how many it had. It returns once all are gone, so
    no step of these tasks writes anything after one of their ends is published (a node
    step recording a module's failed status after its cluster task was seen to end)."""
    if not task_ids:
        return {}
    found = processes_of_tasks(task_ids, warm_registry)
    for pids in found.values():
        for pid in pids:
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and _alive(task_ids, warm_registry):
        time.sleep(0.1)
    for pid in _alive(task_ids, warm_registry):
        _signal(pid, signal.SIGKILL)
    if warm_registry is not None:
        # Settled before the task's end is published: nobody may see a stale record.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _alive(task_ids, warm_registry):
            time.sleep(0.05)
        warmsteps.prune_registry(warm_registry)
    return {task_id: len(pids) for task_id, pids in found.items()}


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


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
    queued = _queued_removals(redis)
    removals = {}
    for module_id, record in sorted(pending_modules(redis).items()):
        if task_id is not None and (record.get("agent"), record.get("task")) != (
            agent_id,
            task_id,
        ):
            continue
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
