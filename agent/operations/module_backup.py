"""One module's backup: dump hook, restic backup, cleanup hook, retention, in that order
(restic's container starts while the dump hook runs; restic waits for it)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from agent.adapters import module_users, podman, proc, restic
from agent.adapters.destinations import Destination
from agent.adapters.module_storage import module_restic_target
from agent.adapters.redis_store import REDIS_ERRORS, Context
from agent.adapters.restic_errors import Exit, explain_restic_failure
from agent.core import disk_space, redis_keys, restic_args
from agent.core.errors import AgentError
from agent.core.image_names import image_name
from agent.core.volumes import ENVIRONMENT, backup_layout
from agent.operations import repositories_known, repository_lease
from agent.operations.backup_labels import dump_labels, exclude_writer, removed_afterwards
from agent.operations.backup_retention import (
    Retention,
    apply_retention,
    backup_tag,
    counted_alongside,
)
from agent.operations.module_hooks import BackupSources, DumpHook, read_text
from agent.operations.reachability import unreachable_reason
from agent.operations.restic_backup import BackupResult, create_repository, run_restic_backup
from agent.records import snapshot_environments
from agent.records.backup_status import ModuleStatus, Outcome
from agent.runtime import locks

log = logging.getLogger("agent.backup")


@dataclass(frozen=True)
class BackupJob:
    backup_id: int
    name: str
    destination: Destination
    retention: Retention
    lock_wait_seconds: float = 3600.0


class StepFailed(Exception):
    """A stage of the module backup failed; the message is the recorded reason."""


def repo_path(ctx: Context, module_id: str) -> tuple[str, str]:
    """('<image-name>/<module-uuid>', module uuid) of a module's repository."""
    module_uuid = ctx.redis.hget(redis_keys.MODULE_UUID, module_id)
    image_url = ctx.redis.hget(redis_keys.module_environment(module_id), "IMAGE_URL")
    if not module_uuid or not image_url:
        raise StepFailed(f"module {module_id} has no uuid or image in Redis")
    return f"{image_name(image_url)}/{module_uuid}", str(module_uuid)


def read_status(ctx: Context, backup_id: int, module_id: str) -> ModuleStatus | None:
    key = redis_keys.backup_status(ctx.settings.node_id, backup_id)
    text = ctx.redis.hget(key, module_id)
    return ModuleStatus.from_record(module_id, text) if text else None


