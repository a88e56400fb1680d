"""The run-backup entry points: node action, cluster action, and the timers' command."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from agent.errors import ActionFailed
from agent.models import RunBackupRequest
from agent.operations.run_backup import (
    describe_failure,
    exit_code,
    run_cluster_backup,
    run_node_backup,
)
from agent.redis_store import Context
from agent.steps import Step


def _cancel_on_sigterm() -> threading.Event:
    """cancel-task sends SIGTERM to the step's group: restic gets it too and stops."""
    cancelled = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancelled.set())
    return cancelled


def node_run_backup(step: Step, request: RunBackupRequest) -> Any:
    cancelled = _cancel_on_sigterm()
    summary = run_node_backup(step.ctx, request.id, step.set_progress, cancelled)
    if summary is None:
        return {"id": request.id, "outcome": "skipped", "reason": "backup is not enabled"}
    output = summary.to_output()
    code = exit_code(summary.outcome)
    if code != 0:
        raise ActionFailed(f"run-backup {request.id}: {describe_failure(summary)}", code, output)
    return output


def cluster_run_backup(step: Step, request: RunBackupRequest) -> Any:
    cancelled = _cancel_on_sigterm()
    return run_cluster_backup(
        step.ctx,
        request.id,
        step.task_id,
        lambda _status, percent: step.set_progress(percent),
        cancelled,
    )


def command_run_backup(ctx: Context, backup_id: int) -> int:
    """`runagent -m node run-backup --backup=<ID>`: what the systemd timers run."""
    cancelled = _cancel_on_sigterm()
    summary = run_node_backup(ctx, backup_id, cancelled=cancelled)
    if summary is None:
        print(f"backup {backup_id} is not enabled: nothing to do")
        return 0
    for module in summary.modules:
        line = f"{module.module_id}: {module.outcome.value}"
        if module.snapshot_id:
            line += f" snapshot {module.snapshot_id[:8]}"
        if module.reason:
            line += f" ({module.reason})"
        print(line, file=sys.stdout if module.outcome.value == "ok" else sys.stderr)
    return exit_code(summary.outcome)
