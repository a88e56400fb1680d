"""What a killed daemon left behind: its claimed tasks (re-queued when they never started,
else marked aborted), their processes (stopped, so a task is never run twice at once) and
the instances they were adding (removed, so none is half-made: agent/module_pending.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.core import redis_keys
from agent.runtime import warmsteps
from agent.runtime.module_pending import modules_of_task
from agent.runtime.runner import TaskOutcome
from agent.runtime.task_input import Rejected, parse_task
from agent.runtime.task_records import TaskRecords

log = logging.getLogger("agent.recovery")

ABORTED_BY_CRASH = (
    "task aborted: the agent daemon stopped while it was running (killed or crashed); "
    "it was not re-run because its steps may have done part of their work\n"
)


def recover(records: TaskRecords, agent_ids: Sequence[str], warm_registry: Path) -> None:
    """Settle tasks a previous daemon of this node claimed (on agent_ids) and never
    finished: stop what is left of them, then mark them aborted, in agent_ids' order.

    Every leftover step is stopped before any task's end is published. A cluster step
    waits on its node sub-tasks: it must not see them end (and start its own clean-up)
    before it is stopped itself, and its end must not be published before their steps,
    told to stop, have recorded what they were doing (a module's failed backup status):
    whoever reads the status once the cluster task ended sees that."""
    claimed = [
        (agent_id, task, raw) for agent_id in agent_ids for task, raw in _started(records, agent_id)
    ]
    killed = kill_task_processes([task["id"] for _, task, _ in claimed], warm_registry)
    for agent_id, task, raw in claimed:
        log.warning(
            "%s: task %s was running when the daemon died (%d leftover processes "
            "stopped); marking it aborted",
            agent_id,
            task["id"],
            killed[task["id"]],
        )
        error = ABORTED_BY_CRASH
        half_made = modules_of_task(records.redis, agent_id, task["id"])
        if half_made:
            error += f"the instances it was adding are removed: {', '.join(half_made)}\n"
        records.finish(agent_id, task, raw, TaskOutcome("", error, 1, "aborted"))


def _started(records: TaskRecords, agent_id: str) -> list[tuple[dict[str, Any], str]]:
    """(task, raw entry) of each task agent_id's processing list holds that had started;
    poison there is dropped or rejected, and a task never started is queued again."""
    processing = redis_keys.task_processing(agent_id)
    entries = records.binary.lrange(processing, 0, -1)
    for bad in [entry for entry in entries if not _is_utf8(entry)]:
        records.binary.lrem(processing, 1, bad)
    started = []
    for raw_bytes in entries:
        if not _is_utf8(raw_bytes):
            continue
        raw = raw_bytes.decode()
        task = parse_task(raw)
        if isinstance(task, Rejected):
            records.reject(agent_id, raw, task)
        elif records.redis.exists(redis_keys.task_field(agent_id, task["id"], "context")):
            started.append((task, raw))
        else:
            log.warning("%s: re-queueing task %s, claimed but never started", agent_id, task["id"])
            records.requeue(agent_id, raw)
    return started


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


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
