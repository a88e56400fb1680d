"""Who may read a node's data directory: root alone, whatever the umask it was made with."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.core.settings import Settings

# The daemon and the private redis-server create files only root may read: Redis's AOF
# and RDB hold every restic password and provider key, the logs hold task errors.
PRIVATE_UMASK = 0o077
# Steps and hooks are module code written for the usual root umask: what they put in a
# volume is read by the module's containers, which may run as another user. The data
# directory above them is 0700, so no local user reaches those files either way.
STEP_UMASK = 0o022
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_trees(settings: Settings) -> tuple[Path, ...]:
    """Directories whose whole content is the node's own (secrets, logs, pids, records)."""
    return (settings.redis_dir, settings.log_dir, settings.run_dir)


def private_files(settings: Settings) -> tuple[Path, ...]:
    """Single files holding secrets outside those trees."""
    files = [settings.config_path]
    modules = settings.root / "modules"
    homes = [settings.root / "cluster", settings.root / "node"]
    if modules.is_dir():
        homes += sorted(entry for entry in modules.iterdir() if entry.is_dir())
    for home in homes:
        files += [home / "state" / "environment", home / "state" / "agent.env"]
    return tuple(files)


def private_mode(mode: int) -> int:
    """The mode a path of this kind gets: 0700 for directories, 0600 for files, keeping
    the owner's execute bit (an executable stays one)."""
    if stat.S_ISDIR(mode):
        return PRIVATE_DIR
    return PRIVATE_FILE | (mode & stat.S_IXUSR)


def apply_private_modes(settings: Settings) -> list[Path]:
    """Make the data dir 0700 and every secret-holding path below it root-only; returns
    the paths whose mode changed (an existing node made with a looser umask)."""
    changed: list[Path] = []
    targets: list[Path] = [settings.root]
    for tree in private_trees(settings):
        targets.append(tree)
        for directory, dirs, files in os.walk(tree):
            targets += [Path(directory, name) for name in (*dirs, *files)]
    targets += private_files(settings)
    for path in targets:
        if _restrict(path):
            changed.append(path)
    return changed


def _restrict(path: Path) -> bool:
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(current.st_mode) or not (
        stat.S_ISDIR(current.st_mode) or stat.S_ISREG(current.st_mode)
    ):
        return False  # a link's mode means nothing; sockets and fifos keep theirs
    wanted = private_mode(current.st_mode)
    if stat.S_IMODE(current.st_mode) == wanted:
        return False
    os.chmod(path, wanted)
    return True
