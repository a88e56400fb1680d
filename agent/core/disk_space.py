"""A write that failed on the node, said in one line, and a full node disk named as such."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Below this, a failure on the node is most likely the full disk: say so.
LOW_SPACE_BYTES = 1 << 20


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer has left on path's filesystem (None: cannot tell)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def full_disk_note(path: Path) -> str:
    """'; the node's disk holding PATH is full (N bytes free)' when it nearly is, else ''."""
    free = free_bytes(path)
    if free is None or free >= LOW_SPACE_BYTES:
        return ""
    return f"; the node's disk holding {path} is full ({free} bytes free)"


def describe_os_error(exc: OSError) -> str:
    """One line for exc; shutil's copy errors (a list of every file that failed) by the
    first one."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        failures = exc.args[0]
        if failures and isinstance(failures[0], tuple) and len(failures[0]) == 3:
            first = str(failures[0][2])
            return f"{len(failures)} file(s) could not be copied, the first: {first}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
