"""What can be restored: read-backup-repositories, read-backup-snapshots, eligibility."""

from __future__ import annotations

import base64
import json
import logging
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.adapters import gateway, rclone, restic
from agent.adapters.destinations import (
    Destination,
    check_destination,
    destination_volumes,
    load_destination,
    local_directory,
    rclone_target,
    url_body,
)
from agent.adapters.redis_store import Context
from agent.core import redis_keys, restic_args, restic_messages
from agent.core.errors import ActionFailed, AgentError
from agent.core.image_names import image_name
from agent.core.models import NoInput, RepositoryPathRequest, SnapshotRequest
from agent.operations.mirrors import mirror_sources
from agent.operations.restore_source import (
    check_reachable,
    explain_read_failure,
    open_repository,
    refuse_foreign_identity,
    snapshot_environment,
)
from agent.runtime import lease
from agent.runtime.steps import Step

log = logging.getLogger("agent.restore")
LIST_MOUNT = "/srv/listing"
# Only what discovery needs: each repository's config and the metadata beside it.
LIST_FILTERS = ("--include=/*/*/config", "--include=/*/*.json", "--max-depth=3")


def epoch(timestamp: str) -> int:
    """restic's RFC 3339 time → whole seconds since the epoch."""
    return int(restic_messages.parse_time(timestamp))


# --- read-backup-repositories ------------------------------------------------------------
def read_backup_repositories(step: Step, _request: NoInput) -> list[dict[str, Any]]:
    ctx = step.ctx
    ids = sorted(
        redis_keys.id_in_key(key)
        for key in ctx.redis.scan_iter(match=redis_keys.BACKUP_REPOSITORY_PATTERN, count=500)
    )
    destinations = []
    for destination_id in ids:
        try:
            destination = load_destination(ctx.redis, destination_id)
            if destination.provider != "local":  # a local one: per disk, _list_local_disks
                check_destination(destination, ctx.settings.local_policy())
            destinations.append(destination)
        except AgentError as exc:
            log.warning("skipping destination %s: %s", destination_id, exc)
    installed = _installed(ctx)
    cluster_uuid = ctx.redis.get(redis_keys.CLUSTER_UUID) or ""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="list") as pool:
        found = list(pool.map(lambda d: _repositories(ctx, d, installed), destinations))
    rows = []
    mirrored = mirror_sources(ctx.redis)  # issue #18: a mirror's repositories say so
    for destination, repositories in zip(destinations, found, strict=True):
        for path, timestamp, meta in repositories:
            row = _row(destination, path, timestamp, meta, installed, cluster_uuid)
            row["mirror_of"] = sorted(mirrored.get((destination.id, row["uuid"]), ()))
            rows.append(row)
    return rows


def _installed(ctx: Context) -> dict[str, tuple[str, str, str]]:
    """uuid → (module id, image name, ui name) of the modules installed now."""
    installed: dict[str, tuple[str, str, str]] = {}
    for module_id, module_uuid in sorted(ctx.redis.hgetall(redis_keys.MODULE_UUID).items()):
        image_url = ctx.redis.hget(redis_keys.module_environment(module_id), "IMAGE_URL") or ""
        try:
            name = image_name(image_url)
        except AgentError:
            name = ""
        label = ctx.redis.get(redis_keys.module_ui_name(module_id)) or ""
        installed.setdefault(module_uuid, (module_id, name, label))
    return installed


def _row(
    destination: Destination,
    path: str,
    timestamp: int,
    meta: dict[str, Any] | None,
    installed: dict[str, tuple[str, str, str]],
    cluster_uuid: str,
) -> dict[str, Any]:
    image, _, rest = path.partition("/")
    legacy_id, _, repo_uuid = rest.rpartition("@")
    meta = meta or {}
    instance = installed.get(repo_uuid)
    generated: bool | None = None
    if meta.get("cluster_uuid"):
        generated = meta["cluster_uuid"] == cluster_uuid
    if instance is not None:
        generated = True
    return {
        "module_id": str(meta.get("module_id") or legacy_id or (instance[0] if instance else "")),
        "module_ui_name": str(meta.get("module_ui_name") or ""),
        "node_fqdn": str(meta.get("node_fqdn") or ""),
        "path": path,
        "name": image,
        "uuid": repo_uuid,
        "timestamp": int(meta.get("timestamp") or timestamp),
        "repository_id": destination.id,
        "repository_name": destination.name,
        "repository_provider": destination.provider,
        "repository_url": destination.url,
        "installed_instance": instance[0] if instance else "",
        "installed_instance_ui_name": instance[2] if instance else "",
        "is_generated_locally": generated,
    }


