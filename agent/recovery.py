"""What a killed daemon left behind: its claimed tasks (re-queued when they never started,
else marked aborted), their processes (stopped, so a task is never run twice at once) and
the instances they were adding (removed, so none is half-made: agent/module_pending.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from agent import redis_keys, warmsteps
from agent.module_pending import modules_of_task
from agent.runner import TaskOutcome
from agent.task_input import Rejected, parse_task
from agent.task_records import TaskRecords

log = logging.getLogger("agent.recovery")

ABORTED_BY_CRASH = (
    "task aborted: the agent daemon stopped while it was running (killed or crashed); "
    "it was not re-run because its steps may have done part of their work\n"
)


def recover(records: TaskRecords, agent_id: str, warm_registry: Path) -> None:
    """Settle tasks a previous daemon of this node claimed and never finished."""
    processing = redis_keys.task_processing(agent_id)
    entries = records.binary.lrange(processing, 0, -1)
    for bad in [entry for entry in entries if not _is_utf8(entry)]:
        records.binary.lrem(processing, 1, bad)
    for raw_bytes in entries:
        if not _is_utf8(raw_bytes):
            continue
        raw = raw_bytes.decode()
        task = parse_task(raw)
        if isinstance(task, Rejected):
            records.reject(agent_id, raw, task)
            continue
        started = records.redis.exists(redis_keys.task_field(agent_id, task["id"], "context"))
        if not started:
            log.warning("%s: re-queueing task %s, claimed but never started", agent_id, task["id"])
            records.requeue(agent_id, raw)
            continue
        killed = kill_task_processes(task["id"], warm_registry)
        log.warning(
            "%s: task %s was running when the daemon died (%d leftover processes "
            "stopped); marking it aborted",
            agent_id,
            task["id"],
            killed,
        )
        error = ABORTED_BY_CRASH
        half_made = modules_of_task(records.redis, agent_id, task["id"])
        if half_made:
            error += f"the instances it was adding are removed: {', '.join(half_made)}\n"
        records.finish(agent_id, task, raw, TaskOutcome("", error, 1, "aborted"))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def processes_of_task(task_id: str, warm_registry: Path | None = None) -> list[int]:
    """Pids of live processes whose environment carries AGENT_TASK_ID=task_id, plus the
    task's steps forked by the warm helper (their environ is the helper's)."""
    marker = f"AGENT_TASK_ID={task_id}".encode()
    pids = warmsteps.registered_processes(warm_registry, task_id) if warm_registry else []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and int(entry.name) not in pids:
            pids.append(int(entry.name))
    return pids


# A step told to stop records what it was doing (the module's failed status) and cleans up
# (a restic unlock: one more container, seconds on a busy node) before it exits.
STOP_GRACE_SECONDS = 30.0


def kill_task_processes(
    task_id: str, warm_registry: Path | None = None, grace_seconds: float = STOP_GRACE_SECONDS
) -> int:
    """SIGTERM, then SIGKILL after grace, every process left by task_id; returns how many."""
    pids = processes_of_task(task_id, warm_registry)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and processes_of_task(task_id, warm_registry):
        time.sleep(0.1)
    for pid in processes_of_task(task_id, warm_registry):
        _signal(pid, signal.SIGKILL)
    if warm_registry is not None:
        # Settled before the task's end is published: nobody may see a stale record.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and processes_of_task(task_id, warm_registry):
            time.sleep(0.05)
        warmsteps.prune_registry(warm_registry)
    return len(pids)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
