"""Cluster restore-module and restore-modules: a module back from a snapshot, or nothing."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, replace
from typing import Any

from agent.adapters import proc
from agent.adapters.redis_store import Redis
from agent.core import redis_keys
from agent.core.errors import ActionFailed, AgentError, validation_error
from agent.core.models import RestoreModuleRequest, RestoreModulesRequest
from agent.operations.module_hold import held_from_backups
from agent.operations.modules import (
    install_module,
    remove_module_everywhere,
    run_subtask,
    settle_module,
)
from agent.operations.restore_source import (
    open_repository,
    parse_repo_path,
    refuse_foreign_identity,
    settle_lease,
    snapshot_environment,
)
from agent.records.backups import backup_ids, read_backups
from agent.runtime import agent_acls, tasks
from agent.runtime.steps import Step, cancel_on_sigterm

log = logging.getLogger("agent.restore")


@dataclass(frozen=True)
class WholeRestore:
    repository: str
    path: str
    snapshot: str
    node: int
    replace: bool = False
    # A restore drill's scratch instance: a uuid of its own, no backup relinked to it, and
    # left pending (a daemon that finds the drill's task dead removes it); the caller
    # removes it once verified.
    drill: bool = False
    # NS8's `volumes`: volume name → the directory it is created on (every volume restored)
    volumes: tuple[tuple[str, str], ...] = ()


def cluster_restore_module(step: Step, request: RestoreModuleRequest) -> dict[str, Any]:
    cancelled = cancel_on_sigterm()
    if request.paths:
        return restore_paths(step, request, cancelled)
    assert request.node is not None  # the model requires node for a whole restore
    job = WholeRestore(
        request.repository,
        request.path,
        request.snapshot,
        request.node,
        request.replace,
        volumes=tuple(request.volumes.items()),
    )
    return restore_whole(step, job, cancelled)


def restore_whole(
    step: Step, job: WholeRestore, cancelled: threading.Event, span: tuple[int, int] = (0, 100)
) -> dict[str, Any]:
    """Add an instance of the snapshot's image on job.node and restore it (NS8 §4.1)."""
    redis = step.ctx.redis
    low, high = span

    def at(percent: int) -> int:
        return low + (high - low) * percent // 100

    if not redis.sismember(redis_keys.CLUSTER_NODES, job.node):
        raise validation_error("node", "node_not_found", job.node)
    repository = open_repository(step.ctx, job.repository, job.path)
    podman_env = step.ctx.settings.podman_env()
    snapshot, environment = snapshot_environment(
        redis, repository, job.snapshot, podman_env, step.ctx.settings.node_id
    )
    refuse_foreign_identity(redis, repository, environment)
    job = replace(job, snapshot=snapshot)
    step.set_progress(at(2))
    image_url = environment["IMAGE_URL"]
    # The path names the module, not what the snapshot claims: replace removes only it.
    source_uuid = repository.path.uuid
    installed: dict[str, str] = redis.hgetall(redis_keys.MODULE_UUID)
    replaced = sorted(m for m, u in installed.items() if u == source_uuid) if job.replace else []
    keep_uuid = not job.drill and (job.replace or source_uuid not in installed.values())
    module_uuid = source_uuid if keep_uuid else str(uuid.uuid4())
    if not keep_uuid:  # the new uuid may still read the source repository
        redis.hset(redis_keys.RESTORE_UUID, module_uuid, source_uuid)
    try:
        added = install_module(
            step,
            image_url,
            job.node,
            module_uuid,
            cancelled,
            progress=(at(2), at(15)),
            restore_uuid=not keep_uuid,
            volumes=dict(job.volumes),
        )
        module_id = added["module_id"]
        try:
            output = _run_module_restore(
                step, module_id, job, environment, cancelled, (at(16), at(94))
            )
        except BaseException:
            log.warning("restore of %s into %s failed: removing %s", job.path, job.node, module_id)
            remove_module_everywhere(step, module_id, preserve_data=False)
            settle_lease(step.ctx, repository)
            raise
    except BaseException:
        if not keep_uuid:
            redis.hdel(redis_keys.RESTORE_UUID, module_uuid)
        raise
    if job.drill:
        step.set_progress(high)
        return {**added, "snapshot": job.snapshot, "restored": output}
    settle_module(redis, module_id)
    relink_backups(redis, module_id, module_uuid, replaced)
    failed = []
    for old in replaced:
        try:
            remove_module_everywhere(step, old, preserve_data=False)
        except AgentError as exc:
            failed.append(f"{old}: {exc}")
    step.set_progress(high)
    if failed:
        raise ActionFailed("restored, but cannot remove " + "; ".join(failed), 2, added)
    return added