Found = list[tuple[str, int, dict[str, Any] | None]]


def _repositories(
    ctx: Context, destination: Destination, installed: dict[str, tuple[str, str, str]]
) -> Found:
    try:
        if destination.provider == "rest":
            return _probe_rest(destination, installed)
        if destination.provider == "local":
            return _list_local_disks(ctx, destination)
        return _list_storage(ctx, destination)
    except (AgentError, OSError) as exc:
        log.warning("cannot list destination %s: %s", destination.name or destination.id, exc)
        return []


def _list_local_disks(ctx: Context, destination: Destination) -> Found:
    """The repositories of a `local` destination on this node's disk (when this node may
    read it) and, through their gateways' WebDAV, on the other nodes' disks at that path:
    the first node's row of a repository is kept. A node that cannot be listed is logged
    and skipped."""
    found: Found = []
    try:
        check_destination(destination, ctx.settings.local_policy())
        if Path(local_directory(destination)).is_dir():
            found += _list_storage(ctx, destination)
    except AgentError as exc:
        log.warning("cannot list %s on this node: %s", destination.name or destination.id, exc)
    credentials = gateway.Credentials.from_redis_url(ctx.settings.redis_url)
    addresses = gateway.gateway_addresses(ctx.redis, ctx.settings.node_id) if credentials else []
    for node, address in addresses:
        if node == ctx.settings.node_id or credentials is None:
            continue
        spec, env = gateway.webdav_remote(address, destination.id, credentials)
        try:
            found += _copy_listing(ctx, spec, env, ())
        except AgentError as exc:
            name = destination.name or destination.id
            log.warning("cannot list %s on node %s's disk: %s", name, node, exc)
    first: dict[str, tuple[str, int, dict[str, Any] | None]] = {}
    for row in found:
        first.setdefault(row[0], row)
    return list(first.values())


def _list_storage(ctx: Context, destination: Destination) -> Found:
    spec, env = rclone_target(destination)
    return _copy_listing(ctx, spec, env, destination_volumes(destination))


def _copy_listing(
    ctx: Context, spec: str, env: dict[str, str], volumes: tuple[tuple[str, str], ...]
) -> Found:
    """One rclone container copies every `<image>/<uuid>/config` and `<image>/<uuid>.json`
    of spec (modification times kept) into a scratch dir, read here."""
    ctx.settings.run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="listing-", dir=ctx.settings.run_dir) as scratch:
        volumes = (*volumes, (scratch, LIST_MOUNT))
        target = restic.ResticTarget(repository="", env=env, volumes=volumes)
        done = restic.run(
            target,
            "",
            rclone.copy_args(spec, LIST_MOUNT, LIST_FILTERS),
            podman_env=ctx.settings.podman_env(),
            entrypoint=rclone.ENTRYPOINT,
            timeout=300,
        )
        if done.returncode != 0:
            lines = done.error_text.strip().splitlines() or ["no error output"]
            raise AgentError(f"rclone exited with {done.returncode}: {lines[-1]}")
        return _read_listing(Path(scratch))


def _read_listing(root: Path) -> Found:
    found: Found = []
    for config in sorted(root.glob("*/*/config")):
        repo_dir = config.parent
        path = f"{repo_dir.parent.name}/{repo_dir.name}"
        meta_file = repo_dir.parent / f"{repo_dir.name}.json"
        meta = None
        if meta_file.is_file():
            try:
                loaded = json.loads(meta_file.read_text())
                meta = loaded if isinstance(loaded, dict) else None
            except ValueError:
                meta = None
        found.append((path, int(config.stat().st_mtime), meta))
    return found


