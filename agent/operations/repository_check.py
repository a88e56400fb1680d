"""run-check: `restic check` of this node's module repositories of a backup (issue #18).

The node that backs a module up owns its repository and is the only one doing
maintenance on it: the check holds the repository's lease, as backups and their prunes
do, so it never runs beside a prune (or a backup) of the same repository."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.adapters import proc
from agent.adapters.destinations import (
    Destination,
    check_destination,
    load_destination,
    restic_target,
)
from agent.adapters.redis_store import REDIS_ERRORS, Context
from agent.adapters.restic_errors import Exit, explain_restic_failure
from agent.core import redis_keys, restic_args
from agent.core.errors import AgentError, StoredDataError
from agent.core.restic_messages import parse_check
from agent.operations import repositories_known, repository_lease
from agent.operations.module_backup import StepFailed, repo_path
from agent.operations.reachability import unreachable_reason
from agent.operations.run_backup import local_modules, read_definition
from agent.records import run_history, run_report
from agent.records.backup_status import write_atomic
from agent.records.repository_checks import CheckRecord
from agent.records.statuses import Outcome
from agent.runtime import notification_queue

log = logging.getLogger("agent.check")
CHECK_TIMEOUT = 12 * 3600.0  # as a backup: long (a whole repository read), never forever
LEASE_WAIT = 3600.0


@dataclass
class CheckRun:
    """A node's check of one backup's repositories: each module's record (None: skipped)."""

    backup_id: int
    name: str
    node_id: int
    destination_id: str = ""
    records: dict[str, CheckRecord] = field(default_factory=dict)

    @property
    def outcome(self) -> Outcome:
        failed = any(r.outcome is Outcome.FAILED for r in self.records.values())
        return Outcome.FAILED if failed else Outcome.OK

    def to_output(self) -> dict[str, object]:
        return {
            "id": self.backup_id,
            "node": self.node_id,
            "outcome": self.outcome.value,
            "modules": {m: r.listing() for m, r in self.records.items()},
        }


def _previous(ctx: Context, destination_id: str, path: str) -> CheckRecord | None:
    try:
        return CheckRecord.from_redis(ctx.redis, destination_id, path)
    except StoredDataError as exc:  # counted afresh: a check must not stop on it
        log.warning("%s", exc)
        return None


def run_node_check(ctx: Context, backup_id: int) -> CheckRun:
    """Check each of this node's module repositories of backup_id, one after another."""
    definition = read_definition(ctx, backup_id)
    run = CheckRun(backup_id, definition.display_name, ctx.settings.node_id)
    modules = local_modules(ctx, list(definition.instances))
    if not modules:
        return run
    share = definition.check.read_data_subset if definition.check else ""
    run.destination_id = definition.repository
    try:
        destination = load_destination(ctx.redis, definition.repository)
        check_destination(destination, ctx.settings.local_policy())
    except AgentError as exc:
        now = int(time.time())
        for module_id in modules:
            run.records[module_id] = CheckRecord(
                backup_id=backup_id, node=run.node_id, start=now, end=now, reason=str(exc)
            )
        return run
    for module_id in modules:
        start = int(time.time())
        with run_history.LogCollector() as collected:
            try:
                path, _uuid = repo_path(ctx, module_id)
            except StepFailed as exc:
                log.warning("check of %s: %s", module_id, exc)
                continue
            previous = _previous(ctx, destination.id, path)
            runs = previous.runs if previous else 0
            subset = restic_args.rolling_subset(share, runs) if share else ""
            log.info("check of %s (%s): reading %s", module_id, path, subset or "no data")
            try:
                record = _check_one(ctx, destination, path, subset, runs)
            except (AgentError, OSError, proc.TimeoutExpired) as exc:
                record = CheckRecord(reason=str(exc), runs=runs)
            if record is None:
                log.info("check of %s: no repository yet, nothing to check", module_id)
                continue
            record = record.model_copy(
                update={
                    "backup_id": backup_id,
                    "node": run.node_id,
                    "start": start,
                    "end": int(time.time()),
                    "subset": subset,
                    "last_ok": start
                    if record.outcome is Outcome.OK
                    else (previous.last_ok if previous else 0),
                }
            )
            log.info("check of %s: %s %s", module_id, record.outcome.value, record.reason)
        run.records[module_id] = record
        secrets = [destination.password, *destination.parameters.values()]
        _store(ctx, destination.id, path, module_id, record, collected.lines, secrets)
    write_atomic(prometheus_path(ctx, backup_id), render_prometheus(run))
    return run


