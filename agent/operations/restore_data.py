"""Putting snapshot data back: a module's restore-module steps and the node's restore-files."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from agent.adapters import module_users, proc, restic
from agent.adapters.redis_store import Context
from agent.core import redis_keys, restic_args, restic_messages, restored_files
from agent.core.errors import ActionFailed, ValidationFailed, validation_error
from agent.core.models import ModuleRestoreRequest, RestoreFilesRequest
from agent.core.restic_messages import ExitError, ItemError, Message, Status, Summary, VerboseStatus
from agent.core.settings import Settings
from agent.core.volumes import included_volumes
from agent.operations.module_storage import open_module_repository
from agent.operations.restore_source import (
    INSTANCE_PATHS,
    Repository,
    check_reachable,
    explain_read_failure,
    open_repository,
    repository_lease,
    snapshot_paths,
)
from agent.runtime.agentenv import agent_environment
from agent.runtime.steps import Step, fail_on_sigterm

WEIGHTS = {"00progress": 0, "05replace": 0, "10restore": 4, "20label": 0}
PRE_RESTORE_HOOK = "module-pre-restore"
RESULT_FILE = "restic_restore.json"
DUMP_LIMIT = 1 << 20  # ui_name.dump, ui_note.dump: DUMPs of short strings
# Restores write under their own root: nothing else of the container is restic's to fill
# (the destination's mount is at /srv/destination).
RESTORE_ROOT = "/restore"


def restore_args(
    snapshot: str,
    paths: Sequence[str],
    *,
    whole: bool,
    dry_run: bool = False,
) -> list[str]:
    """`restic restore` of paths (all with none) under RESTORE_ROOT. A whole restore adds
    to what the new instance's create-module made, as NS8's does: it deletes nothing, and
    never writes the instance's identity and credentials (INSTANCE_PATHS)."""
    if whole:
        excludes = list(INSTANCE_PATHS)
        return restic_args.restore_args(snapshot, RESTORE_ROOT, excludes=excludes, dry_run=dry_run)
    # restic takes includes or excludes, not both: callers keep environment out of paths.
    return restic_args.restore_args(snapshot, RESTORE_ROOT, includes=paths, dry_run=dry_run)


@dataclass
class _Restored:
    last: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def run_restore(
    ctx: Context,
    repository: Repository,
    snapshot: str,
    paths: Sequence[str],
    mounts: Sequence[restic.Mount],
    on_progress: Callable[[int], None],
    *,
    whole: bool,
    user: proc.RunAs | None = None,
) -> dict[str, Any]:
    """Run `restic restore` (see restore_args) under the repository lease; the summary
    message, or raise. user: a rootless module's, whose podman restic runs in."""
    podman_env = ctx.settings.podman_env()
    check_reachable(repository)
    restored = _Restored()

    def on_message(message: Message) -> None:
        if isinstance(message, Status):
            on_progress(message.percent)
        elif isinstance(message, ItemError):
            restored.errors.append(message.message or f"cannot restore {message.item}")
        elif isinstance(message, ExitError):
            restored.errors.append(message.message)
        if isinstance(message, Status | Summary):
            restored.last = dict(message.fields)

    with repository_lease(
        ctx.redis, repository, podman_env, ctx.settings.storage_retry_seconds, run_as=user
    ) as lease:
        code, stderr = lease.stream(
            restore_args(snapshot, paths, whole=whole),
            on_message=on_message,
            mounts=mounts,
            podman_args=ctx.settings.restic_podman_args,
            # Below the mounts, so it exists (a gateway's repository mounts nothing, and
            # rootless podman does not make a missing workdir).
            workdir=RESTORE_ROOT,
        )
    if code != 0 or restored.errors:
        detail = "; ".join(restored.errors[:3]) or stderr
        raise ActionFailed(
            "restic restore failed: "
            + explain_read_failure(code or 1, detail, repository, snapshot)
        )
    return restored.last


# --- module action restore-module ------------------------------------------------------
def module_progress(step: Step, request: ModuleRestoreRequest) -> None:
    """00progress: the restic step is the long one."""
    for name, weight in WEIGHTS.items():
        step.send(f"set-weight {name} {weight}")


