"""Finding what a killed daemon left running, so a task is never run twice at once."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from agent import warmsteps


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


def kill_task_processes(
    task_id: str, warm_registry: Path | None = None, grace_seconds: float = 5.0
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
