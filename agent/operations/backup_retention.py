"""Retention of one backup definition's snapshots in a module's repository: counted
beside the backup when no count is known, `restic forget --prune` only when it would
remove something."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from agent.adapters import proc
from agent.adapters.destinations import Destination, local_snapshot_names
from agent.adapters.redis_store import Redis
from agent.adapters.restic_errors import Exit
from agent.core import restic_args, restic_messages
from agent.core.errors import AgentError
from agent.operations.repository_lease import RepositoryLease
from agent.records import snapshot_environments

LIST_TIMEOUT = 600
FORGET_TIMEOUT = 3600


@dataclass(frozen=True)
class Retention:
    keep_last: int
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None


class RetentionFailed(AgentError):
    """`restic forget` failed; the snapshot just made stays."""


def backup_tag(backup_id: int) -> str:
    """The tag every snapshot of a backup definition carries."""
    return f"backup={backup_id}"


class SnapshotCount:
    """Snapshot ids `restic snapshots` listed, from another thread."""

    def __init__(self) -> None:
        self.ids: list[str] | None = None

    def record(self, code: int, text: str) -> None:
        if code == Exit.NO_REPOSITORY:
            self.ids = []  # created by this very run: nothing was there before it
            return
        if code != Exit.OK:
            return
        listed = restic_messages.parse_snapshot_ids(text)
        if listed is not None:
            self.ids = listed

    def before(self, new_id: str) -> int | None:
        """How many there were before the snapshot new_id (the listing may include it)."""
        if self.ids is None:
            return None
        if not new_id:
            return len(self.ids)
        return len([i for i in self.ids if not (i.startswith(new_id) or new_id.startswith(i))])


@contextlib.contextmanager
def counted_alongside(
    lease: RepositoryLease,
    destination: Destination,
    path: str,
    backup_id: int,
    known: int | None,
) -> Iterator[SnapshotCount]:
    """While the body runs, count the backup's snapshots in the repository, when no
    earlier run left a count to trust (known is None: first run, restored module): a
    `restic snapshots` beside the backup costs far less than a `forget` after it. A local
    repository without any snapshot file needs no restic at all: the count is 0."""
    count = SnapshotCount()
    if known is not None:
        yield count
        return
    if local_snapshot_names(destination, path) == []:
        count.ids = []
        yield count
        return
    args = restic_args.snapshots_args(tags=[backup_tag(backup_id)])

    def list_snapshots() -> None:
        done = lease.run(args, timeout=LIST_TIMEOUT)
        count.record(done.returncode, done.text)

    thread = threading.Thread(target=list_snapshots, name="count-snapshots", daemon=True)
    thread.start()
    try:
        yield count
    finally:
        thread.join()


def apply_retention(
    lease: RepositoryLease,
    redis: Redis,
    node_id: int,
    backup_id: int,
    policy: Retention,
    known: int | None,
) -> int:
    """How many snapshots of the backup the repository keeps, one just added to the
    known earlier ones; forgets (and prunes) the rest when the policy says so."""
    if known is not None and known + 1 <= policy.keep_last:
        # keep-last alone keeps every one of them, whatever the other keep-* rules say:
        # forget would remove nothing, so its container (about a second) is not started.
        # Without any count (first run whose listing failed) forget runs and counts.
        return known + 1
    args = restic_args.forget_args(
        policy.keep_last,
        tags=[backup_tag(backup_id)],
        keep_daily=policy.keep_daily,
        keep_weekly=policy.keep_weekly,
        keep_monthly=policy.keep_monthly,
        keep_yearly=policy.keep_yearly,
        keep_within=policy.keep_within,
    )
    done = lease.run(args, timeout=FORGET_TIMEOUT)
    if done.returncode != 0:
        raise RetentionFailed(f"retention failed: {proc.last_line(done.error_text)}")
    kept, removed = restic_messages.parse_forget(done.text)
    snapshot_environments.forget(redis, node_id, removed)
    return kept