def module_restore(step: Step, request: ModuleRestoreRequest) -> dict[str, Any]:
    """10restore: the state dir and the volumes of state-include.conf from the snapshot."""
    fail_on_sigterm("restore cancelled")
    ctx = step.ctx
    agent_id = step.agent_id
    module_id = redis_keys.AgentId.parse(agent_id).module_id
    home = ctx.settings.agent_home(agent_id)
    state = ctx.settings.state_dir(agent_id)
    include = home / "etc" / "state-include.conf"
    volumes = included_volumes(include.read_text()) if include.is_file() else []
    paths = snapshot_paths(request.paths)
    for path in paths:
        parts = path.split("/")
        if path == "/state" or path in INSTANCE_PATHS:
            raise validation_error("paths", "path_is_module_identity", path)
        if parts[1] == "volumes" and (len(parts) < 3 or parts[2] not in volumes):
            raise validation_error("paths", "volume_not_restorable", path)
    # Through a gateway, with the module's own credentials: no destination secret here.
    # A rootless module's restic reaches it on the loopback (--network=host) as well.
    repository = open_module_repository(ctx, agent_id, request.repository, request.path)
    user = module_users.module_user(ctx.settings, module_id)
    if user is not None:
        module_users.image_in_user_store(
            ctx.settings, user, restic.IMAGE, ctx.settings.podman_env()
        )
    if paths:
        env = agent_environment(ctx.settings, agent_id)
        hook = shutil.which(PRE_RESTORE_HOOK, path=env["PATH"])
        if len(paths) > 1 or hook is not None:  # one missing path alone restores nothing
            refuse_missing_paths(ctx, repository, request.snapshot, paths, request.paths, user)
        if hook is not None:
            _run_pre_restore(hook, env, state, paths, user)
    # A rootless module's volumes are its own store's, named bare; podman makes those
    # missing and reuses those the node placed on another disk at add-module.
    mounts = [restic.Mount(str(state), f"{RESTORE_ROOT}/state")]
    mounts += [
        restic.Mount(name if user else f"{module_id}-{name}", f"{RESTORE_ROOT}/volumes/{name}")
        for name in volumes
    ]
    with _state_tree(ctx.settings, agent_id) as state_fd:
        summary = run_restore(
            ctx,
            repository,
            request.snapshot,
            paths,
            mounts,
            step.set_progress,
            whole=not paths,
            user=user,
        )
        # setuid/setgid files are kept only in the module's volumes, never in its state.
        restored_files.strip_setid(state_fd)
        try:
            text = json.dumps(summary) + "\n"
            owner = (user.uid, user.gid) if user else None
            restored_files.write_replacing(state_fd, RESULT_FILE, text.encode(), owner=owner)
        except OSError as exc:
            raise ActionFailed(f"cannot write state/{RESULT_FILE}: {exc}") from None
    # restic 0.18 leaves a file that already matches the snapshot out of total_files and
    # counts it in files_skipped: both mean the path was there.
    if paths and not _restored_any(summary):
        raise ActionFailed("none of the paths is in the snapshot: " + ", ".join(request.paths))
    return {"module_id": module_id, "paths": request.paths, **_counts(summary)}


@contextmanager
def _state_tree(settings: Settings, agent_id: str) -> Iterator[int]:
    """The agent's state dir as a directory fd reached without links, for the agent's own
    work in it after restic filled it; its owner and mode stay the node's, whatever the
    snapshot's copy of the directory said. A rootless module's is reached from its user's
    home (the user may change anything below it, so nothing there is followed)."""
    user = module_users.module_user(settings, redis_keys.AgentId.parse(agent_id).module_id)
    if user is None:
        base = settings.root
        relative = settings.state_dir(agent_id).relative_to(settings.root).parts
    else:
        base, relative = Path(user.home), (module_users.INSTALL_DIR, "state")
    try:
        opened = restored_files.open_beneath(base, relative)
    except restored_files.NotPlain as exc:
        raise ActionFailed(f"refused: {exc}") from None
    try:
        before = os.fstat(opened.fd)
        try:
            yield opened.fd
        finally:
            os.fchown(opened.fd, before.st_uid, before.st_gid)
            os.fchmod(opened.fd, stat.S_IMODE(before.st_mode))
    finally:
        opened.close()


def _restored_any(summary: dict[str, Any]) -> bool:
    return bool(summary.get("total_files") or summary.get("files_skipped"))


def _run_pre_restore(
    hook: str, env: dict[str, str], state: Path, paths: list[str], user: proc.RunAs | None
) -> None:
    done = proc.run([hook, *paths], env=env, cwd=state, timeout=3600, run_as=user)
    if done.returncode != 0:
        tail = done.error_text.strip().splitlines()[-1:] or ["no error output"]
        raise ActionFailed(f"{PRE_RESTORE_HOOK} failed (exit {done.returncode}): {tail[0]}")


