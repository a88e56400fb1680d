"""Cluster actions add/alter/remove/list-backup-repositories (NS8 names and shapes)."""

from __future__ import annotations

import json
import secrets
from typing import Any

import redis as redis_lib

from agent.adapters.destinations import load_destination
from agent.adapters.redis_store import Redis
from agent.core import redis_keys
from agent.core.errors import AgentError, DestinationNotFound, validation_error
from agent.core.models import (
    AddBackupRepositoryRequest,
    AlterBackupRepositoryRequest,
    DestinationIdRequest,
    NoInput,
)
from agent.operations.destination_input import SECRETS, Prepared, prepare, stable_uuid
from agent.operations.probe import write_candidate
from agent.records.backups import backup_ids, read_backups
from agent.records.destinations import Destination
from agent.runtime import lease, tasks
from agent.runtime.steps import Step

# When every node fails, the reason shown is the first of these any node gave (NS8's order).
REASONS = ("no_write_permission", "no_delete_permission", "no_read_permission")
DESTINATION_CHANGED = redis_keys.cluster_event(redis_keys.Event.BACKUP_DESTINATION_CHANGED)
SCHEDULE_CHANGED = redis_keys.cluster_event(redis_keys.Event.BACKUP_SCHEDULE_CHANGED)


def probe_nodes(redis: Redis) -> list[int]:
    """Nodes that will use a destination and can answer now."""
    nodes = sorted(int(n) for n in redis.smembers(redis_keys.CLUSTER_NODES))
    return [n for n in nodes if lease.is_served(redis, n)]


def probe_on_nodes(step: Step, prepared: Prepared, exit_code: int) -> None:
    """Run validate-backup-destination on the nodes; raise unless one of them succeeded."""
    redis = step.ctx.redis
    nodes = probe_nodes(redis)
    if not nodes:
        raise AgentError("no node daemon is running to validate the destination")
    token = secrets.token_hex(16)
    destination_id = prepared.destination.id
    write_candidate(redis, token, prepared.destination)
    try:
        requests = [
            tasks.TaskRequest(
                redis_keys.node_agent(node),
                "validate-backup-destination",
                {"id": destination_id, "candidate": token},
                step.task_id,
            )
            for node in nodes
        ]
        results = tasks.run_parallel(redis, requests, step.progress_range(5, 90))
    finally:
        redis.delete(redis_keys.backup_repository_candidate(token))
    if any(result.exit_code == 0 for result in results):
        return
    given = {
        str(row.get("error"))
        for result in results
        if result.exit_code == 2 and isinstance(result.output, list)
        for row in result.output
        if isinstance(row, dict)
    }
    reason = next((r for r in REASONS if r in given), "backup_repository_not_accessible")
    raise validation_error("parameters", reason, "", exit_code=exit_code)


def save(redis: Redis, prepared: Prepared, *, adding: bool) -> None:
    """Replace both hashes and publish, atomically; WATCH turns a race into an error."""
    destination_id = prepared.destination.id
    public_key = redis_keys.backup_repository(destination_id)
    private_key = redis_keys.backup_repository_private(destination_id)
    with redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(public_key, private_key)
            if bool(pipe.exists(public_key)) == adding:
                if adding:
                    raise validation_error("", "backup_repository_exists", destination_id)
                raise validation_error("id", "backup_repository_not_found", destination_id)
            pipe.multi()
            prepared.destination.to_redis(pipe)
            pipe.publish(DESTINATION_CHANGED, json.dumps({"destination_ids": [destination_id]}))
            pipe.execute()
        except redis_lib.WatchError:
            raise AgentError(f"destination {destination_id} changed meanwhile: retry") from None


def add_backup_repository(step: Step, request: AddBackupRepositoryRequest) -> dict[str, str]:
    redis = step.ctx.redis
    destination_id = stable_uuid(request.model_dump())
    if redis.exists(redis_keys.backup_repository(destination_id)):
        raise validation_error("", "backup_repository_exists", destination_id)
    prepared = prepare(request, destination_id, None, step.ctx.settings.local_policy())
    step.set_progress(5)
    probe_on_nodes(step, prepared, exit_code=2)
    save(redis, prepared, adding=True)
    step.set_progress(100)
    return {"password": prepared.destination.password, "id": destination_id}


