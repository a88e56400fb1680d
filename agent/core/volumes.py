"""Where a module's data appears inside the restic container (NS8 layout under /srv)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from agent.adapters.restic import Mount

STATE_MOUNT = "/srv/state"
VOLUMES_MOUNT = "/srv/volumes"
EXCLUDE_MOUNT = "/etc/state-exclude.conf"
# The module's identity (image, uuid): in every snapshot, whatever state-include.conf says.
ENVIRONMENT = "state/environment"
ALWAYS_BACKED_UP = (ENVIRONMENT,)


def volume_mounts(
    module_id: str, volume_names: list[str], *, rootless: bool = False
) -> list[Mount]:
    """Rootfull volumes '<module_id>-<name>' at /srv/volumes/<name>, read-only (a backup
    only reads them, and nothing in the container, rclone included, may change them);
    'restic-*' skipped. A rootless module's store is its own: every volume, bare names."""
    prefix = "" if rootless else f"{module_id}-"
    mounts = []
    for name in sorted(volume_names):
        if not name.startswith(prefix):
            continue
        short = name[len(prefix) :]
        if not short or short.startswith("restic-"):
            continue
        mounts.append(Mount(name, f"{VOLUMES_MOUNT}/{short}", read_only=True))
    return mounts


# A line naming anything but the module's own data is not passed on: an absolute path, a
# `.`/`..`/empty component, `$` (restic expands variables) or `\` (escapes), control
# characters, or a first component other than state / volumes/<own volume>.
_REFUSED_CHARACTERS = re.compile(r"[\x00-\x1f\x7f$\\]")
IGNORED_SHOWN = 200  # characters of an ignored line kept in the status


@dataclass(frozen=True)
class ConfinedLines:
    """The lines of a module's state-include.conf or state-exclude.conf that stay inside
    the module (text, for restic) and those that do not (shown in the backup's status)."""

    text: str
    ignored: tuple[str, ...]


def confined_line(line: str, own_volumes: Collection[str]) -> bool:
    """Does line name only the module's own data: state[/…] or volumes/<own volume>[/…]?"""
    if _REFUSED_CHARACTERS.search(line) or line.startswith("/"):
        return False
    parts = line.split("/")
    if parts[-1] == "":  # one trailing slash names the directory
        parts.pop()
    if not parts or any(part in ("", ".", "..") for part in parts):
        return False
    if parts[0] == "state":
        return True
    return parts[0] == "volumes" and len(parts) >= 2 and parts[1] in own_volumes


def confine_lines(name: str, text: str, own_volumes: Collection[str]) -> ConfinedLines:
    """text (a module's file called name) with only its confined lines; blank lines and
    comments go, as restic skips them. Lines are passed on stripped, as checked."""
    kept: list[str] = []
    ignored: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if confined_line(line, own_volumes):
            kept.append(line)
        else:
            shown = "".join(c if c.isprintable() else "?" for c in line[:IGNORED_SHOWN])
            ignored.append(f"{name}: {shown}")
    return ConfinedLines("".join(f"{line}\n" for line in kept), tuple(ignored))


@dataclass(frozen=True)
class BackupLayout:
    mounts: tuple[Mount, ...]
    paths: tuple[str, ...]  # always backed up, relative to /srv
    include_text: str  # state-include.conf's confined lines: restic --files-from, under /srv
    exclude_file: str | None
    ignored: tuple[str, ...] = ()  # lines of both files that named more than the module

    def sources(self, extra_paths: list[str]) -> str:
        """What restic reads with `--files-from -`: every path and pattern to back up."""
        # state-include.conf goes as it is, for restic to parse the way it parses the file.
        return "".join(f"{path}\n" for path in (*self.paths, *extra_paths)) + self.include_text


def backup_layout(
    module_id: str,
    install_dir: Path,
    state_dir: Path,
    volume_names: list[str],
    write_exclude: Callable[[bytes], Path],
    *,
    rootless: bool = False,
) -> BackupLayout:
    """Mounts and restic path arguments for one module's backup. Only the confined lines
    of the module's include and exclude files reach restic; the exclude file restic reads
    is their copy, which write_exclude writes and says where."""
    volumes = volume_mounts(module_id, volume_names, rootless=rootless)
    own = {mount.target.removeprefix(f"{VOLUMES_MOUNT}/") for mount in volumes}
    mounts = [Mount(str(state_dir), STATE_MOUNT, read_only=True), *volumes]
    include = confine_lines("state-include.conf", _module_text(install_dir, "include"), own)
    exclude = confine_lines("state-exclude.conf", _module_text(install_dir, "exclude"), own)
    exclude_file = None
    if exclude.text:
        exclude_copy = write_exclude(exclude.text.encode(errors="surrogateescape"))
        mounts.append(Mount(str(exclude_copy), EXCLUDE_MOUNT, read_only=True))
        exclude_file = EXCLUDE_MOUNT
    return BackupLayout(
        tuple(mounts),
        ALWAYS_BACKED_UP,
        include.text,
        exclude_file,
        include.ignored + exclude.ignored,
    )


MODULE_FILE_LIMIT = 1 << 20


def _module_text(install_dir: Path, kind: str) -> str:
    """etc/state-<kind>.conf of the module, '' without one. Never through a link (root
    would read what it points to, and ignored lines are shown); the first MiB. Any bytes
    restic would have read reach it unchanged (surrogateescape)."""
    path = install_dir / "etc" / f"state-{kind}.conf"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # absent, a link, or unreadable: nothing from it
        return ""
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return ""
        return handle.read(MODULE_FILE_LIMIT).decode(errors="surrogateescape")


def included_volumes(include_text: str) -> list[str]:
    """Volume names that state-include.conf lines 'volumes/<name>[/…]' refer to."""
    names = []
    for line in include_text.splitlines():
        line = line.strip().lstrip("/")
        if line.startswith("volumes/"):
            name = line.split("/")[1]
            if name and name not in names and not any(c in name for c in "*?["):
                names.append(name)
    return names
