"""Small files beside the repositories of a destination (the cluster backup, metadata).

A local destination is written directly on this node; the others through `rclone rcat`
in the restic container, credentials by variable name only. A restic REST server keeps
repositories only, so it gets no side files.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from agent.adapters import rclone, restic
from agent.adapters.destinations import (
    Destination,
    destination_volumes,
    local_directory,
    rclone_target,
)
from agent.core.errors import AgentError

log = logging.getLogger("agent.destination_files")


def write_private(path: Path, data: bytes) -> None:
    """data to path atomically, readable by root only (0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file(
    destination: Destination, name: str, data: bytes, podman_env: dict[str, str]
) -> bool:
    """Write data to name at the destination's root; False (and a warning) when it cannot."""
    label = destination.name or destination.id
    if destination.provider == "rest":
        return False
    if destination.provider == "local":
        # A missing directory (a disk not mounted) is never created: see run_backup.
        root = Path(local_directory(destination))
        if not root.is_dir():
            log.warning("cannot write %s to %s: %s is missing", name, label, root)
            return False
        try:
            write_private(root / name, data)
        except OSError as exc:
            log.warning("cannot write %s to %s: %s", name, label, exc)
            return False
        return True
    try:
        spec, env = rclone_target(destination, name)
    except AgentError as exc:
        log.warning("cannot write %s to %s: %s", name, label, exc)
        return False
    target = restic.ResticTarget(repository="", env=env, volumes=destination_volumes(destination))
    done = restic.run(
        target,
        "",
        rclone.rcat_args(spec),
        podman_env=podman_env,
        entrypoint=rclone.ENTRYPOINT,
        input=data,
        timeout=120,
    )
    if done.returncode != 0:
        log.warning("cannot write %s to %s: %s", name, label, done.error_text.strip()[-300:])
        return False
    return True
