"""Cluster actions add/alter/remove/list-backups: when and what is backed up, where to."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis as redis_lib

from agent.adapters import proc, systemd
from agent.adapters.redis_api import watching
from agent.adapters.redis_store import Redis
from agent.core import redis_keys
from agent.core.errors import AgentError, StoredDataError, ValidationFailed
from agent.core.image_names import image_name
from agent.core.models import (
    AddBackupRequest,
    AlterBackupRequest,
    BackupIdRequest,
    BackupRequest,
    BackupRunsRequest,
    ListBackupsRequest,
)
from agent.operations.backup_confidence import confidence_errors, confidence_fields
from agent.operations.confidence_listing import definition_confidence, instance_confidence
from agent.records import drills, run_history
from agent.records.backups import (
    CONFIDENCE_FIELDS,
    KEEP_FIELDS,
    BackupDefinition,
    BackupSecrets,
    backup_ids,
)
from agent.records.repository_checks import stored_checks
from agent.records.statuses import StatusRecord
from agent.runtime.overdue import Watch
from agent.runtime.steps import Step

log = logging.getLogger("agent.definitions")
SCHEDULE_CHANGED = redis_keys.cluster_event(redis_keys.Event.BACKUP_SCHEDULE_CHANGED)


def error_row(field: str, error: str, value: Any) -> dict[str, Any]:
    return {"field": field, "parameter": field, "value": value, "error": error}


def schedule_is_valid(schedule: str) -> bool:
    """systemd's own parser decides."""
    try:
        result = proc.run(systemd.calendar_check_argv(schedule), timeout=10)
    except (OSError, proc.TimeoutExpired) as exc:
        raise AgentError(f"cannot check the schedule with systemd-analyze: {exc}") from None
    return result.returncode == 0


def missing_modules(redis: Redis, instances: list[str]) -> list[str]:
    placed = redis.hgetall(redis_keys.MODULE_NODE)
    return [
        m
        for m in dict.fromkeys(instances)
        if m not in placed or not redis.exists(redis_keys.module_environment(m))
    ]


def make_definition(
    request: BackupRequest,
    backup_id: int,
    repository: str,
    uinstances: str = "",
    stored: dict[str, str] | None = None,
) -> BackupDefinition:
    """The definition a request asks for (repository and uinstances are not its to set);
    the confidence fields it leaves out keep their stored values."""
    return BackupDefinition(
        **confidence_fields(request, stored or {}),
        id=backup_id,
        name=request.name or f"Backup {backup_id}",
        repository=repository,
        schedule=request.schedule,
        schedule_hint=request.schedule_hint,
        retention=request.retention,
        enabled=request.enabled,
        instances=tuple(dict.fromkeys(request.instances)),
        uinstances=tuple(uinstances.split()),
        keep_daily=request.keep_daily,
        keep_weekly=request.keep_weekly,
        keep_monthly=request.keep_monthly,
        keep_yearly=request.keep_yearly,
        keep_within=request.keep_within,
    )


def schedule_and_instance_errors(
    redis: Redis, schedule: str, instances: list[str], request: BackupRequest | None = None
) -> list[dict[str, Any]]:
    """NS8 rows for a schedule systemd refuses and for instances that are not modules."""
    errors = []
    if not schedule_is_valid(schedule):
        errors.append(error_row("schedule", "bad_schedule_format", schedule))
    for module_id in missing_modules(redis, instances):
        errors.append(error_row("instances", "module_not_found", module_id))
    if request is not None:
        errors += confidence_errors(redis, request, schedule_is_valid)
    return errors


def add_backup(step: Step, request: AddBackupRequest) -> int:
    redis = step.ctx.redis
    errors = []
    repository_key = redis_keys.backup_repository(request.repository)
    if not redis.exists(repository_key):
        errors.append(error_row("id", "backup_repository_not_found", request.repository))
    errors += schedule_and_instance_errors(redis, request.schedule, request.instances, request)
    if request.mirrors and request.repository in request.mirrors:
        errors.append(error_row("mirrors", "mirror_is_the_repository", request.repository))
    if errors:
        raise ValidationFailed(errors, exit_code=2)
    for _attempt in range(10):
        with redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(repository_key, redis_keys.BACKUP_SEQUENCE, redis_keys.MODULE_NODE)
                watched = watching(pipe)
                if not watched.exists(repository_key) or missing_modules(
                    watched, request.instances
                ):
                    raise AgentError("the destination or a module went away meanwhile: retry")
                backup_id = int(watched.get(redis_keys.BACKUP_SEQUENCE) or 0) + 1
                pipe.multi()
                pipe.set(redis_keys.BACKUP_SEQUENCE, backup_id)
                make_definition(request, backup_id, request.repository).to_redis(pipe)
                if request.ping_url:
                    BackupSecrets(ping_url=request.ping_url).to_redis(pipe, backup_id)
                pipe.publish(SCHEDULE_CHANGED, json.dumps({"backup_ids": [str(backup_id)]}))
                pipe.execute()
                return backup_id
            except redis_lib.WatchError:
                continue
    raise AgentError("the backup sequence kept changing: retry")


