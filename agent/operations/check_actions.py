"""The run-check entry points: node action, cluster action, and the timers' command."""

from __future__ import annotations

import sys
from typing import Any

from agent.adapters import proc
from agent.adapters.redis_store import Context
from agent.core import redis_keys
from agent.core.errors import ActionFailed
from agent.core.models import NodeRunCheckRequest, RunCheckRequest
from agent.operations.repository_check import notify_failures, run_node_check
from agent.operations.run_backup import read_definition
from agent.records.statuses import Outcome
from agent.runtime import tasks
from agent.runtime.steps import Step, cancel_on_sigterm, fail_on_sigterm


def node_run_check(step: Step, request: NodeRunCheckRequest) -> Any:
    # restic runs in this step's process group: it stops too, and the lease's context
    # managers remove its containers and locks as the exception unwinds.
    fail_on_sigterm(f"run-check {request.id} cancelled")
    run = run_node_check(step.ctx, request.id)
    if request.notify:
        notify_failures(step.ctx, run, step.task_id)
    output = run.to_output()
    if run.outcome is not Outcome.OK:
        bad = [f"{m}: {r.reason}" for m, r in run.records.items() if r.outcome is Outcome.FAILED]
        raise ActionFailed(f"run-check {request.id}: " + "; ".join(bad), 1, output)
    return output


def cluster_run_check(step: Step, request: RunCheckRequest) -> Any:
    """node/<N>/run-check on every node at once (each checks its own modules' repositories)."""
    cancelled = cancel_on_sigterm()
    read_definition(step.ctx, request.id)
    redis = step.ctx.redis
    nodes = sorted(int(n) for n in redis.smembers(redis_keys.CLUSTER_NODES))
    requests = [
        tasks.TaskRequest(redis_keys.node_agent(n), "run-check", {"id": request.id}, step.task_id)
        for n in nodes
    ]
    results = tasks.run_parallel(
        redis, requests, lambda _status, percent: step.set_progress(percent), cancelled
    )
    output: dict[str, Any] = {"id": request.id, "nodes": {}}
    failed = []
    for node, result in zip(nodes, results, strict=True):
        output["nodes"][str(node)] = result.output
        if result.exit_code != 0:
            failed.append(f"{node} ({proc.last_line(result.error or '')})")
    output["outcome"] = "failed" if failed or cancelled.is_set() else "ok"
    if cancelled.is_set():
        raise ActionFailed(f"run-check {request.id} cancelled", 1, output)
    if failed:
        raise ActionFailed(
            f"run-check {request.id} failed on node(s) " + ", ".join(failed), 1, output
        )
    return output


def command_run_check(ctx: Context, backup_id: int) -> int:
    """`runagent -m node run-check --backup=<ID>`: what the check timers run."""
    run = run_node_check(ctx, backup_id)
    notify_failures(ctx, run)
    for module_id, record in run.records.items():
        line = f"{module_id}: check {record.outcome.value} (read {record.subset or 'no data'})"
        if record.reason:
            line += f": {record.reason}"
        print(line, file=sys.stdout if record.outcome is Outcome.OK else sys.stderr)
    return 0 if run.outcome is Outcome.OK else 1