def refuse_missing_paths(
    ctx: Context,
    repository: Repository,
    snapshot: str,
    paths: list[str],
    given: list[str],
    user: proc.RunAs | None = None,
) -> None:
    """A validation error, before anything changes, for each of paths (snapshot paths of
    the request's given ones) of which the snapshot holds nothing: restic would restore the
    others and pass over it in silence. A dry run lists what the restore would write."""
    check_reachable(repository)
    args = restore_args(snapshot, paths, whole=False, dry_run=True)
    done = restic.run(
        repository.target,
        repository.password,
        args,
        podman_env=ctx.settings.podman_env(),
        timeout=3600,
        run_as=user,
    )
    if done.returncode != 0:
        raise ActionFailed(
            "restic restore --dry-run failed: "
            + explain_read_failure(done.returncode, done.error_text, repository, snapshot)
        )
    found = [False] * len(paths)
    for message in restic_messages.parse_messages(done.text):
        if not isinstance(message, VerboseStatus):
            continue
        item = message.item
        for index, path in enumerate(paths):
            found[index] = found[index] or item == path or item.startswith(path + "/")
    missing = [given[index] for index, present in enumerate(found) if not present]
    if missing:
        errors = [validation_error("paths", "path_not_in_snapshot", path) for path in missing]
        raise ValidationFailed([row for error in errors for row in error.errors], exit_code=2)


def module_label(step: Step, request: ModuleRestoreRequest) -> None:
    """20label/20note: put back ui_name and ui_note dumped into the state dir, if any."""
    agent_id = step.agent_id
    module_id = redis_keys.AgentId.parse(agent_id).module_id
    keys = {
        "ui_name": redis_keys.module_ui_name(module_id),
        "ui_note": redis_keys.module_ui_note(module_id),
    }
    restore = str(step.ctx.settings.bin_dir / "redis-restore")
    with _state_tree(step.ctx.settings, agent_id) as state_fd:
        for name, key in keys.items():
            try:
                dump = restored_files.read_regular(state_fd, f"{name}.dump", DUMP_LIMIT)
            except restored_files.NotPlain as exc:
                raise ActionFailed(f"refused: state/{exc}") from None
            if dump is None:
                continue
            done = proc.run([restore, key, "--replace"], input=dump, timeout=60)
            if done.returncode != 0:
                raise ActionFailed(f"cannot restore {key}: {done.error_text.strip()}")
            restored_files.unlink(state_fd, f"{name}.dump")


# --- node action restore-files ---------------------------------------------------------
def node_restore_files(step: Step, request: RestoreFilesRequest) -> dict[str, Any]:
    """Snapshot paths into a new (or empty) directory under one of the node's restore
    roots, for an operator; no module touched, no setuid or setgid bit kept."""
    fail_on_sigterm("restore cancelled")
    paths = snapshot_paths(request.paths)
    root, parts = allowed_target(step.ctx.settings.restore_roots, request.target)
    repository = open_repository(step.ctx, request.repository, request.path)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        target = restored_files.open_beneath(root, parts, create=True)
    except restored_files.NotPlain:
        raise validation_error("target", "target_not_allowed", request.target) from None
    except OSError as exc:
        raise ActionFailed(f"cannot create {request.target}: {exc.strerror}") from None
    try:
        if not target.created and os.listdir(target.fd):
            raise validation_error("target", "target_not_empty", request.target)
        if len(paths) > 1:  # one missing path alone restores nothing
            refuse_missing_paths(step.ctx, repository, request.snapshot, paths, request.paths)
        mount = restic.Mount(str(root.joinpath(*parts)), RESTORE_ROOT)
        summary = run_restore(
            step.ctx, repository, request.snapshot, paths, [mount], step.set_progress, whole=False
        )
        restored_files.strip_setid(target.fd)
        if paths and not _restored_any(summary):
            raise ActionFailed("none of the paths is in the snapshot: " + ", ".join(request.paths))
    except BaseException:
        target.close()
        restored_files.remove_created(root, target.created)
        raise
    target.close()
    return {"target": request.target, "paths": request.paths, **_counts(summary)}


def allowed_target(roots: Sequence[Path], target: str) -> tuple[Path, tuple[str, ...]]:
    """(root, the parts of target below it) for the first root target is strictly under;
    a validation error for a target elsewhere, a root itself, or a path with '..'."""
    path = PurePosixPath(target)
    if path.is_absolute() and ".." not in path.parts:
        for root in roots:
            try:
                below = path.relative_to(root.as_posix())
            except ValueError:
                continue
            if below.parts:
                return root, below.parts
    raise validation_error("target", "target_not_allowed", target)


def _counts(summary: dict[str, Any]) -> dict[str, int]:
    return {
        "files_restored": int(summary.get("files_restored", 0)),
        "bytes_restored": int(summary.get("bytes_restored", 0)),
        "files_deleted": int(summary.get("files_deleted", 0)),
        "total_files": int(summary.get("total_files", 0)),
        "total_bytes": int(summary.get("total_bytes", 0)),
    }
