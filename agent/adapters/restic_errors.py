"""What a restic run's exit code means, in one table, and a failure told in words."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from agent.adapters.proc import last_line


class Exit(IntEnum):
    """restic's documented exit codes (restic ≥ 0.17), and the two the agent adds."""

    OK = 0
    FATAL = 1
    INCOMPLETE = 3  # backup: snapshot made, some source files unreadable
    NO_REPOSITORY = 10
    LOCKED = 11
    WRONG_PASSWORD = 12
    # Not restic's: the agent stopped the container (a deadline passed, or the storage
    # kept failing for longer than the node allows). The same number as timeout(1).
    STOPPED = 124
    PODMAN_FAILED = 125  # podman's own error, before any restic runs
    INTERRUPTED = 130  # SIGINT: restic may not have finished removing its lock


@dataclass(frozen=True)
class ExitMeaning:
    """How a run that ended with one code is reported, and whether it cleaned up.

    ended_cleanly: restic ended on its own and removed its lock, or never made one. On a
    fatal error (1) restic still removes its lock; when the storage refuses even that,
    restic retries it, and the agent's retry watch stops it (STOPPED).
    reason: the failure in words ('{tail}' is the last line of restic's error output).
    """

    ended_cleanly: bool
    reason: str


EXITS: dict[int, ExitMeaning] = {
    Exit.OK: ExitMeaning(True, "restic succeeded"),
    Exit.FATAL: ExitMeaning(True, "restic failed (exit 1): {tail}"),
    Exit.INCOMPLETE: ExitMeaning(True, "restic failed (exit 3): {tail}"),
    Exit.NO_REPOSITORY: ExitMeaning(True, "the repository does not exist and could not be created"),
    Exit.LOCKED: ExitMeaning(True, "repository is locked by another process: {tail}"),
    Exit.WRONG_PASSWORD: ExitMeaning(True, "wrong repository password (restic exit 12)"),
    Exit.STOPPED: ExitMeaning(False, "{tail}"),
    Exit.INTERRUPTED: ExitMeaning(False, "restic failed (exit 130): {tail}"),
}
# Any other code: killed (podman reports 128+signal, Python a negative code), or not
# started as asked (podman's own 125-127). Its lock may still be in the repository.
_UNKNOWN = ExitMeaning(False, "restic failed (exit {code}): {tail}")


def meaning(code: int) -> ExitMeaning:
    return EXITS.get(code, _UNKNOWN)


def may_leave_lock(code: int) -> bool:
    """True when a restic run that ended with code may have left its lock in the
    repository."""
    return not meaning(code).ended_cleanly


def explain_restic_failure(code: int, stderr: str) -> str:
    """A failed run in one line: the table's reason for its code."""
    return meaning(code).reason.format(code=code, tail=last_line(stderr))


# restic has no exit code of its own for a snapshot id that matches nothing (it ends
# with 1): its message is the only sign, in every version this image has shipped.
_SNAPSHOT_MISSING = re.compile(
    r"no matching id|no snapshot found|snapshot not found", re.IGNORECASE
)


def is_snapshot_missing(stderr: str) -> bool:
    """True when restic's error output says the snapshot asked for is not there."""
    return bool(_SNAPSHOT_MISSING.search(stderr))
