"""Reading a backup for a restore: repository paths, the snapshot's environment, the lease."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.adapters import gateway, proc, restic
from agent.adapters.destinations import (
    Destination,
    check_destination,
    load_destination,
    local_directory,
    local_snapshot_names,
    restic_target,
)
from agent.adapters.redis_store import REDIS_ERRORS, Context, Redis
from agent.adapters.restic_errors import Exit, explain_restic_failure, is_snapshot_missing
from agent.core import redis_keys, restic_args
from agent.core.destination_rules import DestinationNotAllowed
from agent.core.errors import ActionFailed, DestinationNotFound, ValidationFailed, validation_error
from agent.core.image_names import image_name
from agent.core.models import INSTANCE_FILES
from agent.core.restic_args import snapshot_arg
from agent.core.volumes import ENVIRONMENT
from agent.operations.reachability import unreachable_reason
from agent.operations.repository_lease import (
    RepositoryBusy,
    RepositoryLease,
    StaleLocksKept,
    open_lease,
)
from agent.records import snapshot_environments
from agent.runtime.agentenv import parse_env_text

log = logging.getLogger("agent.restore")
ENVIRONMENT_PATH = f"/{ENVIRONMENT}"  # where every snapshot keeps the module's identity
# Never restored from a snapshot: the new instance's own identity and credentials.
INSTANCE_PATHS = tuple(f"/{name}" for name in INSTANCE_FILES)
LEASE_WAIT_SECONDS = 600.0


@dataclass(frozen=True)
class RepoPath:
    """'<image>/<uuid>' or the legacy '<image>/<module_id>@<uuid>'."""

    image: str
    uuid: str
    legacy_module_id: str
    path: str


def parse_repo_path(path: str) -> RepoPath:
    image, _, rest = path.strip("/").partition("/")
    module_id, _, module_uuid = rest.rpartition("@")
    if not image or not module_uuid or "/" in rest:
        raise validation_error("path", "path_invalid", path)
    return RepoPath(image, module_uuid, module_id, f"{image}/{rest}")


def snapshot_paths(paths: list[str]) -> list[str]:
    """'volumes/pages/a.md' → '/volumes/pages/a.md'; '..' and empty parts are refused."""
    normalized = []
    for path in paths:
        clean = "/" + path.strip("/")
        if posixpath.normpath(clean) != clean or "/../" in clean + "/":
            raise validation_error("paths", "path_invalid", path)
        normalized.append(clean)
    return normalized


@dataclass(frozen=True)
class Repository:
    destination: Destination
    path: RepoPath
    target: restic.ResticTarget
    # (node, address) of the gateway serving it: a `local` disk only another node holds
    gateway: tuple[int, str] | None = None

    @property
    def password(self) -> str:
        return self.destination.password

    @property
    def lease_key(self) -> str:
        return redis_keys.repository_lease(self.destination.id, self.path.path)


def open_repository(ctx: Context, destination_id: str, path: str) -> Repository:
    """The repository at path on a destination this node may reach (its local roots and
    rclone rules apply to reads as they do to backups)."""
    repo_path = parse_repo_path(path)
    try:
        destination = load_destination(ctx.redis, destination_id)
    except DestinationNotFound:
        raise validation_error(
            "repository", "backup_repository_not_found", destination_id
        ) from None
    if destination.provider == "local" and not _on_this_node(ctx, destination, repo_path.path):
        served = _through_other_gateway(ctx, destination, repo_path)
        if served is not None:
            return served
    check_destination(destination, ctx.settings.local_policy())
    return Repository(destination, repo_path, restic_target(destination, repo_path.path))


def _on_this_node(ctx: Context, destination: Destination, path: str) -> bool:
    """Whether this node may read the `local` destination and its disk has the repository."""
    try:
        check_destination(destination, ctx.settings.local_policy())
    except DestinationNotAllowed:
        return False
    return Path(local_directory(destination), path, "config").is_file()


def _through_other_gateway(
    ctx: Context, destination: Destination, repo_path: RepoPath
) -> Repository | None:
    """The repository through the gateway of another node whose disk holds it, with this
    node's own credentials (nodes may do anything there); None when no other node's does,
    or this node has no Redis user of its own to show."""
    credentials = gateway.Credentials.from_redis_url(ctx.settings.redis_url)
    if credentials is None:
        return None
    holder = gateway.remote_holder(
        ctx.redis, ctx.settings.node_id, credentials, destination.id, repo_path.path
    )
    if holder is None:
        return None
    log.info("%s on %s: through node %s's gateway", repo_path.path, destination.id, holder[0])
    target = gateway.gateway_target(holder[1], destination.id, repo_path.path, credentials)
    return Repository(destination, repo_path, target, holder)


def check_reachable(repository: Repository) -> None:
    if repository.gateway is not None:
        node, address = repository.gateway
        if not gateway.answers(address):
            raise ActionFailed(
                f"cannot read {repository.path.path}: node {node}'s gateway at {address} "
                "does not answer"
            )
        return
    reason = unreachable_reason(repository.destination)
    if reason:
        raise ActionFailed(f"cannot read {repository.path.path}: {reason}")


def explain_read_failure(code: int, stderr: str, repository: Repository, snapshot: str) -> str:
    where = f"{repository.path.path} on {repository.destination.name or repository.destination.id}"
    if is_snapshot_missing(stderr):
        return f"snapshot {snapshot_arg(snapshot)} not found in {where}"
    if code == Exit.NO_REPOSITORY:
        return f"no restic repository at {where}"
    return f"{where}: {explain_restic_failure(code, stderr)}"


def read_environment_text(
    repository: Repository, snapshot: str, podman_env: Mapping[str, str]
) -> str:
    """The module's state/environment as the snapshot holds it (`restic dump`); fails
    when it names no image."""
    check_reachable(repository)
    done = restic.run(
        repository.target,
        repository.password,
        restic_args.dump_args(snapshot, ENVIRONMENT_PATH),
        podman_env=podman_env,
        timeout=600,
    )
    if done.returncode != 0:
        raise ActionFailed(
            explain_read_failure(done.returncode, done.error_text, repository, snapshot)
        )
    if not parse_env_text(done.text).get("IMAGE_URL"):
        raise ActionFailed(f"the snapshot of {repository.path.path} names no IMAGE_URL")
    return done.text


def snapshot_environment(
    redis: Redis,
    repository: Repository,
    snapshot: str,
    podman_env: Mapping[str, str],
    node_id: int,
) -> tuple[str, dict[str, str]]:
    """(the snapshot to restore, the module's state/environment in it): from the record
    the node that wrote the snapshot left, else read from the repository. When the record
    tells which snapshot `latest` is, its id comes back in place of `latest`, so that
    what is installed and what is restored come from the same snapshot.

    A file read from the repository by its whole snapshot id is recorded on node_id (the
    node running this step): the restore that follows determine-restore-eligibility, or
    one tried again, finds it there and needs no restic run to know the image."""
    recorded = _recorded(redis, repository, snapshot)
    environment = parse_env_text(recorded[1]) if recorded else {}
    if recorded and environment.get("IMAGE_URL"):
        check_reachable(repository)  # as reading it would have: fail before installing
        log.info("%s@%s: environment from the backup record", repository.path, recorded[0])
        return recorded[0], environment
    text = read_environment_text(repository, snapshot, podman_env)
    if snapshot_environments.WHOLE_ID.fullmatch(snapshot):
        try:
            snapshot_environments.record(
                redis, node_id, snapshot, repository.destination.id, repository.path.path, text
            )
        except REDIS_ERRORS as exc:  # only a later restore's shortcut is lost
            log.warning("%s@%s: environment not recorded: %s", repository.path, snapshot, exc)
    return snapshot, parse_env_text(text)


def _recorded(redis: Redis, repository: Repository, snapshot: str) -> tuple[str, str] | None:
    destination, path = repository.destination, repository.path.path
    if snapshot_arg(snapshot) != "latest":
        text = snapshot_environments.lookup(redis, destination.id, path, snapshot)
        return (snapshot, text) if text else None
    # The newest of every snapshot the repository holds: only a local one can be listed
    # without restic.
    names = local_snapshot_names(destination, path) if repository.gateway is None else None
    return snapshot_environments.newest(redis, destination.id, path, names) if names else None


def refuse_foreign_identity(
    redis: Redis, repository: Repository, environment: Mapping[str, str]
) -> None:
    """A snapshot is restored as what its repository path says it is: the image its
    environment names must be the path's image, and the uuid the path's uuid (or one the
    cluster recorded as restored from it, or restored into it). Raise before any change."""
    path = repository.path
    image_url = environment.get("IMAGE_URL", "")
    try:
        named = image_name(image_url)
    except ValidationFailed:
        named = ""
    if named != path.image:
        raise _refused(
            path, "image", f"its state/environment names image {image_url!r}, not {path.image}"
        )
    claimed = environment.get("MODULE_UUID", "")
    if claimed != path.uuid and not _restored_from(redis, path.uuid, claimed):
        raise _refused(
            path,
            "uuid",
            f"its state/environment claims module uuid {claimed or 'none'}, not {path.uuid}",
        )


def _restored_from(redis: Redis, one: str, other: str) -> bool:
    if not other:
        return False
    recorded = redis.hmget(redis_keys.RESTORE_UUID, [one, other])
    return bool(recorded[0] == other or recorded[1] == one)


def _refused(path: RepoPath, what: str, reason: str) -> ActionFailed:
    row = {
        "field": "path",
        "parameter": "path",
        "value": path.path,
        "error": f"snapshot_{what}_mismatch",
    }
    return ActionFailed(
        f"refused: the snapshot of {path.path} is not that module's: {reason}", 2, [row]
    )


@contextmanager
def repository_lease(
    redis: Redis,
    repository: Repository,
    podman_env: Mapping[str, str],
    retry_limit: float | None = None,
    run_as: proc.RunAs | None = None,
) -> Iterator[RepositoryLease]:
    """Exclusive use of the repository, with restic's locks judged by the lease (see
    agent/operations/repository_lease.py); run_as: restic runs as that user."""
    try:
        with open_lease(
            redis,
            repository.lease_key,
            repository.target,
            repository.password,
            podman_env,
            wait_seconds=LEASE_WAIT_SECONDS,
            retry_limit=retry_limit,
            run_as=run_as,
        ) as lease:
            yield lease
    except RepositoryBusy as busy:
        raise ActionFailed(f"repository {repository.path.path} is busy ({busy})") from None
    except StaleLocksKept as kept:
        raise ActionFailed(f"{repository.path.path}: {kept}") from None


def settle_lease(ctx: Context, repository: Repository) -> None:
    """After a failed restore: a lease its killed step left behind is taken over now (the
    restic containers it left on this node stopped, restic's locks removed) and released,
    so nothing of the restore stays; a lease a live holder keeps is left alone."""
    try:
        with open_lease(
            ctx.redis,
            repository.lease_key,
            repository.target,
            repository.password,
            ctx.settings.podman_env(),
            wait_seconds=0,
            retry_limit=ctx.settings.storage_retry_seconds,
        ):
            pass
    except RepositoryBusy:
        pass  # in use: its holder is alive, and cleans up after itself
    except StaleLocksKept as exc:  # left marked abandoned: the next holder cleans up
        log.warning("%s: lease not settled after the failed restore: %s", repository.path, exc)
    except REDIS_ERRORS as exc:  # the restore's own failure is the one to report
        log.warning("%s: lease not settled after the failed restore: %s", repository.path, exc)