def _check_one(
    ctx: Context, destination: Destination, path: str, subset: str, runs: int
) -> CheckRecord | None:
    """The check's verdict as a record (times filled in by the caller); None when the
    repository was never made (a module not backed up yet)."""
    unreachable = unreachable_reason(destination)
    if unreachable:  # at once, not after restic's quarter of an hour of retries
        return CheckRecord(reason=unreachable, runs=runs)
    try:
        opened = repository_lease.open_lease(
            ctx.redis,
            redis_keys.repository_lease(destination.id, path),
            restic_target(destination, path),
            destination.password,
            ctx.settings.podman_env(),
            wait_seconds=LEASE_WAIT,
            retry_limit=ctx.settings.storage_retry_seconds,
        )
        with opened as lease:
            done = lease.run(restic_args.check_args(subset), timeout=CHECK_TIMEOUT)
    except repository_lease.RepositoryBusy as busy:
        return CheckRecord(reason=f"repository {path} is busy ({busy})", runs=runs)
    except repository_lease.StaleLocksKept as kept:
        return CheckRecord(reason=str(kept), runs=runs)
    if done.returncode == Exit.NO_REPOSITORY:
        if not repositories_known.is_known(ctx.redis, destination.id, path):
            return None
        return CheckRecord(reason="repository vanished (disk not mounted?)", runs=runs)
    verdict = parse_check(done.text, done.error_text)
    if done.returncode == Exit.OK and verdict.summarized and not verdict.num_errors:
        return CheckRecord(outcome=Outcome.OK, runs=runs + 1)
    if verdict.summarized:  # restic got to the end: the verdict counts as a run
        reason = f"restic check found {verdict.num_errors} error(s)"
        if verdict.broken_packs:
            reason += f" ({len(verdict.broken_packs)} damaged pack(s))"
        return CheckRecord(
            reason=reason,
            num_errors=max(1, verdict.num_errors),
            broken_packs=verdict.broken_packs[:100],
            errors=verdict.errors[:10],
            runs=runs + 1,
        )
    return CheckRecord(
        reason=explain_restic_failure(done.returncode, done.error_text),
        errors=verdict.errors[:10],
        runs=runs,
    )


def _store(
    ctx: Context,
    destination_id: str,
    path: str,
    module_id: str,
    record: CheckRecord,
    lines: list[str],
    secrets: list[str],
) -> None:
    try:
        with ctx.redis.pipeline(transaction=True) as pipe:
            record.to_redis(pipe, destination_id, path)
            pipe.execute()
        run_history.append(ctx.redis, module_id, run_history.check_record(record, lines, secrets))
    except REDIS_ERRORS as exc:
        log.warning("check of %s: not recorded: %s", module_id, exc)


def prometheus_path(ctx: Context, backup_id: int) -> Path:
    node_state = ctx.settings.state_dir(redis_keys.node_agent(ctx.settings.node_id))
    return node_state / "node_exporter" / f"check{backup_id}.prom"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(run: CheckRun) -> str:
    """node_exporter textfile of a node's last check of one backup's repositories."""
    ident = f'id="{run.backup_id}",name="{_label(run.name)}"'
    series: list[tuple[str, str, Callable[[CheckRecord], int]]] = [
        ("status", "1 when the last check found no error", lambda r: int(r.outcome is Outcome.OK)),
        ("errors", "Errors the last check found", lambda r: r.num_errors),
        ("duration_seconds", "Duration of the last check", lambda r: r.duration),
        ("last_ok_timestamp_seconds", "Start of the last check with no error", lambda r: r.last_ok),
    ]
    lines = []
    for suffix, help_text, value in series:
        name = f"node_backup_check_{suffix}"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for module_id, record in sorted(run.records.items()):
            lines.append(f'{name}{{{ident},module="{_label(module_id)}"}} {value(record)}')
    return "\n".join(lines) + "\n"


def notify_failures(ctx: Context, run: CheckRun, parent: str = "") -> None:
    """A failed check raises what a failed backup raises: one report to the targets."""
    if run.outcome is Outcome.OK:
        return
    report = run_report.RunReport(
        backup_id=run.backup_id,
        name=f"{run.name}: integrity check"[:256],
        modules=[
            run_report.ModuleReport(
                module_id=module_id,
                node=run.node_id,
                outcome=record.outcome.value,
                reason=record.reason[:2000],
            )
            for module_id, record in sorted(run.records.items())
        ],
    )
    notification_queue.queue_report(ctx.redis, report, parent)
