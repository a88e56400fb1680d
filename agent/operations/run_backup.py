"""run-backup: a node backs up its modules of a backup definition; the cluster fans out."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.adapters import rclone, restic
from agent.adapters.destinations import (
    Destination,
    check_destination,
    load_destination,
    local_directory,
    rclone_target,
    restic_target,
)
from agent.adapters.redis_store import Context
from agent.core import redis_keys
from agent.core.errors import ActionFailed, AgentError, validation_error
from agent.operations import mirrors
from agent.operations.backup_retention import Retention
from agent.operations.module_backup import BackupJob, ModuleBackup, repo_path
from agent.records import run_history, run_report
from agent.records.backup_status import (
    ModuleStatus,
    Outcome,
    RunSummary,
    metadata,
    render_prometheus,
)
from agent.records.backup_status import write_atomic as write_file_atomic
from agent.records.backups import BackupDefinition
from agent.runtime import notification_queue, tasks

log = logging.getLogger("agent.backup")
EXIT_PARTIAL = 3


def read_definition(ctx: Context, backup_id: int) -> BackupDefinition:
    definition = BackupDefinition.from_redis(ctx.redis, backup_id)
    if definition is None:
        raise validation_error("id", "backup_not_found", backup_id)
    return definition


def _positive(value: int | None) -> int | None:
    return value if value else None  # 0 keeps nothing extra, as unset


def make_job(definition: BackupDefinition, destination: Destination) -> BackupJob:
    retention = Retention(
        keep_last=max(1, definition.retention),
        keep_daily=_positive(definition.keep_daily),
        keep_weekly=_positive(definition.keep_weekly),
        keep_monthly=_positive(definition.keep_monthly),
        keep_yearly=_positive(definition.keep_yearly),
        keep_within=definition.keep_within,
    )
    return BackupJob(definition.id, definition.display_name, destination, retention)


def local_modules(ctx: Context, instances: list[str]) -> list[str]:
    nodes = ctx.redis.hgetall(redis_keys.MODULE_NODE)
    return [m for m in instances if nodes.get(m) == str(ctx.settings.node_id)]


def run_node_backup(
    ctx: Context,
    backup_id: int,
    on_progress: Callable[[int], None] = lambda _: None,
    cancelled: threading.Event | None = None,
    lock_wait_seconds: float | None = None,
) -> RunSummary | None:
    """Back up this node's modules of backup_id; None when the backup is disabled."""
    definition = read_definition(ctx, backup_id)
    if not definition.enabled:
        return None
    cancelled = cancelled or threading.Event()
    modules = local_modules(ctx, list(definition.instances))
    summary = RunSummary(backup_id, definition.display_name, ctx.settings.node_id)
    if not modules:
        return summary
    try:
        destination = load_destination(ctx.redis, definition.repository)
        check_destination(destination, ctx.settings.local_policy())
    except AgentError as exc:
        failures = [
            ModuleStatus(m, Outcome.FAILED, 0, 0, reason=str(exc), errors=1) for m in modules
        ]
        summary.modules.extend(failures)
        _record(ctx, summary, failures)
        return summary
    job = make_job(definition, destination)
    if lock_wait_seconds is not None:
        job = BackupJob(job.backup_id, job.name, job.destination, job.retention, lock_wait_seconds)
    percents = dict.fromkeys(modules, 0)
    guard = threading.Lock()

    def back_up(module_id: str) -> ModuleStatus:
        def progress(percent: int) -> None:
            with guard:
                percents[module_id] = percent
                on_progress(sum(percents.values()) // len(percents))

        with run_history.LogCollector() as collected:
            log.info("backup %s of %s to %r: started", backup_id, module_id, job.name)
            status = ModuleBackup(ctx, job, module_id, progress, cancelled).run()
            status = mirrors.copy_to_mirrors(ctx, definition, destination, status, cancelled)
            log.info(
                "backup %s of %s: %s %s", backup_id, module_id, status.outcome.value, status.reason
            )
        # Removed (a replacing restore) while this run waited for it: its status, history
        # and metadata went with it and are not written again.
        removed = ctx.redis.hget(redis_keys.MODULE_NODE, module_id) is None
        if removed:
            log.warning("backup %s of %s: the module was removed meanwhile", backup_id, module_id)
        if not status.coalesced and not removed:
            _record(ctx, summary, [status])
            _write_metadata(ctx, destination, status)
            _remember(ctx, backup_id, destination, status, collected.lines)
        progress(100)
        return status

    workers = max(1, ctx.settings.backup_concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup") as pool:
        summary.modules.extend(pool.map(back_up, modules))
    write_file_atomic(prometheus_path(ctx, backup_id), render_prometheus(summary))
    return replace(
        summary, destination=destination.name or destination.id, free_bytes=free_space(destination)
    )


def free_space(destination: Destination) -> int | None:
    """Bytes free for the destination, where this node can tell without a container."""
    if destination.provider != "local":
        return None
    try:
        stat = os.statvfs(local_directory(destination))
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _remember(
    ctx: Context, backup_id: int, destination: Destination, status: ModuleStatus, lines: list[str]
) -> None:
    """The run in the module's history; a failure to write it never fails the backup."""
    secrets = [destination.password, *destination.parameters.values()]
    record = run_history.make_record(backup_id, ctx.settings.node_id, status, lines, secrets)
    try:
        run_history.append(ctx.redis, status.module_id, record)
    except Exception as exc:
        log.warning("backup %s of %s: history not written: %s", backup_id, status.module_id, exc)


def prometheus_path(ctx: Context, backup_id: int) -> Path:
    node_state = ctx.settings.state_dir(redis_keys.node_agent(ctx.settings.node_id))
    return node_state / "node_exporter" / f"backup{backup_id}.prom"


def _record(ctx: Context, summary: RunSummary, statuses: list[ModuleStatus]) -> None:
    node_id = ctx.settings.node_id
    with ctx.redis.pipeline(transaction=True) as pipe:
        for status in statuses:
            pipe.hset(
                redis_keys.backup_status(node_id, summary.backup_id),
                status.module_id,
                status.to_record(),
            )
            pipe.publish(
                redis_keys.node_event(node_id, redis_keys.Event.BACKUP_STATUS_CHANGED),
                json.dumps(
                    {
                        "node_id": node_id,
                        "backup_id": summary.backup_id,
                        "module_id": status.module_id,
                    }
                ),
            )
        pipe.execute()


def _write_metadata(ctx: Context, destination: Destination, status: ModuleStatus) -> None:
    """<repo>.json beside the repository, so other clusters can find and label it."""
    try:
        path, module_uuid = repo_path(ctx, status.module_id)
    except Exception:
        return
    label = ctx.redis.get(redis_keys.module_ui_name(status.module_id)) or ""
    document = metadata(
        status,
        module_uuid=module_uuid,
        label=label,
        node_id=ctx.settings.node_id,
        node_fqdn=socket.getfqdn(),
        cluster_uuid=ctx.redis.get(redis_keys.CLUSTER_UUID) or "",
    )
    text = json.dumps(document)
    if destination.provider == "rest":
        return  # a restic REST server stores repositories only, no side files
    if status.outcome is Outcome.FAILED:
        # It may have found no repository (a disk not mounted, a bucket emptied): a file
        # written there would make a mount point or a bucket look in use.
        return
    if destination.provider == "local":
        # The directory is on this node: no container needed for a small file. A missing
        # directory (a disk not mounted) is never created: the next run would see it
        # there and put a new repository on whatever disk holds the mount point.
        root = Path(local_directory(destination))
        if not (root / path).is_dir():
            log.warning("cannot write %s.json: %s is missing", path, root / path)
            return
        try:
            write_file_atomic(root / f"{path}.json", text)
        except OSError as exc:
            log.warning("cannot write %s.json: %s", path, exc)
        return
    try:
        spec, env = rclone_target(destination, f"{path}.json")
    except AgentError as exc:
        log.warning("cannot write %s.json: %s", path, exc)
        return
    volumes = restic_target(destination, path).volumes
    target = restic.ResticTarget(repository="", env=env, volumes=volumes)
    done = restic.run(
        target,
        "",
        rclone.rcat_args(spec),
        podman_env=ctx.settings.podman_env(),
        entrypoint=rclone.ENTRYPOINT,
        input=text.encode(),
        timeout=120,
    )
    if done.returncode != 0:
        log.warning("cannot write %s.json: %s", path, done.error_text.strip()[-300:])


def cluster_report(
    ctx: Context, backup_id: int, nodes: list[int], results: list[tasks.TaskResult]
) -> run_report.RunReport:
    """The nodes' outputs as one report; a node that said nothing of its modules failed."""
    definition = BackupDefinition.from_redis(ctx.redis, backup_id)
    parts: list[run_report.RunReport | run_report.NodeFailure] = []
    for node, result in zip(nodes, results, strict=True):
        output = result.output if isinstance(result.output, dict) else {}
        if output.get("outcome") == "skipped" or (result.exit_code == 0 and not output):
            continue
        try:
            parts.append(node_report(output))
        except (ValueError, TypeError, KeyError):
            error = (result.error or "").strip().splitlines()
            reason = error[-1] if error else f"exit code {result.exit_code}"
            parts.append(run_report.NodeFailure(node=node, error=reason[:2000]))
    name = definition.display_name if definition else f"Backup {backup_id}"
    return run_report.merge(backup_id, name, parts)


def node_report(output: dict[str, Any]) -> run_report.RunReport:
    """A node's run-backup output back as a report (raises when it is not one)."""
    modules = [
        run_report.ModuleReport(
            module_id=module_id,
            node=int(output["node"]),
            outcome=record["outcome"],
            reason=str(record.get("reason", ""))[:2000],
            snapshot_id=str(record.get("snapshot_id", "")),
            total_size=int(record.get("total_size", 0)),
            bytes_added=int(record.get("bytes_added", 0)),
            snapshots_count=int(record.get("snapshots_count", 0)),
        )
        for module_id, record in dict(output["modules"]).items()
        if not record.get("coalesced")
    ]
    return run_report.RunReport(
        backup_id=int(output["id"]),
        name="",
        destination=str(output.get("destination") or ""),
        free_bytes=output.get("free_bytes"),
        modules=modules,
    )


def exit_code(outcome: Outcome) -> int:
    return {Outcome.OK: 0, Outcome.PARTIAL: EXIT_PARTIAL, Outcome.FAILED: 1}[outcome]


def describe_failure(summary: RunSummary) -> str:
    bad = [m for m in summary.modules if m.outcome is not Outcome.OK]
    return "; ".join(f"{m.module_id}: {m.outcome.value}: {m.reason}" for m in bad)


# --- cluster fan-out ---------------------------------------------------------------------
def run_cluster_backup(
    ctx: Context,
    backup_id: int,
    parent: str,
    on_progress: Callable[[str, int], None],
    cancelled: threading.Event,
) -> dict[str, Any]:
    """node/<N>/run-backup on every node at once; raises ActionFailed if any failed."""
    read_definition(ctx, backup_id)
    notification_queue.queue_ping(ctx.redis, backup_id, "start", parent)
    nodes = sorted(int(n) for n in ctx.redis.smembers(redis_keys.CLUSTER_NODES))
    requests = [
        tasks.TaskRequest(
            redis_keys.node_agent(n), "run-backup", {"id": backup_id, "notify": False}, parent
        )
        for n in nodes
    ]
    results = tasks.run_parallel(ctx.redis, requests, on_progress, cancelled)
    output: dict[str, Any] = {"id": backup_id, "nodes": {}}
    codes = []
    for node, result in zip(nodes, results, strict=True):
        output["nodes"][str(node)] = result.output
        codes.append(result.exit_code)
    report = cluster_report(ctx, backup_id, nodes, results)
    if not cancelled.is_set() and (report.modules or report.node_failures):
        notification_queue.queue_report(ctx.redis, report, parent)
    ok = not cancelled.is_set() and report.outcome is Outcome.OK
    notification_queue.queue_ping(ctx.redis, backup_id, "success" if ok else "fail", parent)
    failed = [n for n, c in zip(nodes, codes, strict=True) if c not in (0, EXIT_PARTIAL)]
    partial = [n for n, c in zip(nodes, codes, strict=True) if c == EXIT_PARTIAL]
    output["outcome"] = "failed" if failed else "partial" if partial else "ok"
    if cancelled.is_set():
        raise ActionFailed(f"run-backup {backup_id} cancelled", 1, output)
    if failed:
        raise ActionFailed(
            f"run-backup {backup_id} failed on {len(failed)} node(s): "
            + ", ".join(map(str, failed)),
            1,
            output,
        )
    if partial:
        raise ActionFailed(
            f"run-backup {backup_id} partial on node(s) " + ", ".join(map(str, partial)),
            EXIT_PARTIAL,
            output,
        )
    return output
