"""One module's backup: dump hook, restic backup, cleanup hook, retention, in that order
(restic's container starts while the dump hook runs; restic waits for it)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import disk_space, locks, podman, proc, redis_keys, restic, snapshot_environments
from agent.agentenv import agent_environment
from agent.backup_status import ModuleStatus, Outcome
from agent.destinations import Destination, local_snapshot_names, restic_target
from agent.errors import AgentError
from agent.operations import repositories_known, repository_lease
from agent.operations.modules import image_name
from agent.reachability import unreachable_reason
from agent.redis_store import REDIS_ERRORS, Context, connect_binary
from agent.volumes import ENVIRONMENT, backup_layout

log = logging.getLogger("agent.backup")
HOOK_TIMEOUT = 3600


@dataclass(frozen=True)
class Retention:
    keep_last: int
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None


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


def run_hook(ctx: Context, module_id: str, hook: str, backup_id: int) -> proc.Result | None:
    """Run a module hook as the module; None when the module does not ship it."""
    agent_id = redis_keys.module_agent(module_id)
    env = agent_environment(ctx.settings, agent_id)
    path = shutil.which(hook, path=env["PATH"])
    if path is None:
        return None
    return proc.run(
        [path, str(backup_id)], env=env, cwd=ctx.settings.state_dir(agent_id), timeout=HOOK_TIMEOUT
    )


class _DumpHook:
    """The module's module-dump-state; ran tells whether its cleanup is due."""

    def __init__(self, ctx: Context, module_id: str, backup_id: int) -> None:
        self.ctx, self.module_id, self.backup_id = ctx, module_id, backup_id
        self.ran = False  # the module ships the hook and it was started

    def run(self) -> None:
        dumped = run_hook(self.ctx, self.module_id, "module-dump-state", self.backup_id)
        self.ran = dumped is not None
        if dumped is not None and dumped.returncode != 0:
            raise StepFailed(
                f"module-dump-state failed (exit {dumped.returncode}): {_tail(dumped.error_text)}"
            )


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


LABEL_KEYS = (("ui_name", redis_keys.module_ui_name), ("ui_note", redis_keys.module_ui_note))


def dump_labels(ctx: Context, module_id: str, state_dir: Path) -> list[str]:
    """DUMP the module's UI label and note into state/<name>.dump (NS8 does the same, and
    restore's 20label step loads them back); returns their snapshot paths."""
    raw = connect_binary(ctx.settings.redis_url)
    paths = []
    try:
        for name, key in LABEL_KEYS:
            payload = raw.dump(key(module_id))
            target = state_dir / f"{name}.dump"
            if payload is None:
                target.unlink(missing_ok=True)
                continue
            target.write_bytes(payload)
            paths.append(f"state/{name}.dump")
    finally:
        raw.close()
    return paths