def alter_backup(step: Step, request: AlterBackupRequest) -> None:
    redis = step.ctx.redis
    key = redis_keys.backup(request.id)
    if not redis.exists(key):
        raise ValidationFailed([error_row("id", "backup_object_not_found", request.id)], 2)
    errors = schedule_and_instance_errors(redis, request.schedule, request.instances, request)
    if errors:
        raise ValidationFailed(errors, exit_code=3)
    with redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            watched = watching(pipe)
            if not watched.exists(key):
                raise ValidationFailed([error_row("id", "backup_object_not_found", request.id)], 2)
            # Only what the request does not set is read: an alter mends a malformed one.
            names = ["repository", "uinstances", *CONFIDENCE_FIELDS]
            repository, uinstances, *kept = watched.hmget(key, names)
            stored = {n: v for n, v in zip(CONFIDENCE_FIELDS, kept, strict=True) if v}
            if request.mirrors and (repository or "") in request.mirrors:
                raise ValidationFailed(
                    [error_row("mirrors", "mirror_is_the_repository", repository)], 3
                )
            definition = make_definition(
                request, request.id, repository or "", uinstances or "", stored
            )
            pipe.multi()
            definition.to_redis(pipe)
            if request.ping_url is not None:  # absent keeps it, "" removes it
                BackupSecrets(ping_url=request.ping_url).to_redis(pipe, request.id)
            pipe.publish(SCHEDULE_CHANGED, json.dumps({"backup_ids": [str(request.id)]}))
            pipe.execute()
        except redis_lib.WatchError:
            raise AgentError(f"backup {request.id} changed meanwhile: retry") from None


def node_ids(redis: Redis) -> list[int]:
    return sorted(int(n) for n in redis.smembers(redis_keys.CLUSTER_NODES))


def remove_backup(step: Step, request: BackupIdRequest) -> None:
    redis = step.ctx.redis
    key = redis_keys.backup(request.id)
    with redis.pipeline(transaction=True) as pipe:
        pipe.watch(key)
        if not pipe.exists(key):
            raise ValidationFailed([error_row("id", "backup_not_found", request.id)], 2)
        pipe.multi()
        statuses = (redis_keys.backup_status(n, request.id) for n in node_ids(redis))
        drill = redis_keys.backup_drill(request.id)
        pipe.delete(key, redis_keys.backup_private(request.id), drill, *statuses)
        pipe.publish(SCHEDULE_CHANGED, json.dumps({"backup_ids": [str(request.id)]}))
        try:
            pipe.execute()
        except redis_lib.WatchError:
            raise AgentError(f"backup {request.id} changed meanwhile: retry") from None


def masked_url(url: str) -> str:
    """Scheme and host of a URL whose path is a secret: enough to tell which service."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}/…" if rest else ""


def drill_listing(record: drills.DrillRecord | None) -> dict[str, Any] | None:
    """The module's last restore drill in this backup, with its one-line summary."""
    return record.listing() if record is not None else None


def freshness(raw: str | None) -> dict[str, Any]:
    """The overdue monitor's verdict: overdue, next_run and the newest good run's end."""
    watch = Watch.from_json(raw)
    if watch is None:  # not looked at yet (the leader looks every overdue_check_seconds)
        return {"overdue": None, "next_run": None, "last_snapshot": None}
    return {
        "overdue": watch.overdue,
        "next_run": int(watch.next_run) if watch.next_run else None,
        "last_snapshot": watch.last_success or None,
    }


def instance_status(module_id: str, key: str, text: str) -> dict[str, Any] | None:
    """The module's last run in NS8's shape (success = no errors) plus our outcome; None
    when it never ran, or when its record is malformed (logged with its key)."""
    if not text:
        return None
    try:
        record = StatusRecord.from_json(f"{key} [{module_id}]", text)
    except StoredDataError as exc:
        log.warning("%s", exc)
        return None
    return {
        "start": record.start,
        "end": record.end,
        "total_size": record.total_size,
        "total_file_count": record.total_file_count,
        "snapshots_count": record.snapshots_count,
        "success": record.errors == 0,
        "outcome": record.resolved_outcome.value,
        "partial": record.partial,
        "reason": record.reason,
    }


