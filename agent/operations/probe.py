"""Node action validate-backup-destination: read, create, delete a probe on the storage."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import Any

from agent.adapters import proc, rclone, restic
from agent.adapters.destinations import (
    Destination,
    check_destination,
    destination_volumes,
    load_destination,
    local_directory,
    rclone_target,
    url_body,
)
from agent.adapters.redis_store import Redis
from agent.core import redis_keys
from agent.core.destination_rules import DestinationNotAllowed
from agent.core.errors import validation_error
from agent.core.models import ValidateDestinationRequest
from agent.core.settings import Settings
from agent.records.stored import parse_stored_json
from agent.runtime.steps import Step

HTTP_TIMEOUT = 5.0
CONTAINER_TIMEOUT = 90.0  # far above rclone's own bounds; only a stuck podman hits it
CANDIDATE_TTL = 600


def write_candidate(redis: Redis, token: str, destination: Destination) -> None:
    payload = {**asdict(destination), "parameters": dict(destination.parameters)}
    redis.set(redis_keys.backup_repository_candidate(token), json.dumps(payload), ex=CANDIDATE_TTL)


def read_candidate(redis: Redis, token: str) -> Destination | None:
    key = redis_keys.backup_repository_candidate(token)
    text = redis.get(key)
    return parse_stored_json(Destination, key, text) if text else None


def node_validate_destination(step: Step, request: ValidateDestinationRequest) -> dict[str, Any]:
    redis = step.ctx.redis
    if request.candidate:
        destination = read_candidate(redis, request.candidate)
        if destination is None or destination.id != request.id:
            raise validation_error("id", "backup_repository_not_found", request.id)
    else:
        destination = load_destination(redis, request.id)
    name = f".probe-{step.task_id or os.urandom(8).hex()}"
    try:
        check_destination(destination, step.ctx.settings.local_policy())
    except DestinationNotAllowed as exc:
        raise validation_error("", exc.code, {}, exit_code=2) from None
    error = probe(destination, step.ctx.settings, name)
    if error:
        raise validation_error("", error, {}, exit_code=2)
    return {"node_id": step.ctx.settings.node_id, "id": request.id}


def probe(destination: Destination, settings: Settings, name: str) -> str:
    """'' when the destination can be read, written and deleted from; else the NS8 error."""
    if destination.provider == "rest":
        return probe_rest(destination, name)
    # Never created here: a missing directory is a disk not mounted, and a probe that
    # made it would have the backups fill the disk under the mount point.
    if destination.provider == "local" and not os.path.isdir(local_directory(destination)):
        return "backup_repository_not_accessible"
    remote, env = rclone_target(destination)
    target = restic.ResticTarget("", env=env, volumes=destination_volumes(destination))
    for step, args, error in rclone.probe_plan(remote, name):
        # workdir "/": the image has no /srv unless something is mounted below it.
        argv = restic.podman_run_argv(target, args, entrypoint=rclone.ENTRYPOINT, workdir="/")
        try:
            result = proc.run(
                argv,
                env={**settings.podman_env(), **restic.container_env(target, "")},
                input=b"backup destination probe\n" if step == "write" else None,
                timeout=CONTAINER_TIMEOUT,
            )
        except proc.TimeoutExpired:
            return "backup_repository_not_accessible"
        if result.returncode == 0:
            continue
        if (
            step == "read"
            and result.returncode == rclone.EXIT_DIRECTORY_NOT_FOUND
            and destination.provider != "local"
        ):
            continue  # a remote directory not found yet: the write step creates it
        if step == "read" and rclone.is_unreachable(result.error_text):
            return "backup_repository_not_accessible"
        return error
    return ""


def _request(url: str, method: str, auth: str, data: bytes | None = None) -> int:
    """HTTP status of one request; 0 when the server cannot be reached."""
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/vnd.x.restic.rest.v2")
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def probe_rest(destination: Destination, name: str) -> str:
    """restic's REST protocol has no directories: the probe is a lock file of a `.probe`
    repository (the one path every append-only server still lets us delete)."""
    params = destination.parameters
    auth = ""
    if params.get("rest_user"):
        pair = f"{params['rest_user']}:{params.get('rest_password', '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    base = url_body(destination.url).rstrip("/")
    status = _request(f"{base}/config", "GET", auth)
    if status == 0:
        return "backup_repository_not_accessible"
    if status in (401, 403):
        return "no_read_permission"
    if status not in (200, 404):
        return "backup_repository_not_accessible"
    lock = f"{base}/.probe/locks/{os.urandom(32).hex()}"
    if _request(lock, "POST", auth, data=name.encode()) != 200:
        return "no_write_permission"
    if _request(lock, "DELETE", auth) != 200:
        return "no_delete_permission"
    return ""
