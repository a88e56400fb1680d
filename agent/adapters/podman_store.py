"""A node's own podman store: private volumes and containers, the machine's images.

Several nodes (or the demo, or a test session) can share one machine this way without
their module volumes colliding. Each store also gets its own engine state directory with
file locks: podman's default shared-memory locks are one machine-wide table of 2048, and a
store whose directory is deleted while it still holds containers or volumes never gives
its entries back, so a few hundred throwaway stores would exhaust the table for every
podman on the machine.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.adapters import proc

SHARED_IMAGE_STORE = "/var/lib/containers/storage"
RUNROOT_BASE = Path("/run/backup-agent")


@dataclass(frozen=True)
class Store:
    root: Path  # the directory holding containers/

    @property
    def base(self) -> Path:
        return self.root / "containers"

    @property
    def storage_conf(self) -> Path:
        return self.base / "storage.conf"

    @property
    def containers_conf(self) -> Path:
        return self.base / "containers.conf"

    @property
    def graphroot(self) -> Path:
        return self.base / "storage"

    @property
    def volumes(self) -> Path:
        return self.graphroot / "volumes"

    @property
    def runroot(self) -> Path:
        # conmon keeps unix sockets under the runroot: a deep root would push their paths
        # past the 108-byte limit and stall every container exit, so it stays short.
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return RUNROOT_BASE / digest

    @property
    def tmp_dir(self) -> Path:
        return self.runroot / "libpod"

    def env(self) -> dict[str, str]:
        return {
            "CONTAINERS_CONF": str(self.containers_conf),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
        }


def create(root: Path, engine_conf: Path) -> Store:
    """Write the store's storage.conf and containers.conf (engine_conf plus file locks in
    the store's own state directory). A runtime directory left by an earlier store at the
    same path is discarded first: its locks and state belong to data that is gone."""
    store = Store(root)
    store.base.mkdir(parents=True, exist_ok=True)
    discard_runtime(store)
    store.storage_conf.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{store.graphroot}"\n'
        f'runroot = "{store.runroot}"\n'
        "[storage.options]\n"
        f'additionalimagestores = ["{SHARED_IMAGE_STORE}"]\n'
    )
    store.containers_conf.write_text(
        with_engine_options(
            engine_conf.read_text(), {"lock_type": "file", "tmp_dir": str(store.tmp_dir)}
        )
    )
    return store


def with_engine_options(conf: str, options: dict[str, str]) -> str:
    """conf (containers.conf TOML) with string options added to its [engine] table."""
    lines = [f'{key} = "{value}"' for key, value in options.items()]
    text = conf.splitlines()
    for index, line in enumerate(text):
        if line.strip() == "[engine]":
            return "\n".join([*text[: index + 1], *lines, *text[index + 1 :]]) + "\n"
    return "\n".join([*text, "[engine]", *lines]) + "\n"


def release(store: Store) -> None:
    """Undo the bind mount podman's overlay driver keeps on the store, so its directory
    can be removed once nothing runs in it."""
    overlay = (store.graphroot / "overlay").resolve()
    if is_mount_point(overlay):
        proc.run(["umount", str(overlay)], timeout=30)


def discard_runtime(store: Store) -> bool:
    """Remove the store's runtime directory (engine state, file locks), unless something
    is still mounted below it (a running container's). True when it is gone."""
    runroot = store.runroot
    if not runroot.exists():
        return True
    if any(mount == runroot or runroot in mount.parents for mount in mount_points()):
        return False
    shutil.rmtree(runroot, ignore_errors=True)
    return not runroot.exists()


def mount_points() -> list[Path]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [Path(fields[4]) for fields in (line.split() for line in lines) if len(fields) > 4]


def is_mount_point(path: Path) -> bool:
    """True when path is mounted on, even by a bind mount of itself (os.path.ismount
    cannot tell that one: same device, its own inode)."""
    return path in mount_points()