def _module_facts(redis: Redis, modules: list[str]) -> dict[str, tuple[str, str, bool]]:
    """module id → (IMAGE_URL, ui_name, no_data_backup flag), in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for module_id in modules:
            pipe.hget(redis_keys.module_environment(module_id), "IMAGE_URL")
            pipe.get(redis_keys.module_ui_name(module_id))
            pipe.sismember(redis_keys.module_flags(module_id), "no_data_backup")
        values = pipe.execute()
    return {
        module_id: (values[3 * i] or "", values[3 * i + 1] or "", bool(values[3 * i + 2]))
        for i, module_id in enumerate(modules)
    }


def list_backups(step: Step, request: ListBackupsRequest) -> dict[str, Any]:
    redis = step.ctx.redis
    uuids = redis.hgetall(redis_keys.MODULE_UUID)
    placed = redis.hgetall(redis_keys.MODULE_NODE)
    nodes = node_ids(redis)
    ids = backup_ids(redis)
    # Two round trips whatever the number of backups and modules (was one per item).
    with redis.pipeline(transaction=False) as pipe:
        for backup_id in ids:
            pipe.hgetall(redis_keys.backup(backup_id))
            for node in nodes:
                pipe.hgetall(redis_keys.backup_status(node, backup_id))
        for backup_id in ids:
            pipe.hgetall(redis_keys.backup_private(backup_id))
        for backup_id in ids:
            pipe.hgetall(redis_keys.backup_watch(backup_id))
        for backup_id in ids:
            pipe.hgetall(redis_keys.backup_drill(backup_id))
        pipe.hgetall(redis_keys.MODULE_PENDING)
        fetched = pipe.execute()
    # An instance still being added (a restore drill's scratch copy among them) is no
    # candidate for a backup yet.
    adding = set(fetched.pop())
    tail = fetched[len(fetched) - 3 * len(ids) :]
    private = zip(ids, tail[: len(ids)], strict=True)
    secrets = {
        backup_id: BackupSecrets.from_fields(backup_id, fields) for backup_id, fields in private
    }
    watches = dict(zip(ids, tail[len(ids) : 2 * len(ids)], strict=True))
    last_drills = {
        backup_id: drills.parse_all(backup_id, fields)
        for backup_id, fields in zip(ids, tail[2 * len(ids) :], strict=True)
    }
    facts = _module_facts(redis, sorted(set(uuids) | set(placed)))
    per_backup = 1 + len(nodes)
    definitions = {  # a key removed since the scan is left out
        index: BackupDefinition.from_fields(backup_id, fields)
        for index, backup_id in enumerate(ids)
        if (fields := fetched[index * per_backup])
    }
    checks = stored_checks(redis, sorted({d.repository for d in definitions.values()}))
    backups, configured = [], set()
    for index, definition in definitions.items():
        backup_id = definition.id
        statuses: dict[str, tuple[str, str]] = {}  # module id → (key, its JSON there)
        per_node = fetched[index * per_backup + 1 : (index + 1) * per_backup]
        for node, status in zip(nodes, per_node, strict=True):
            key = redis_keys.backup_status(node, backup_id)
            statuses |= {module_id: (key, text) for module_id, text in status.items()}
        instances = []
        for module_id in definition.instances:
            configured.add(module_id)
            if module_id not in uuids:
                continue
            image_url, ui_name, _ = facts.get(module_id, ("", "", False))
            try:
                image = image_name(image_url)
            except ValidationFailed:
                image = ""
            instances.append(
                {
                    "module_id": module_id,
                    "ui_name": ui_name,
                    "repository_path": f"{image}/{uuids[module_id]}",
                    "status": instance_status(module_id, *statuses.get(module_id, ("", ""))),
                    **freshness(watches[backup_id].get(module_id)),
                    "drill": drill_listing(last_drills[backup_id].get(module_id)),
                    **instance_confidence(
                        checks[definition.repository],
                        definition,
                        f"{image}/{uuids[module_id]}",
                        module_id,
                        statuses.get(module_id, ("", "")),
                    ),
                }
            )
        item: dict[str, Any] = {
            "id": backup_id,
            "name": definition.name,
            "repository": definition.repository,
            "schedule": definition.schedule,
            "schedule_hint": definition.schedule_hint,
            "retention": definition.retention,
            "enabled": definition.enabled,
            "instances": instances,
            "ping_url": masked_url(secrets[backup_id].ping_url),
            **definition_confidence(definition),
        }
        for name in KEEP_FIELDS:
            if getattr(definition, name) is not None:
                item[name] = getattr(definition, name)
        backups.append(item)
    if request.refresh:
        from agent.operations.freshness import refresh  # restic runs: only when asked

        refresh(step.ctx, backups)
    unconfigured = [
        {"id": m, "ui_name": facts[m][1]}
        for m in sorted(placed)
        if m not in configured and not facts[m][2] and m not in adding
    ]
    return {"backups": backups, "unconfigured_instances": unconfigured}


def list_backup_runs(step: Step, request: BackupRunsRequest) -> list[dict[str, Any]]:
    """The module's last runs, newest first, with their log lines."""
    return run_history.read(step.ctx.redis, request.module_id, request.limit)