@contextlib.contextmanager
def _removed_afterwards(state_dir: Path, paths: list[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for path in paths:
            (state_dir / path.removeprefix("state/")).unlink(missing_ok=True)


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
        dump = _DumpHook(self.ctx, self.module_id, self.job.backup_id)
        cleanup_failure = None
        try:
            status = self._backup(path, module_uuid, dump)
        finally:
            # Once the dump hook ran, its cleanup runs whatever happened after it.
            if dump.ran:
                cleanup_failure = self._cleanup()
        if cleanup_failure:
            raise StepFailed(cleanup_failure)
        return status

    def _cleanup(self) -> str | None:
        cleaned = run_hook(self.ctx, self.module_id, "module-cleanup-state", self.job.backup_id)
        if cleaned is not None and cleaned.returncode != 0:
            return (
                f"module-cleanup-state failed (exit {cleaned.returncode}): "
                f"{_tail(cleaned.error_text)}"
            )
        return None

    def _backup(self, path: str, module_uuid: str, dump: _DumpHook) -> ModuleStatus:
        settings = self.ctx.settings
        agent_id = redis_keys.module_agent(self.module_id)
        state_dir = settings.state_dir(agent_id)
        podman_env = settings.podman_env()
        layout = backup_layout(
            self.module_id,
            settings.agent_home(agent_id),
            state_dir,
            podman.list_module_volumes(
                self.module_id, self.ctx.redis.hkeys(redis_keys.MODULE_NODE), podman_env
            ),
        )
        target = restic_target(self.job.destination, path)
        password = self.job.destination.password
        labels = dump_labels(self.ctx, self.module_id, state_dir)
        environment_file = state_dir / "environment"
        sources = _Sources(dump, environment_file, lambda: layout.sources(labels))

        args = restic.backup_args(
            exclude_file=layout.exclude_file,
            host=self.module_id,
            tags=[
                f"module={self.module_id}",
                f"uuid={module_uuid}",
                f"backup={self.job.backup_id}",
            ],
        )
        lease_key = redis_keys.repository_lease(self.job.destination.id, path)
        try:
            opened = repository_lease.open_lease(
                self.ctx.redis,
                lease_key,
                target,
                password,
                podman_env,
                wait_seconds=self.job.lock_wait_seconds,
                retry_limit=settings.storage_retry_seconds,
            )
            with opened as lease, _removed_afterwards(state_dir, labels):
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
        sources: _Sources,
    ) -> ModuleStatus:
        with self._counted_alongside(path, lease) as earlier:
            result = self._restic_backup(lease, args, mounts, sources)
            if sources.failure is not None:
                raise sources.failure
            if result.code == restic.EXIT_NO_REPOSITORY:
                self._create_repository(lease, path)
                result = self._restic_backup(lease, args, mounts, sources)
            outcome = self._classify(result)
        new_id = str(result.summary.get("snapshot_id", ""))
        if new_id:
            repositories_known.remember(self.ctx.redis, self.job.destination.id, path, "")
            if ENVIRONMENT not in result.unreadable:
                snapshot_time = str(result.summary.get("backup_start", ""))
                self._remember_environment(
                    new_id, snapshot_time, path, sources.environment, sources.environment_file
                )
        kept = self._retention(lease, earlier.before(new_id))
        summary = result.summary
        return ModuleStatus(
            self.module_id,
            outcome,
            self.start,
            int(time.time()),
            reason=""
            if outcome is Outcome.OK
            else f"{len(result.unreadable)} file(s) could not be read: "
            + ", ".join(result.unreadable[:5]),
            snapshot_id=str(summary.get("snapshot_id", "")),
            total_size=int(summary.get("total_bytes_processed", 0)),
            total_file_count=int(summary.get("total_files_processed", 0)),
            snapshots_count=kept,
            bytes_added=int(summary.get("data_added", 0)),
            errors=len(result.unreadable),
            unreadable=tuple(result.unreadable),
            last_success=int(time.time()),
        )

    def _remember_environment(
        self, snapshot_id: str, snapshot_time: str, path: str, before: str, environment_file: Path
    ) -> None:
        """Record the environment the new snapshot holds: the bytes read before the backup,
        when the file still has them after it (a change in between leaves no record)."""
        if not before or _read_text(environment_file) != before:
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

    def _create_repository(self, lease: repository_lease.RepositoryLease, path: str) -> None:
        """`restic init`, unless this cluster wrote there before: a repository that
        vanished (a disk not mounted, a bucket emptied) is never made anew where the
        next backups would land unnoticed."""
        destination_id = self.job.destination.id
        if repositories_known.is_known(self.ctx.redis, destination_id, path):
            raise StepFailed(
                f"repository vanished (disk not mounted?): {path} on "
                f"{self.job.destination.name or destination_id} was written before and "
                "now reads as missing; it is not created again"
            )
        init = lease.run(["init", "--json"], timeout=600)
        if init.returncode != 0:
            raise StepFailed(f"cannot create the repository: {_tail(init.error_text)}")
        repositories_known.remember(
            self.ctx.redis, destination_id, path, restic.parse_init_id(init.text)
        )

    def _restic_backup(
        self,
        lease: repository_lease.RepositoryLease,
        args: list[str],
        mounts: tuple[restic.Mount, ...],
        sources: Callable[[], str],
    ) -> _Result:
        result = _Result()

        def on_message(message: dict[str, Any]) -> None:
            kind = message.get("message_type")
            if kind == "status":
                self.on_progress(int(float(message.get("percent_done", 0)) * 100))
            elif kind == "summary":
                result.summary = message
            elif kind == "error":
                item = str(message.get("item", ""))
                result.unreadable.append(
                    item.removeprefix("/srv/") or str(message.get("error", {}).get("message", ""))
                )

        result.code, result.stderr = lease.stream(
            args,
            on_message=on_message,
            mounts=mounts,
            podman_args=self.ctx.settings.restic_podman_args,
            stdin_text=sources,
        )
        return result

    def _classify(self, result: _Result) -> Outcome:
        if self.cancelled.is_set():
            raise StepFailed("cancelled")
        if result.code == restic.EXIT_OK:
            return Outcome.OK
        if result.code == restic.EXIT_INCOMPLETE and result.summary.get("snapshot_id"):
            return Outcome.PARTIAL
        raise StepFailed(explain_restic_failure(result.code, result.stderr))

    @property
    def _known_count(self) -> int | None:
        """The snapshots the last run left, if it counted them (0: it never did)."""
        return (self.previous.snapshots_count if self.previous is not None else 0) or None

    @contextlib.contextmanager
    def _counted_alongside(
        self, path: str, lease: repository_lease.RepositoryLease
    ) -> Iterator[_Count]:
        """While the body runs, count this backup's snapshots in the repository, when no
        earlier run left a count to trust (first run, restored module): a `restic
        snapshots` beside the backup costs far less than a `forget` after it. A local
        repository without any snapshot file needs no restic at all: the count is 0."""
        count = _Count()
        if self._known_count is not None:
            yield count
            return
        if local_snapshot_names(self.job.destination, path) == []:
            count.ids = []
            yield count
            return
        args = ["snapshots", "--no-lock", "--json", "--tag", f"backup={self.job.backup_id}"]

        def list_snapshots() -> None:
            done = lease.run(args, timeout=600)
            count.record(done.returncode, done.text)

        thread = threading.Thread(target=list_snapshots, name="count-snapshots", daemon=True)
        thread.start()
        try:
            yield count
        finally:
            thread.join()

    def _retention(
        self, lease: repository_lease.RepositoryLease, counted_before: int | None
    ) -> int:
        policy = self.job.retention
        known = self._known_count if self._known_count is not None else counted_before
        if known is not None and known + 1 <= policy.keep_last:
            # keep-last alone keeps every one of them, whatever the other keep-* rules say:
            # forget would remove nothing, so its container (about a second) is not started.
            # Without any count (first run whose listing failed) forget runs and counts.
            return known + 1
        args = restic.forget_args(
            policy.keep_last,
            tags=[f"backup={self.job.backup_id}"],
            keep_daily=policy.keep_daily,
            keep_weekly=policy.keep_weekly,
            keep_monthly=policy.keep_monthly,
            keep_yearly=policy.keep_yearly,
            keep_within=policy.keep_within,
        )
        done = lease.run(args, timeout=3600)
        if done.returncode != 0:
            raise StepFailed(f"retention failed: {_tail(done.error_text)}")
        kept, removed = forget_result(done.text)
        snapshot_environments.forget(self.ctx.redis, self.ctx.settings.node_id, removed)
        return kept


class _Sources:
    """restic's standard input: the paths to back up, known once the dump hook ran (it
    runs while restic's container starts, at most once however often restic starts);
    environment is the module's state/environment as it was then."""

    def __init__(self, dump: _DumpHook, environment_file: Path, paths: Callable[[], str]) -> None:
        self.dump, self.environment_file, self.paths = dump, environment_file, paths
        self.environment = ""
        self._text: str | None = None

        self.failure: StepFailed | None = None

    def __call__(self) -> str:
        """The paths; none when the dump hook failed (failure tells why): restic then
        ends on its own, without opening the repository."""
        if self._text is None and self.failure is None:
            try:
                self.dump.run()
            except StepFailed as failed:
                self.failure = failed
                return ""
            self.environment = _read_text(self.environment_file)
            self._text = self.paths()
        return self._text or ""


class _Count:
    """Snapshot ids `restic snapshots` listed, from another thread."""

    def __init__(self) -> None:
        self.ids: list[str] | None = None

    def record(self, code: int, text: str) -> None:
        if code == restic.EXIT_NO_REPOSITORY:
            self.ids = []  # created by this very run: nothing was there before it
            return
        if code != restic.EXIT_OK:
            return
        try:
            listed = json.loads(text)
        except ValueError:
            return
        if isinstance(listed, list):
            self.ids = [str(item.get("id", "")) for item in listed if isinstance(item, dict)]

    def before(self, new_id: str) -> int | None:
        """How many there were before the snapshot new_id (the listing may include it)."""
        if self.ids is None:
            return None
        if not new_id:
            return len(self.ids)
        return len([i for i in self.ids if not (i.startswith(new_id) or new_id.startswith(i))])


@dataclass
class _Result:
    code: int = -1
    stderr: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def forget_result(forget_output: str) -> tuple[int, list[str]]:
    """(snapshots kept, ids removed), from `forget --json` (one JSON array line among
    prune's text)."""
    for line in forget_output.splitlines():
        if line.startswith("["):
            try:
                groups = json.loads(line)
            except ValueError:
                continue
            groups = [group for group in groups if isinstance(group, dict)]
            kept = sum(len(group.get("keep") or []) for group in groups)
            removed = [
                str(item.get("id", ""))
                for group in groups
                for item in group.get("remove") or []
                if isinstance(item, dict) and item.get("id")
            ]
            return kept, removed
    return 0, []


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def explain_restic_failure(code: int, stderr: str) -> str:
    if code == restic.EXIT_WRONG_PASSWORD:
        return "wrong repository password (restic exit 12)"
    if code == restic.EXIT_LOCKED:
        return f"repository is locked by another process: {_tail(stderr)}"
    if code == restic.EXIT_NO_REPOSITORY:
        return "the repository does not exist and could not be created"
    if code == restic.EXIT_STOPPED:
        return _tail(stderr)
    return f"restic failed (exit {code}): {_tail(stderr)}"
