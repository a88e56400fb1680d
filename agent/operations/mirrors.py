"""Mirror copies (issue #18): after a module's backup, every new snapshot of the backup
goes to each mirror destination by `restic copy`, and the mirror keeps its own retention.

A mirror repository is created with the source's chunker parameters (`init
--copy-chunker-params`), so copied data deduplicates there as in the source. A mirror that
fails makes the module's outcome partial: the snapshot exists, one copy of it is missing."""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import replace

from agent.adapters import proc, restic
from agent.adapters.destinations import (
    LOCAL_MOUNT,
    Destination,
    check_destination,
    load_destination,
    restic_target,
)
from agent.adapters.redis_store import Context, Redis
from agent.adapters.restic_errors import Exit, explain_restic_failure
from agent.core import redis_keys, restic_args, restic_messages
from agent.core.errors import AgentError
from agent.operations import repositories_known, repository_lease
from agent.operations.backup_retention import backup_tag
from agent.operations.module_backup import StepFailed, repo_path
from agent.operations.reachability import unreachable_reason
from agent.records.backup_status import ModuleStatus, Outcome
from agent.records.backups import BackupDefinition, backup_ids, read_backups

log = logging.getLogger("agent.mirror")
SOURCE_MOUNT = "/srv/source"  # a local source's directory, beside a local mirror's
COPY_TIMEOUT = 12 * 3600.0
LEASE_WAIT = 3600.0


class MirrorFailed(Exception):
    """One mirror did not get the snapshots; the message says why."""


def copy_target(mirror: restic.ResticTarget, source: restic.ResticTarget) -> restic.ResticTarget:
    """One container's view of both repositories: the mirror as the repository, the source
    as RESTIC_FROM_REPOSITORY (password: RESTIC_FROM_PASSWORD, set by the caller). Secrets
    still go by variable name only; two values for one name cannot both reach restic."""
    repository, volumes = source.repository, source.volumes
    if any(inside == LOCAL_MOUNT for _host, inside in volumes):
        repository = SOURCE_MOUNT + repository.removeprefix(LOCAL_MOUNT)
        volumes = tuple(
            (host, SOURCE_MOUNT if inside == LOCAL_MOUNT else inside) for host, inside in volumes
        )
    clashes = sorted(n for n in source.env if n in mirror.env and source.env[n] != mirror.env[n])
    if clashes:
        raise MirrorFailed(
            "the source and the mirror need different values of "
            + ", ".join(clashes)
            + " in one restic: use another kind of destination for the mirror"
        )
    if source.options and source.options != mirror.options:
        raise MirrorFailed("the source's restic options differ from the mirror's")
    return restic.ResticTarget(
        repository=mirror.repository,
        env={**mirror.env, **source.env, "RESTIC_FROM_REPOSITORY": repository},
        volumes=(*mirror.volumes, *volumes),
        options=mirror.options,
    )


def copy_to_mirrors(
    ctx: Context,
    definition: BackupDefinition,
    source: Destination,
    status: ModuleStatus,
    cancelled: threading.Event,
) -> ModuleStatus:
    """The status after copying the backup's snapshots to each mirror (unchanged when
    there is nothing to copy: no mirror, no new snapshot, or a result from another run)."""
    if not definition.mirrors or status.coalesced or not status.snapshot_id:
        return status
    held: list[str] = []
    problems: list[str] = []
    for mirror_id in definition.mirrors:
        if cancelled.is_set():
            problems.append(f"mirror {mirror_id}: cancelled")
            continue
        try:
            mirror = load_destination(ctx.redis, mirror_id)
            check_destination(mirror, ctx.settings.local_policy())
            copy_one(ctx, definition, source, mirror, status.module_id)
            held.append(mirror_id)
            log.info("mirror %s of %s: copied", mirror.name or mirror_id, status.module_id)
        except (MirrorFailed, StepFailed, AgentError, OSError, proc.TimeoutExpired) as exc:
            log.warning("mirror %s of %s: %s", mirror_id, status.module_id, exc)
            problems.append(f"mirror {mirror_id}: {exc}")
    if not problems:
        return replace(status, mirrored=tuple(held))
    reason = "; ".join(filter(None, [status.reason, *problems]))
    return replace(
        status,
        outcome=Outcome.PARTIAL,
        reason=reason,
        errors=status.errors + len(problems),
        mirrored=tuple(held),
    )