def _probe_rest(destination: Destination, installed: dict[str, tuple[str, str, str]]) -> Found:
    """A REST server cannot be listed: ask it for the config of each installed module's
    repository (HEAD, the REST protocol's own check). Removed modules stay unseen."""
    base = url_body(destination.url).rstrip("/")
    headers = {}
    user = destination.parameters.get("rest_user")
    if user:
        secret = f"{user}:{destination.parameters.get('rest_password', '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
    found: Found = []
    for module_uuid, (_module_id, name, _label) in sorted(installed.items()):
        if not name:
            continue
        path = f"{name}/{module_uuid}"
        request = urllib.request.Request(f"{base}/{path}/config", headers=headers, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                modified = response.headers.get("Last-Modified")
        except urllib.error.HTTPError:
            continue
        timestamp = 0
        if modified:
            timestamp = int(datetime.strptime(modified, "%a, %d %b %Y %H:%M:%S %Z").timestamp())
        found.append((path, timestamp, None))
    return found


# --- read-backup-snapshots -----------------------------------------------------------------
def read_backup_snapshots(step: Step, request: RepositoryPathRequest) -> list[dict[str, Any]]:
    return list_snapshots(step.ctx, request.repository, request.path)


def list_snapshots(
    ctx: Context, destination_id: str, path: str, tags: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The snapshots (with tags) of the repository at path, as read-backup-snapshots lists
    them; raises ActionFailed (or ValidationFailed) when they cannot be read."""
    repository = open_repository(ctx, destination_id, path)
    check_reachable(repository)
    done = restic.run(
        repository.target,
        repository.password,
        restic_args.snapshots_args(tags=tags),
        podman_env=ctx.settings.podman_env(),
        timeout=600,
    )
    if done.returncode != 0:
        raise ActionFailed(explain_read_failure(done.returncode, done.error_text, repository, ""))
    return [snapshot_row(item) for item in json.loads(done.text or "[]")]


def snapshot_row(snapshot: dict[str, Any]) -> dict[str, Any]:
    summary = snapshot.get("summary") or {}
    return {
        "timestamp": epoch(str(snapshot["time"])),
        "id": str(snapshot["id"]),
        "total_bytes": int(summary.get("total_bytes_processed", -1)),
        "backup_start": str(summary.get("backup_start", "")),
        "backup_end": str(summary.get("backup_end", "")),
    }


# --- determine-restore-eligibility ---------------------------------------------------------
def determine_restore_eligibility(step: Step, request: SnapshotRequest) -> dict[str, Any]:
    """The backup's image and, per node, how many instances of it run and if it can go there.

    There is no module catalog here (NS8's list_available): every node whose daemon
    runs is eligible, as NS8 does for an image it cannot find."""
    redis = step.ctx.redis
    repository = open_repository(step.ctx, request.repository, request.path)
    podman_env = step.ctx.settings.podman_env()
    _, environment = snapshot_environment(
        redis, repository, request.snapshot, podman_env, step.ctx.settings.node_id
    )
    refuse_foreign_identity(redis, repository, environment)
    image_url = environment["IMAGE_URL"]
    name = image_name(image_url)
    counts: dict[str, int] = {}
    for module_id, node in redis.hgetall(redis_keys.MODULE_NODE).items():
        url = redis.hget(redis_keys.module_environment(module_id), "IMAGE_URL") or ""
        if url and image_name(url) == name:
            counts[node] = counts.get(node, 0) + 1
    destinations = []
    for node_id in sorted(int(n) for n in redis.smembers(redis_keys.CLUSTER_NODES)):
        served = lease.is_served(redis, node_id)
        destinations.append(
            {
                "node_id": node_id,
                "instances": counts.get(str(node_id), 0),
                "eligible": served,
                "reject_reason": None
                if served
                else {"message": "node_not_running", "parameter": "node"},
            }
        )
    return {"image_url": image_url, "install_destinations": destinations}
