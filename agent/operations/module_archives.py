"""export-module-backup and import-module-backup: one module's snapshot as a single file.

Export streams `restic dump --archive tar` into the archive (agent/module_archive.py).
Import runs on the node holding the file: it verifies the whole archive first (nothing is
installed from a damaged one), unpacks it with GNU tar (owners, modes, exact times, hard
links, xattrs) into a scratch directory under the node's data dir and backs that up into
a scratch restic repository; the cluster then restores from it exactly as restore-module
does, through a destination that exists for the length of the import, and removes both.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from agent.adapters import proc, restic, tar
from agent.adapters.destinations import Destination, restic_target
from agent.adapters.redis_store import Context
from agent.core import module_archive, redis_keys, restic_args
from agent.core.errors import ActionFailed, validation_error
from agent.core.image_names import image_name
from agent.core.models import (
    ExportModuleBackupRequest,
    ImportModuleBackupRequest,
    PrepareModuleArchiveRequest,
    ScratchRequest,
)
from agent.core.restic_args import snapshot_arg
from agent.core.restic_messages import Message, Other
from agent.operations.restore import WholeRestore, restore_whole
from agent.operations.restore_source import open_repository, snapshot_environment
from agent.runtime import tasks
from agent.runtime.steps import Step, cancel_on_sigterm


def tool_version() -> str:
    try:
        return importlib.metadata.version("backup-agent")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(module_archive.CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- export ------------------------------------------------------------------------------
def export_module_backup(step: Step, request: ExportModuleBackupRequest) -> dict[str, Any]:
    ctx = step.ctx
    podman_env = ctx.settings.podman_env()
    repository = open_repository(ctx, request.repository, request.path)
    snapshot, environment = snapshot_environment(
        ctx.redis, repository, request.snapshot, podman_env, ctx.settings.node_id
    )
    facts: dict[str, module_archive.NodeFacts] = {}
    head: dict[str, Any] = {}

    def on_listing(message: Message) -> None:
        if not isinstance(message, Other):
            return
        fields = dict(message.fields)
        if fields.get("struct_type") == "snapshot":
            head.update(fields)
        parsed = module_archive.parse_ls_node(fields)
        if parsed:
            facts[parsed[0]] = parsed[1]
            head["bytes"] = head.get("bytes", 0) + int(fields.get("size") or 0)

    code, stderr = restic.stream(
        repository.target,
        repository.password,
        restic_args.ls_args(snapshot),
        podman_env=podman_env,
        on_message=on_listing,
    )
    if code != 0 or not head.get("id"):
        raise ActionFailed(
            f"cannot list snapshot {snapshot_arg(snapshot)}: {stderr.strip()[-300:]}"
        )
    step.set_progress(5)
    module_id = environment.get("MODULE_ID") or repository.path.image
    directory = Path(request.directory or ctx.settings.root / "exports")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{module_id}-{head['id'][:8]}{module_archive.SUFFIX}"
    identity = {
        "tool": "backup-agent",
        "tool_version": tool_version(),
        "image_url": environment["IMAGE_URL"],
        "module_id": module_id,
        "module_uuid": environment.get("MODULE_UUID") or repository.path.uuid,
        "snapshot": {"id": head["id"], "time": head.get("time", "")},
        "created": int(time.time()),
    }
    total = max(1, int(head.get("bytes", 0)))
    done = [0]

    def on_bytes(count: int) -> None:
        done[0] += count
        step.set_progress(5 + 94 * min(done[0], total) // total)

    argv = restic.podman_run_argv(
        repository.target, restic_args.dump_args(head["id"], "/", archive="tar")
    )
    env = proc.merged_env(
        {**podman_env, **restic.container_env(repository.target, repository.password)}
    )
    partial = target.with_name(f".{target.name}.part")
    with tempfile.TemporaryFile() as errors, partial.open("wb") as out:
        child = proc.spawn(argv, env=env, stdin=proc.DEVNULL, stderr=errors, new_session=False)
        assert child.stdout is not None
        try:
            manifest = module_archive.write_archive(child.stdout, out, facts, identity, on_bytes)
        except BaseException:
            child.kill()
            child.wait()
            partial.unlink(missing_ok=True)
            raise
        finally:
            child.stdout.close()
        if child.wait() != 0:
            errors.seek(0)
            partial.unlink(missing_ok=True)
            raise ActionFailed(
                f"restic dump failed: {errors.read().decode(errors='replace')[-300:]}"
            )
        out.flush()
    partial.replace(target)
    step.set_progress(100)
    return {
        "path": str(target),
        "sha256": sha256_of(target),
        "size": target.stat().st_size,
        "files": manifest["files"],
        "bytes": manifest["bytes"],
        "module_id": module_id,
        "snapshot": head["id"],
    }


# --- import: the node part -----------------------------------------------------------------
def scratch_dir(ctx: Context, scratch: str) -> Path:
    return ctx.settings.imports_dir / scratch


def scratch_destination(directory: Path, password: str) -> Destination:
    return Destination(
        id=str(uuid.uuid4()),
        name="module archive import",
        provider="local",
        url=f"local:{directory / 'repo'}",
        password=password,
    )


def prepare_module_archive(step: Step, request: PrepareModuleArchiveRequest) -> dict[str, Any]:
    """Verify the archive, unpack it and back it up into a scratch repository."""
    archive = Path(request.file)
    if not archive.is_file():
        raise validation_error("file", "file_not_found", request.file)
    size = max(1, archive.stat().st_size * 3)  # the tar inside is larger than the file
    done = [0]

    def on_bytes(count: int) -> None:
        done[0] += count
        step.set_progress(min(40, 40 * done[0] // size))

    with archive.open("rb") as stream:
        try:
            manifest = module_archive.verify_archive(stream, on_bytes)
        except module_archive.ArchiveDamaged as exc:
            raise validation_error("file", "archive_damaged", str(exc)) from None
    step.set_progress(40)
    image = image_name(str(manifest["image_url"]))
    repo_path = f"{image}/{manifest['module_uuid']}"
    directory = scratch_dir(step.ctx, request.scratch)
    tree = directory / "tree"
    tree.mkdir(parents=True)
    proc.run(tar.unpack_argv(archive, tree, module_archive.MANIFEST), timeout=24 * 3600, check=True)
    step.set_progress(60)
    destination = scratch_destination(directory, request.password)
    (directory / "repo").mkdir()
    target = restic_target(destination, repo_path)
    podman_env = step.ctx.settings.podman_env()
    done_init = restic.run(
        target, request.password, restic_args.init_args(), podman_env=podman_env, timeout=600
    )
    if done_init.returncode != 0:
        raise ActionFailed(f"scratch repository: {done_init.error_text.strip()[-300:]}")
    # Mounted as a backup mounts them, so the snapshot's paths are the original's.
    present = [name for name in ("state", "volumes") if (tree / name).is_dir()]
    roots = "".join(f"{name}\n" for name in present)
    code, stderr = restic.stream(
        target,
        request.password,
        restic_args.backup_args(tags=[f"uuid={manifest['module_uuid']}"]),
        podman_env=podman_env,
        on_message=lambda _m: None,
        mounts=[restic.Mount(str(tree / name), f"/srv/{name}", read_only=True) for name in present],
        stdin_text=lambda: roots,
    )
    if code != 0:
        raise ActionFailed(f"scratch backup failed: {stderr.strip()[-300:]}")
    shutil.rmtree(tree)
    step.set_progress(100)
    return {
        "url": destination.url,
        "path": repo_path,
        "image_url": manifest["image_url"],
        "module_uuid": manifest["module_uuid"],
        "snapshot": manifest["snapshot"],
    }


def discard_module_archive(step: Step, request: ScratchRequest) -> None:
    shutil.rmtree(scratch_dir(step.ctx, request.scratch), ignore_errors=True)


# --- import: the cluster part --------------------------------------------------------------
def import_module_backup(step: Step, request: ImportModuleBackupRequest) -> dict[str, Any]:
    redis = step.ctx.redis
    if not redis.sismember(redis_keys.CLUSTER_NODES, request.node):
        raise validation_error("node", "node_not_found", request.node)
    cancelled = cancel_on_sigterm()
    node_agent = redis_keys.node_agent(request.node)
    scratch, password = secrets.token_hex(8), secrets.token_hex(32)
    prepare = tasks.TaskRequest(
        node_agent,
        "prepare-module-archive",
        {"file": request.file, "scratch": scratch, "password": password},
        step.task_id,
    )
    destination_id = str(uuid.uuid4())
    try:
        result = tasks.run_parallel(redis, [prepare], step.progress_range(0, 30), cancelled)[0]
        if result.exit_code != 0:
            output = result.output if isinstance(result.output, list) else None
            raise ActionFailed(
                f"archive refused: {(result.error or '').strip()[-300:]}",
                2 if result.exit_code in (2, 10) else 1,
                output,
            )
        prepared = dict(result.output)
        import_destination = Destination(
            id=destination_id,
            name="module archive import",
            provider="local",
            url=str(prepared["url"]),
            password=password,
        )
        with redis.pipeline(transaction=True) as pipe:
            import_destination.to_redis(pipe)
            pipe.execute()
        job = WholeRestore(destination_id, prepared["path"], "", request.node)
        added = restore_whole(step, job, cancelled, span=(30, 100))
        return {**added, "snapshot": prepared["snapshot"], "archive": request.file}
    finally:
        redis.delete(
            redis_keys.backup_repository(destination_id),
            redis_keys.backup_repository_private(destination_id),
        )
        discard = tasks.TaskRequest(
            node_agent, "discard-module-archive", {"scratch": scratch}, step.task_id
        )
        tasks.run_parallel(redis, [discard], lambda _s, _p: None, None)