def _run_module_restore(
    step: Step,
    module_id: str,
    job: WholeRestore,
    environment: dict[str, str],
    cancelled: threading.Event,
    span: tuple[int, int],
) -> dict[str, Any]:
    """The module's restore-module action; its output (restic's counts)."""
    data: dict[str, Any] = {
        "repository": job.repository,
        "path": job.path,
        "snapshot": job.snapshot,
        "environment": environment,
        "replace": job.replace,
    }
    if job.drill:
        data["drill"] = True
    request = tasks.TaskRequest(
        redis_keys.module_agent(module_id), "restore-module", data, step.task_id
    )
    # The new module reads its source through the gateway for as long as this runs.
    source = parse_repo_path(job.path).path
    try:
        with agent_acls.restore_grant(step.ctx.redis, module_id, job.repository, source):
            result = run_subtask(step, request, step.progress_range(*span), cancelled)
    except AgentError as exc:
        raise ActionFailed(f"restore of {job.path} {exc}; {module_id} removed") from None
    if result.exit_code != 0:
        # A refused input is told in the output rows.
        detail = result.error if result.error.strip() or not result.output else result.raw_output
        raise ActionFailed(
            f"restore-module of {module_id} failed (exit {result.exit_code}): "
            f"{proc.last_line(detail)}; {module_id} removed"
        )
    return result.output if isinstance(result.output, dict) else {}


def relink_backups(redis: Redis, module_id: str, module_uuid: str, replaced: list[str]) -> None:
    """Backups naming the restored uuid (NS8 `uinstances`) or a replaced module get module_id."""
    changes = []
    for backup in read_backups(redis, backup_ids(redis)):
        wanted = module_uuid in backup.uinstances or any(o in backup.instances for o in replaced)
        if not wanted:
            continue
        instances = backup.instances
        if module_id not in instances:
            instances = (*instances, module_id)
        uinstances = tuple(u for u in backup.uinstances if u != module_uuid)
        changes.append(backup.model_copy(update={"instances": instances, "uinstances": uinstances}))
    if not changes:
        return
    with redis.pipeline(transaction=True) as pipe:
        for backup in changes:
            pipe.hset(backup.key, mapping=backup.stored_values("instances", "uinstances"))
        ids = [str(backup.id) for backup in changes]
        pipe.publish(
            redis_keys.cluster_event(redis_keys.Event.BACKUP_SCHEDULE_CHANGED),
            json.dumps({"backup_ids": ids}),
        )
        pipe.execute()


def restore_paths(
    step: Step, request: RestoreModuleRequest, cancelled: threading.Event
) -> dict[str, Any]:
    """Only request.paths from the snapshot, into the running instance request.module_id."""
    redis = step.ctx.redis
    module_id = str(request.module_id)
    if redis.hget(redis_keys.MODULE_NODE, module_id) is None:
        raise validation_error("module_id", "module_not_found", module_id)
    open_repository(step.ctx, request.repository, request.path)  # validates before queueing
    environment = redis.hgetall(redis_keys.module_environment(module_id))
    subtask = tasks.TaskRequest(
        redis_keys.module_agent(module_id),
        "restore-module",
        {
            "repository": request.repository,
            "path": request.path,
            "snapshot": request.snapshot,
            "environment": environment,
            "paths": request.paths,
        },
        step.task_id,
    )
    # A backup of the module waits: it must not read files half-restored, nor make a
    # newer snapshot that "latest" would then name.
    source = parse_repo_path(request.path).path
    with (
        held_from_backups(redis, module_id, cancelled),
        agent_acls.restore_grant(redis, module_id, request.repository, source),
    ):
        result = run_subtask(step, subtask, step.progress_range(0, 100), cancelled)
    if result.exit_code != 0:
        raise ActionFailed(
            f"restore of {', '.join(request.paths)} into {module_id} failed "
            f"(exit {result.exit_code}): {proc.last_line(result.error)}",
            result.exit_code if result.exit_code in (2, 10) else 1,
            result.output or None,
        )
    output = result.output if isinstance(result.output, dict) else {}
    return {"module_id": module_id, "paths": request.paths, **output}


def cluster_restore_modules(step: Step, request: RestoreModulesRequest) -> list[dict[str, Any]]:
    """Each item in turn; exit 10 + the number of failures when any failed (NS8)."""
    items = request.root
    cancelled = cancel_on_sigterm()
    results: list[dict[str, Any]] = []
    count = max(1, len(items))
    for index, item in enumerate(items):
        job = WholeRestore(item.repository, item.path, item.snapshot, item.node)
        span = (index * 100 // count, (index + 1) * 100 // count)
        try:
            added = restore_whole(step, job, cancelled, span)
            results.append({"path": item.path, "node": item.node, "ok": True, **added})
        except AgentError as exc:
            results.append({"path": item.path, "node": item.node, "ok": False, "error": str(exc)})
    failures = sum(1 for result in results if not result["ok"])
    if failures:
        raise ActionFailed(f"{failures} of {len(items)} restores failed", 10 + failures, results)
    return results
