"""Where a module's data appears inside the restic container (NS8 layout under /srv)."""

from __future__ import annotations

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


@dataclass(frozen=True)
class BackupLayout:
    mounts: tuple[Mount, ...]
    paths: tuple[str, ...]  # always backed up, relative to /srv
    include_text: str  # state-include.conf: restic --files-from patterns, relative to /srv
    exclude_file: str | None

    def sources(self, extra_paths: list[str]) -> str:
        """What restic reads with `--files-from -`: every path and pattern to back up."""
        # state-include.conf goes as it is, for restic to parse the way it parses the file.
        return "".join(f"{path}\n" for path in (*self.paths, *extra_paths)) + self.include_text


def backup_layout(
    module_id: str,
    install_dir: Path,
    state_dir: Path,
    volume_names: list[str],
    *,
    rootless: bool = False,
) -> BackupLayout:
    """Mounts and restic path arguments for one module's backup."""
    mounts = [
        Mount(str(state_dir), STATE_MOUNT, read_only=True),
        *volume_mounts(module_id, volume_names, rootless=rootless),
    ]
    include = install_dir / "etc" / "state-include.conf"
    exclude = install_dir / "etc" / "state-exclude.conf"
    # Any bytes restic would have read from the file reach it unchanged (surrogateescape).
    include_text = ""
    if include.is_file():
        include_text = include.read_bytes().decode(errors="surrogateescape")
    exclude_file = None
    if exclude.is_file():
        mounts.append(Mount(str(exclude), EXCLUDE_MOUNT, read_only=True))
        exclude_file = EXCLUDE_MOUNT
    return BackupLayout(tuple(mounts), ALWAYS_BACKED_UP, include_text, exclude_file)


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
