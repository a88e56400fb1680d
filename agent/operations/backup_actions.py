"""The run-backup entry points: node action, cluster action, and the timers' command."""

from __future__ import annotations

import sys
import threading
from typing import Any

from agent.adapters.redis_store import Context
from agent.core.errors import ActionFailed
from agent.core.models import NodeRunBackupRequest, RunBackupRequest
from agent.operations.cluster_backup import upload_everywhere
from agent.operations.run_backup import (
    describe_failure,
    exit_code,
    run_cluster_backup,
    run_node_backup,
)
from agent.records import run_report
from agent.records.backup_status import Outcome, RunSummary
from agent.runtime import notification_queue
from agent.runtime.steps import Step, cancel_on_sigterm


def node_run_backup(step: Step, request: NodeRunBackupRequest) -> Any:
    cancelled = cancel_on_sigterm()
    if request.notify:
        notification_queue.queue_ping(step.ctx.redis, request.id, "start", step.task_id)
    summary = run_node_backup(step.ctx, request.id, step.set_progress, cancelled)
    upload_everywhere(step.ctx)  # the leader's copy of the cluster backup (issue #19)
    if summary is None:
        return {"id": request.id, "outcome": "skipped", "reason": "backup is not enabled"}
    if request.notify:
        notify(step.ctx, summary, cancelled, step.task_id)
    output = summary.to_output()
    code = exit_code(summary.outcome)
    if code != 0:
        raise ActionFailed(f"run-backup {request.id}: {describe_failure(summary)}", code, output)
    return output


def cluster_run_backup(step: Step, request: RunBackupRequest) -> Any:
    cancelled = cancel_on_sigterm()
    return run_cluster_backup(
        step.ctx,
        request.id,
        step.task_id,
        lambda _status, percent: step.set_progress(percent),
        cancelled,
    )


def notify(ctx: Context, summary: RunSummary, cancelled: threading.Event, parent: str = "") -> None:
    """The run's one message (unless every module's result came from another run, or it
    was cancelled) and its end ping: success only when every module is ok."""
    report = run_report.from_summary(summary)
    if report.modules and not cancelled.is_set():
        notification_queue.queue_report(ctx.redis, report, parent)
    ok = not cancelled.is_set() and summary.outcome is Outcome.OK
    notification_queue.queue_ping(ctx.redis, summary.backup_id, "success" if ok else "fail", parent)


def command_run_backup(ctx: Context, backup_id: int) -> int:
    """`runagent -m node run-backup --backup=<ID>`: what the systemd timers run."""
    cancelled = cancel_on_sigterm()
    notification_queue.queue_ping(ctx.redis, backup_id, "start")
    summary = run_node_backup(ctx, backup_id, cancelled=cancelled)
    upload_everywhere(ctx)  # the leader's copy of the cluster backup (issue #19)
    if summary is None:
        print(f"backup {backup_id} is not enabled: nothing to do")
        return 0
    notify(ctx, summary, cancelled)
    for module in summary.modules:
        line = f"{module.module_id}: {module.outcome.value}"
        if module.snapshot_id:
            line += f" snapshot {module.snapshot_id[:8]}"
        if module.reason:
            line += f" ({module.reason})"
        print(line, file=sys.stdout if module.outcome.value == "ok" else sys.stderr)
    return exit_code(summary.outcome)