class ModuleBackup:
    """Backs up one module of one backup definition; run() never raises for its failures."""

    def __init__(
        self,
        ctx: Context,
        job: BackupJob,
        module_id: str,
        on_progress: Callable[[int], None],
        cancelled: threading.Event,
    ) -> None:
        self.ctx = ctx
        self.job = job
        self.module_id = module_id
        self.on_progress = on_progress
        self.cancelled = cancelled
        self.requested = time.time()
        self.start = int(self.requested)
        self.previous = read_status(ctx, job.backup_id, module_id)
        # Lines of its include/exclude files that named more than the module.
        self.ignored: tuple[str, ...] = ()

    def failed(self, reason: str) -> ModuleStatus:
        last = self.previous.last_success if self.previous else 0
        return ModuleStatus(
            self.module_id,
            Outcome.FAILED,
            self.start,
            int(time.time()),
            # A hook's own words rarely name the cause when the node's disk is full.
            reason=reason + disk_space.full_disk_note(self.ctx.settings.root),
            errors=1,
            ignored=self.ignored,
            last_success=last,
            snapshots_count=self.previous.snapshots_count if self.previous else 0,
        )

    def run(self) -> ModuleStatus:
        try:
            lock = locks.acquire(
                self.ctx.redis,
                redis_keys.module_backup_lock(self.module_id),
                wait_seconds=self.job.lock_wait_seconds,
            )
        except locks.LockBusy as busy:
            return self.failed(
                f"another backup of {self.module_id} kept running "
                f"({busy.holder}) for {self.job.lock_wait_seconds:.0f}s"
            )
        with lock:
            latest = read_status(self.ctx, self.job.backup_id, self.module_id)
            if (
                latest is not None
                and latest.finished > self.requested
                and latest.outcome is not Outcome.FAILED
            ):
                # A run of the same backup finished while we waited: its snapshot is ours.
                return replace(latest, coalesced=True)
            try:
                return self._locked_run()
            except (StepFailed, AgentError, OSError, proc.TimeoutExpired) as exc:
                # Whatever broke, the run ends recorded as failed with its reason.
                return self.failed(str(exc))

    def _locked_run(self) -> ModuleStatus:
        path, module_uuid = repo_path(self.ctx, self.module_id)
        unreachable = unreachable_reason(self.job.destination)
        if unreachable:  # before the dump hook: nothing to clean up, no container started
            raise StepFailed(unreachable)
        dump = DumpHook(self.ctx, self.module_id, self.job.backup_id)
        cleanup_failure = None
        try:
            status = self._backup(path, module_uuid, dump)
        finally:
            # Once the dump hook ran, its cleanup runs whatever happened after it.
            if dump.ran:
                cleanup_failure = dump.cleanup()
        if cleanup_failure:
            raise StepFailed(cleanup_failure)
        return status

    def _backup(self, path: str, module_uuid: str, dump: DumpHook) -> ModuleStatus:
        settings = self.ctx.settings
        agent_id = redis_keys.module_agent(self.module_id)
        state_dir = settings.state_dir(agent_id)
        podman_env = settings.podman_env()
        user = module_users.module_user(settings, self.module_id)
        if user is None:
            volume_names = podman.list_module_volumes(
                self.module_id, self.ctx.redis.hkeys(redis_keys.MODULE_NODE), podman_env
            )
        else:  # its own store: every volume is its own, named bare
            module_users.image_in_user_store(settings, user, restic.IMAGE, podman_env)
            volume_names = podman.list_volumes(podman_env, run_as=user)
        layout = backup_layout(
            self.module_id,
            settings.agent_home(agent_id),
            state_dir,
            volume_names,
            exclude_writer(settings, self.module_id, user),
            rootless=user is not None,
        )
        self.ignored = layout.ignored
        for line in layout.ignored:
            log.warning("%s: ignored, names more than the module: %s", self.module_id, line)
        labels = dump_labels(self.ctx, self.module_id, state_dir, owner=user)
        sources = BackupSources(dump, state_dir / "environment", lambda: layout.sources(labels))
        args = restic_args.backup_args(
            exclude_file=layout.exclude_file,
            host=self.module_id,
            tags=[
                f"module={self.module_id}",
                f"uuid={module_uuid}",
                backup_tag(self.job.backup_id),
            ],
        )
        try:
            with module_restic_target(self.job.destination, path, user) as target:
                opened = repository_lease.open_lease(
                    self.ctx.redis,
                    redis_keys.repository_lease(self.job.destination.id, path),
                    target,
                    self.job.destination.password,
                    podman_env,
                    wait_seconds=self.job.lock_wait_seconds,
                    retry_limit=settings.storage_retry_seconds,
                    run_as=user,
                )
                with opened as lease, removed_afterwards(state_dir, labels):
                    return self._leased(lease, path, args, layout.mounts, sources)
        except repository_lease.RepositoryBusy as busy:
            raise StepFailed(f"repository {path} is busy ({busy})") from None
        except repository_lease.StaleLocksKept as kept:
            raise StepFailed(str(kept)) from None

    def _leased(
        self,
        lease: repository_lease.RepositoryLease,
        path: str,
        args: list[str],
        mounts: tuple[restic.Mount, ...],
        sources: BackupSources,
    ) -> ModuleStatus:
        # The snapshots the last run left, if it counted them (0: it never did).
        known = (self.previous.snapshots_count if self.previous is not None else 0) or None
        destination, backup_id = self.job.destination, self.job.backup_id
        with counted_alongside(lease, destination, path, backup_id, known) as earlier:
            result = self._restic_backup(lease, args, mounts, sources)
            if sources.failure is not None:
                raise sources.failure
            if result.code == Exit.NO_REPOSITORY:
                create_repository(lease, self.ctx.redis, destination, path)
                result = self._restic_backup(lease, args, mounts, sources)
            outcome = self._classify(result)
        summary, new_id = result.summary, result.snapshot_id
        if new_id:
            repositories_known.remember(self.ctx.redis, destination.id, path, "")
            if ENVIRONMENT not in result.unreadable:
                self._remember_environment(new_id, summary.text("backup_start"), path, sources)
        kept = apply_retention(
            lease,
            self.ctx.redis,
            self.ctx.settings.node_id,
            backup_id,
            self.job.retention,
            known if known is not None else earlier.before(new_id),
        )
        return ModuleStatus(
            self.module_id,
            outcome,
            self.start,
            int(time.time()),
            reason=""
            if outcome is Outcome.OK
            else f"{len(result.unreadable)} file(s) could not be read: "
            + ", ".join(result.unreadable[:5]),
            snapshot_id=new_id,
            total_size=summary.count("total_bytes_processed"),
            total_file_count=summary.count("total_files_processed"),
            snapshots_count=kept,
            bytes_added=summary.count("data_added"),
            errors=len(result.unreadable),
            unreadable=tuple(result.unreadable),
            ignored=self.ignored,
            last_success=int(time.time()),
        )

    def _remember_environment(
        self, snapshot_id: str, snapshot_time: str, path: str, sources: BackupSources
    ) -> None:
        """Record the environment the new snapshot holds: the bytes read before the backup,
        when the file still has them after it (a change in between leaves no record)."""
        before = sources.environment
        if not before or read_text(sources.environment_file) != before:
            return
        try:
            snapshot_environments.record(
                self.ctx.redis,
                self.ctx.settings.node_id,
                snapshot_id,
                self.job.destination.id,
                path,
                before,
                snapshot_time,
            )
        except REDIS_ERRORS as exc:  # the snapshot is made; a restore will read it instead
            log.warning("%s: snapshot %s not recorded: %s", self.module_id, snapshot_id, exc)

    def _restic_backup(
        self,
        lease: repository_lease.RepositoryLease,
        args: list[str],
        mounts: tuple[restic.Mount, ...],
        sources: BackupSources,
    ) -> BackupResult:
        return run_restic_backup(
            lease,
            args,
            mounts=mounts,
            sources=sources,
            podman_args=self.ctx.settings.restic_podman_args,
            on_progress=self.on_progress,
        )

    def _classify(self, result: BackupResult) -> Outcome:
        if self.cancelled.is_set():
            raise StepFailed("cancelled")
        if result.code == Exit.OK:
            return Outcome.OK
        if result.code == Exit.INCOMPLETE and result.snapshot_id:
            return Outcome.PARTIAL
        raise StepFailed(explain_restic_failure(result.code, result.stderr))
