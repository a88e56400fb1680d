"""One `restic backup` run under a repository lease, and the `restic init` a first
backup needs (never for a repository this cluster wrote before)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.adapters import proc, restic
from agent.adapters.destinations import Destination
from agent.adapters.redis_store import Redis
from agent.core import restic_args, restic_messages
from agent.core.errors import AgentError
from agent.core.restic_messages import ItemError, Message, Status, Summary
from agent.operations import repositories_known
from agent.operations.repository_lease import RepositoryLease

INIT_TIMEOUT = 600


class RepositoryNotCreated(AgentError):
    """The repository is missing and is not (or could not be) created."""


@dataclass
class BackupResult:
    """What one `restic backup` run reported."""

    code: int = -1
    stderr: str = ""
    summary: Summary = field(default_factory=lambda: Summary({}))
    unreadable: list[str] = field(default_factory=list)  # paths below /srv, or errors

    @property
    def snapshot_id(self) -> str:
        return self.summary.text("snapshot_id")


def run_restic_backup(
    lease: RepositoryLease,
    args: Sequence[str],
    *,
    mounts: Sequence[restic.Mount],
    sources: Callable[[], str],
    podman_args: Sequence[str],
    on_progress: Callable[[int], None],
) -> BackupResult:
    """`restic backup` (args) reading its paths from sources, progress in percent."""
    result = BackupResult()

    def on_message(message: Message) -> None:
        if isinstance(message, Status):
            on_progress(message.percent)
        elif isinstance(message, Summary):
            result.summary = message
        elif isinstance(message, ItemError):
            result.unreadable.append(message.item.removeprefix("/srv/") or message.message)

    result.code, result.stderr = lease.stream(
        args, on_message=on_message, mounts=mounts, podman_args=podman_args, stdin_text=sources
    )
    return result


def create_repository(
    lease: RepositoryLease, redis: Redis, destination: Destination, path: str
) -> None:
    """`restic init`, unless this cluster wrote there before: a repository that vanished
    (a disk not mounted, a bucket emptied) is never made anew where the next backups
    would land unnoticed."""
    if repositories_known.is_known(redis, destination.id, path):
        raise RepositoryNotCreated(
            f"repository vanished (disk not mounted?): {path} on "
            f"{destination.name or destination.id} was written before and "
            "now reads as missing; it is not created again"
        )
    init = lease.run(restic_args.init_args(), timeout=INIT_TIMEOUT)
    if init.returncode != 0:
        raise RepositoryNotCreated(
            f"cannot create the repository: {proc.last_line(init.error_text)}"
        )
    repositories_known.remember(
        redis, destination.id, path, restic_messages.parse_init_id(init.text)
    )