def alter_backup_repository(step: Step, request: AlterBackupRepositoryRequest) -> None:
    redis = step.ctx.redis
    try:
        stored = load_destination(redis, request.id)
    except DestinationNotFound:
        raise validation_error("id", "backup_repository_not_found", request.id) from None
    if stored.provider != request.provider:
        raise validation_error(
            "provider", "backup_provider_mismatch", request.provider, exit_code=3
        )
    prepared = prepare(request, request.id, stored, step.ctx.settings.local_policy())
    probe_on_nodes(step, prepared, exit_code=4)
    save(redis, prepared, adding=False)
    step.set_progress(100)


def remove_backup_repository(step: Step, request: DestinationIdRequest) -> None:
    """Forget the destination and the backups using it; the stored data stays."""
    redis = step.ctx.redis
    public_key = redis_keys.backup_repository(request.id)
    with redis.pipeline(transaction=True) as pipe:
        try:
            ids = backup_ids(redis)
            pipe.watch(public_key, *(redis_keys.backup(backup_id) for backup_id in ids))
            if not pipe.exists(public_key):
                raise validation_error("id", "backup_repository_not_found", request.id)
            stored = read_backups(redis, ids)
            using = [b for b in stored if b.repository == request.id]
            # Backups that only mirror to it keep going without that mirror (issue #18).
            mirroring = [b for b in stored if request.id in b.mirrors and b not in using]
            pipe.multi()
            if using:
                pipe.delete(*(backup.key for backup in using))
                used = [str(backup.id) for backup in using]
                pipe.publish(SCHEDULE_CHANGED, json.dumps({"backup_ids": used}))
            for backup in mirroring:
                kept = tuple(m for m in backup.mirrors if m != request.id)
                backup.model_copy(update={"mirrors": kept}).to_redis(pipe)
            # Its record of written repositories goes too: the same destination added
            # again (same id) may rightly start with empty storage.
            pipe.delete(
                public_key,
                redis_keys.backup_repository_private(request.id),
                redis_keys.written_repositories(request.id),
                redis_keys.repository_check(request.id),
            )
            pipe.publish(DESTINATION_CHANGED, json.dumps({"destination_ids": [request.id]}))
            pipe.execute()
        except redis_lib.WatchError:
            raise AgentError("backups changed meanwhile: retry") from None


def hidden_parameters(provider: str, parameters: dict[str, str]) -> dict[str, str]:
    """Parameters as list-backup-repositories shows them: every secret blanked."""
    if provider == "rclone":
        conf = parameters.get("rclone_conf", "")
        kind = next(
            (
                line.split("=", 1)[1].strip()
                for line in conf.splitlines()
                if line.split("=", 1)[0].strip() == "type"
            ),
            "",
        )
        return {"type": kind}
    return {k: ("" if k in SECRETS else v) for k, v in parameters.items() if k != "password"}


def list_backup_repositories(step: Step, _request: NoInput) -> dict[str, Any]:
    redis = step.ctx.redis
    repositories = []
    for key in sorted(redis.scan_iter(match=redis_keys.BACKUP_REPOSITORY_PATTERN, count=500)):
        destination = Destination.from_redis(redis, redis_keys.id_in_key(key))
        if destination is None:
            continue
        repositories.append(
            {
                "id": destination.id,
                "provider": destination.provider,
                "name": destination.name,
                "url": destination.url,
                "password": destination.password,
                "basepath": destination.basepath,
                "parameters": hidden_parameters(destination.provider, dict(destination.parameters)),
            }
        )
    passphrase = step.ctx.settings.state_dir(redis_keys.CLUSTER) / "backup" / "passphrase"
    exists = passphrase.is_file() and passphrase.stat().st_size > 0
    return {"repositories": repositories, "password_exists": exists}