def copy_one(
    ctx: Context,
    definition: BackupDefinition,
    source: Destination,
    mirror: Destination,
    module_id: str,
) -> None:
    """Copy the backup's snapshots the mirror lacks, then apply the mirror's retention;
    raises MirrorFailed. Both repositories' leases are held, taken in one order."""
    unreachable = unreachable_reason(mirror)
    if unreachable:
        raise MirrorFailed(unreachable)
    path, _uuid = repo_path(ctx, module_id)
    target = copy_target(restic_target(mirror, path), restic_target(source, path))
    podman_env = ctx.settings.podman_env()
    target = replace(target, env={**target.env, "RESTIC_FROM_PASSWORD": source.password})
    settings = ctx.settings
    leases = {
        redis_keys.repository_lease(source.id, path): (
            restic_target(source, path),
            source.password,
            settings.podman_env(),
        ),
        redis_keys.repository_lease(mirror.id, path): (target, mirror.password, podman_env),
    }
    mirror_key = redis_keys.repository_lease(mirror.id, path)
    tag = backup_tag(definition.id)
    try:
        with contextlib.ExitStack() as stack:
            # The source's lease too (nothing runs under it: no prune may go on there), both
            # in the order of their keys, so that two backups mirroring each other's
            # destination never each hold one lease and wait for the other.
            held = {
                key: stack.enter_context(
                    repository_lease.open_lease(
                        ctx.redis,
                        key,
                        *leases[key],
                        wait_seconds=LEASE_WAIT,
                        retry_limit=settings.storage_retry_seconds,
                    )
                )
                for key in sorted(leases)
            }
            lease = held[mirror_key]
            done = lease.run(restic_args.copy_args(tags=[tag]), timeout=COPY_TIMEOUT)
            if done.returncode == Exit.NO_REPOSITORY:
                _create_mirror(lease, ctx.redis, mirror, path)
                done = lease.run(restic_args.copy_args(tags=[tag]), timeout=COPY_TIMEOUT)
            if done.returncode != Exit.OK:
                raise MirrorFailed(explain_restic_failure(done.returncode, done.error_text))
            repositories_known.remember(ctx.redis, mirror.id, path, "")
            keep = definition.mirror_retention or max(1, definition.retention)
            forget = lease.run(restic_args.forget_args(keep, tags=[tag]), timeout=COPY_TIMEOUT)
            if forget.returncode != Exit.OK:
                reason = explain_restic_failure(forget.returncode, forget.error_text)
                raise MirrorFailed(f"retention: {reason}")
    except repository_lease.RepositoryBusy as busy:
        raise MirrorFailed(f"a repository is busy ({busy})") from None
    except repository_lease.StaleLocksKept as kept:
        raise MirrorFailed(str(kept)) from None


def _create_mirror(
    lease: repository_lease.RepositoryLease, redis: Redis, mirror: Destination, path: str
) -> None:
    """`init --copy-chunker-params`, unless this cluster wrote the mirror before (a
    vanished repository is never made anew, as for a backup's own)."""
    if repositories_known.is_known(redis, mirror.id, path):
        raise MirrorFailed(
            f"repository vanished (disk not mounted?): {path} on {mirror.name or mirror.id} "
            "was written before and now reads as missing; it is not created again"
        )
    init = lease.run(restic_args.init_copy_args(), timeout=300)
    if init.returncode != 0:
        raise MirrorFailed(f"cannot create the mirror: {proc.last_line(init.error_text)}")
    repositories_known.remember(redis, mirror.id, path, restic_messages.parse_init_id(init.text))


def mirror_sources(redis: Redis) -> dict[tuple[str, str], set[str]]:
    """(mirror destination id, module uuid) → ids of the destinations whose repository of
    that module the mirror copies, from the backup definitions."""
    uuids = redis.hgetall(redis_keys.MODULE_UUID)
    found: dict[tuple[str, str], set[str]] = {}
    for definition in read_backups(redis, backup_ids(redis)):
        modules = [uuids[m] for m in definition.instances if m in uuids]
        for mirror_id in definition.mirrors:
            for module_uuid in [*modules, *definition.uinstances]:
                found.setdefault((mirror_id, module_uuid), set()).add(definition.repository)
    return found
