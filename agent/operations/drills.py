"""run-drill: each module of a backup restored from its latest snapshot into a scratch
instance, checked by the module's own module-verify-restore hook, then removed.

The restore is restore-module's own (restore.restore_whole with drill set): a new module
id and uuid, no backup names it, and it stays pending, so a daemon that finds the drill's
task dead removes it. The source module is never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from agent.adapters import proc
from agent.adapters.destinations import load_destination
from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.errors import ActionFailed, AgentError, ValidationFailed, validation_error
from agent.core.masking import redact_text
from agent.core.models import RunDrillRequest, VerifyDrillRequest
from agent.operations.module_backup import StepFailed, repo_path
from agent.operations.module_hooks import run_hook
from agent.operations.modules import remove_module_everywhere, run_subtask
from agent.operations.restore import WholeRestore, restore_whole
from agent.records import drills, run_history
from agent.records.backups import BackupDefinition
from agent.records.drills import DrillRecord
from agent.runtime import notification_queue, tasks
from agent.runtime.module_pending import pending_modules
from agent.runtime.steps import Step, cancel_on_sigterm, fail_on_sigterm

log = logging.getLogger("agent.drill")
VERIFY_HOOK = "module-verify-restore"
VERIFY_ACTION = "verify-drill"


class DrillCancelled(Exception):
    """The drill was cancelled: nothing is recorded, the scratch instance is gone."""


def drill_node(redis: Redis, definition: BackupDefinition, requested: int | None) -> int:
    """The node asked for, else the backup's drill node, else the leader."""
    if requested is not None:
        return requested
    if definition.drill is not None and definition.drill.node is not None:
        return definition.drill.node
    return int(redis.hget(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID") or 1)


def chosen_modules(definition: BackupDefinition, requested: list[str] | None) -> list[str]:
    if requested is None:
        return list(definition.instances)
    for index, module_id in enumerate(requested):
        if module_id not in definition.instances:
            raise validation_error(f"modules.{index}", "module_not_in_backup", module_id)
    return list(dict.fromkeys(requested))


def cluster_run_drill(step: Step, request: RunDrillRequest) -> dict[str, Any]:
    cancelled = cancel_on_sigterm()
    redis = step.ctx.redis
    definition = BackupDefinition.from_redis(redis, request.id)
    if definition is None:
        raise validation_error("id", "backup_not_found", request.id)
    node = drill_node(redis, definition, request.node)
    if not redis.sismember(redis_keys.CLUSTER_NODES, node):
        raise validation_error("node", "node_not_found", node)
    modules = chosen_modules(definition, request.modules)
    output: dict[str, Any] = {"id": definition.id, "node": node, "modules": {}}
    count = max(1, len(modules))
    for index, module_id in enumerate(modules):
        span = (index * 100 // count, (index + 1) * 100 // count)
        try:
            record = drill_module(step, definition, module_id, node, cancelled, span)
        except DrillCancelled:
            raise ActionFailed(f"run-drill {definition.id} cancelled", 1, output) from None
        output["modules"][module_id] = record.listing()
        remember(redis, definition, record)
    step.set_progress(100)
    failed = {m: r for m, r in output["modules"].items() if r["outcome"] != "ok"}
    output["outcome"] = "failed" if failed else "ok"
    if failed:
        reasons = "; ".join(f"{m}: {r['reason']}" for m, r in failed.items())
        raise ActionFailed(f"drill of backup {definition.id} failed: {reasons}", 1, output)
    return output


def drill_module(
    step: Step,
    definition: BackupDefinition,
    module_id: str,
    node: int,
    cancelled: threading.Event,
    span: tuple[int, int],
) -> DrillRecord:
    """Restore, verify and remove one scratch copy of module_id; its record (a failure is
    recorded, not raised). DrillCancelled once cancelled, with the copy removed."""
    low, high = span
    fields: dict[str, Any] = {
        "module_id": module_id,
        "backup_id": definition.id,
        "node": node,
        "start": int(time.time()),
    }
    with run_history.LogCollector() as collected:
        log.info("drill of %s (backup %s) on node %s: started", module_id, definition.id, node)
        try:
            fields |= _restore_and_verify(step, definition, module_id, node, cancelled, span)
        except DrillCancelled:
            log.info("drill of %s: cancelled", module_id)
            raise
        except (AgentError, StepFailed) as exc:
            fields |= {"outcome": "failed", "reason": _reason(exc)}
        fields["end"] = int(time.time())
        record = DrillRecord(**fields)
        log.info(
            "drill of %s: %s in %.1fs restore, %.1fs verify %s",
            module_id,
            record.outcome,
            record.restore_seconds,
            record.verify_seconds,
            record.reason,
        )
    step.set_progress(high if high > low else low)
    _history(step.ctx.redis, definition, record, collected.lines)
    return record


def _restore_and_verify(
    step: Step,
    definition: BackupDefinition,
    module_id: str,
    node: int,
    cancelled: threading.Event,
    span: tuple[int, int],
) -> dict[str, Any]:
    low, high = span
    path, _ = repo_path(step.ctx, module_id)
    job = WholeRestore(definition.repository, path, "", node, drill=True)
    started = time.monotonic()
    restore_span = (low, low + (high - low) * 80 // 100)
    try:
        added = restore_whole(step, job, cancelled, restore_span)
    except AgentError:
        if cancelled.is_set():  # restore_whole removed its half-made instance
            raise DrillCancelled() from None
        raise
    scratch = str(added["module_id"])
    found: dict[str, Any] = {"scratch_module_id": scratch}
    try:
        restored = added.get("restored") or {}
        found |= {
            "snapshot_id": str(added.get("snapshot", "")),
            "restore_seconds": round(time.monotonic() - started, 3),
            "restored_bytes": int(restored.get("total_bytes") or restored.get("bytes_restored", 0)),
            "restored_files": int(restored.get("total_files") or restored.get("files_restored", 0)),
        }
        log.info("drill of %s: restored into %s on node %s", module_id, scratch, node)
        try:
            found |= _verify(step, definition.id, scratch, node, cancelled)
        except AgentError as exc:
            found |= {"outcome": "failed", "reason": _reason(exc)}
    finally:
        # Whatever happened (a failure, a cancel): the scratch instance goes.
        log.info("drill of %s: removing %s", module_id, scratch)
        remove_module_everywhere(step, scratch, preserve_data=False)
    if cancelled.is_set():
        raise DrillCancelled()
    return found


def _verify(
    step: Step, backup_id: int, scratch: str, node: int, cancelled: threading.Event
) -> dict[str, Any]:
    request = tasks.TaskRequest(
        redis_keys.node_agent(node),
        VERIFY_ACTION,
        {"module_id": scratch, "backup_id": backup_id},
        step.task_id,
    )
    started = time.monotonic()
    try:
        result = run_subtask(step, request, lambda _s, _p: None, cancelled)
    except AgentError:
        if cancelled.is_set():
            raise DrillCancelled() from None
        raise
    seconds = round(time.monotonic() - started, 3)
    output = result.output if isinstance(result.output, dict) else {}
    if result.exit_code != 0 or "exit_code" not in output:
        raise ActionFailed(
            f"{VERIFY_ACTION} on node {node} failed (exit {result.exit_code}): "
            f"{proc.last_line(result.error)}"
        )
    code = output["exit_code"]
    verdict: dict[str, Any] = {
        "verify_seconds": seconds,
        "hook_exit_code": code,
        "hook_output": drills.tail(str(output.get("output", ""))),
    }
    if code is None:
        log.info("drill: %s ships no %s: the restore alone is the verdict", scratch, VERIFY_HOOK)
        return verdict | {"outcome": "ok", "reason": f"restored; no {VERIFY_HOOK} hook"}
    if code != 0:
        last = verdict["hook_output"].splitlines()[-1:] or ["no output"]
        return verdict | {
            "outcome": "failed",
            "reason": f"{VERIFY_HOOK} failed (exit {code}): {last[0]}",
        }
    return verdict | {"outcome": "ok", "reason": ""}


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationFailed):
        rows = "; ".join(f"{row.get('field')}: {row.get('error')}" for row in exc.errors)
        return f"refused: {rows}"
    return str(exc)[:2000]


def remember(redis: Redis, definition: BackupDefinition, record: DrillRecord) -> None:
    """The drill as its module's last one, and a failure's notification."""
    with redis.pipeline(transaction=True) as pipe:
        record.to_redis(pipe)
        pipe.execute()
    if record.outcome != "ok":
        title = (
            f"Restore drill of {record.module_id} (backup {definition.id} "
            f"{definition.display_name!r}): failed"
        )
        body = f"{record.module_id} (drill on node {record.node}): failed — {record.reason}"
        if record.hook_output:
            body += f"\n\n{VERIFY_HOOK} said:\n{record.hook_output}"
        notification_queue.queue_message(redis, "failure", definition.id, title, body)


def _history(
    redis: Redis, definition: BackupDefinition, record: DrillRecord, lines: list[str]
) -> None:
    """The drill in the module's run history; never fails the drill."""
    try:
        destination = load_destination(redis, definition.repository)
        secrets = [destination.password, *destination.parameters.values()]
    except AgentError:
        secrets = []

    def clean(text: str) -> str:
        return redact_text(text, secrets)

    output = [f"{VERIFY_HOOK}: {line}" for line in record.hook_output.splitlines()]
    entry = run_history.RunRecord(
        backup_id=record.backup_id,
        node=record.node,
        start=record.start,
        end=record.end,
        outcome=record.outcome,
        reason=clean(record.reason)[:2000],
        snapshot_id=record.snapshot_id,
        total_size=record.restored_bytes,
        bytes_added=0,
        total_file_count=record.restored_files,
        snapshots_count=0,
        unreadable=[],
        log=[clean(line)[: run_history.LOG_LINE_CHARS] for line in [*lines, *output]][
            -run_history.LOG_LINES :
        ],
        kind="drill",
        restore_seconds=record.restore_seconds,
    )
    try:
        run_history.append(redis, record.module_id, entry)
    except Exception as exc:
        log.warning("drill of %s: history not written: %s", record.module_id, exc)


# --- node action verify-drill ------------------------------------------------------------
def node_verify_drill(step: Step, request: VerifyDrillRequest) -> dict[str, Any]:
    """Run module-verify-restore in a drill's scratch instance on this node: its exit code
    (None when the module ships none) and output."""
    fail_on_sigterm("verification cancelled")
    redis = step.ctx.redis
    here = redis.hget(redis_keys.MODULE_NODE, request.module_id)
    # Only an instance still being added (a drill's scratch copy) is verified here: the
    # hook of a module in service is never started by a drill.
    if here != str(step.ctx.settings.node_id) or request.module_id not in pending_modules(redis):
        raise validation_error("module_id", "not_a_drill_instance", request.module_id)
    done = run_hook(step.ctx, request.module_id, VERIFY_HOOK, request.backup_id)
    if done is None:
        return {"module_id": request.module_id, "exit_code": None, "output": ""}
    text = done.text + ("\n" if done.text and not done.text.endswith("\n") else "")
    return {
        "module_id": request.module_id,
        "exit_code": done.returncode,
        "output": drills.tail(text + done.error_text),
    }
