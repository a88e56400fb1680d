"""NS8's `volumes` of add-module and restore-module: some of a new module's volumes are
created on directories the operator names (another disk) before the module is.

The directory must be empty (a restore never overwrites what was there), and stays the
operator's: remove-module removes the volume, never the directory nor what is in it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from agent.adapters import podman, proc
from agent.core.errors import ValidationFailed, validation_error
from agent.core.settings import Settings

# Directories a volume never lands in, nor anywhere below them: the system's own.
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/containers",
    "/var/run",
)
# Directories a volume never lands in themselves (a disk mounted below them is fine).
SHARED_TOPS = ("/home", "/media", "/mnt", "/opt", "/srv", "/tmp", "/var", "/var/lib")


def _within(path: PurePosixPath, tree: PurePosixPath) -> bool:
    return path == tree or tree in path.parents


def refused_reason(path: PurePosixPath, data_dir: PurePosixPath) -> str | None:
    """Why a resolved placement directory cannot hold a volume (None: it can): a system
    directory, the agent's data dir or a directory holding it (the volume's files would
    mix with the agent's), or a top-level directory itself."""
    if path == PurePosixPath("/") or str(path) in SHARED_TOPS:
        return "system_directory"
    if any(_within(path, PurePosixPath(tree)) for tree in SYSTEM_TREES):
        return "system_directory"
    if _within(path, data_dir) or _within(data_dir, path):
        return "agent_data_directory"
    return None


def reachable_by_anyone(path: Path) -> bool:
    """Every directory above path lets others through: a rootless module's new user (no
    group of its own yet but its own) must reach the directory it is given."""
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.parents)


def check_placement(
    settings: Settings, volumes: Mapping[str, str], *, rootless: bool = False
) -> dict[str, str]:
    """Each volume's directory, resolved (links followed, so a link cannot send a volume
    into /etc); ValidationFailed (exit 10) naming every bad one, before anything changes.
    rootless: the directory's parents must let the module's user through."""
    data_dir = PurePosixPath(os.path.realpath(settings.root))
    placed: dict[str, str] = {}
    rows = []
    for name, given in volumes.items():
        resolved = os.path.realpath(given)
        error = None
        if not Path(resolved).is_dir():
            error = "volume_path_not_a_directory"
        elif any(Path(resolved).iterdir()):  # a restore never overwrites the operator's files
            error = "volume_path_not_empty"
        else:
            error = refused_reason(PurePosixPath(resolved), data_dir)
            error = f"volume_path_{error}" if error else None
            if error is None and rootless and not reachable_by_anyone(Path(resolved)):
                error = "volume_path_not_reachable"
        if error is not None:
            rows += validation_error("volumes", error, given, parameter=name).errors
        placed[name] = resolved
    devices = list(placed.values())
    for name, device in placed.items():  # two volumes on one directory would mix their files
        if devices.count(device) > 1:
            rows += validation_error("volumes", "volume_path_shared", volumes[name], name).errors
    if rows:
        raise ValidationFailed(rows)
    return placed


def create_placed_volumes(
    settings: Settings, module_id: str, placed: Mapping[str, str], user: proc.RunAs | None
) -> None:
    """Each volume bound to its directory: '<module_id>-<name>' for a rootfull module, the
    bare name in the user's own store for a rootless one (whose user gets the directory
    itself, as NS8 gives it the directory it makes on the extra disk)."""
    env = settings.podman_env()
    for name, device in placed.items():
        if user is not None:
            os.chown(device, user.uid, user.gid)
            podman.create_bind_volume(name, device, module_id, env, run_as=user)
        else:
            podman.create_bind_volume(f"{module_id}-{name}", device, module_id, env)
