"""Files a module's backup writes for restic: its UI label and note as Redis DUMPs, and
the confined copy of its state-exclude.conf."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.adapters import proc
from agent.adapters.module_users import INSTALL_DIR
from agent.adapters.redis_store import Context, connect_binary
from agent.core import filemodes, redis_keys, restored_files
from agent.core.settings import Settings

EXCLUDE_COPY = ".backup-exclude.conf"  # in a rootless module's install dir
LABEL_KEYS = (("ui_name", redis_keys.module_ui_name), ("ui_note", redis_keys.module_ui_note))


def dump_labels(
    ctx: Context, module_id: str, state_dir: Path, owner: proc.RunAs | None = None
) -> list[str]:
    """DUMP the module's UI label and note into state/<name>.dump (NS8 does the same, and
    restore's 20label step loads them back); returns their snapshot paths. owner: a
    rootless module's user, whose state dir it is: the files are its, and written
    without following a link it may have put there."""
    raw = connect_binary(ctx.settings.redis_url)
    paths = []
    try:
        for name, key in LABEL_KEYS:
            payload = raw.dump(key(module_id))
            target = state_dir / f"{name}.dump"
            if payload is None:
                target.unlink(missing_ok=True)
                continue
            if owner is None:
                target.write_bytes(payload)
            else:
                home = Path(owner.home)
                with restored_files.directory(home, (INSTALL_DIR, "state")) as state_fd:
                    restored_files.write_replacing(
                        state_fd, target.name, payload, owner=(owner.uid, owner.gid)
                    )
            paths.append(f"state/{name}.dump")
    finally:
        raw.close()
    return paths


def exclude_writer(
    settings: Settings, module_id: str, owner: proc.RunAs | None
) -> Callable[[bytes], Path]:
    """Where a backup's confined copy of state-exclude.conf is written for restic: a
    node-only file for a rootfull module; for a rootless one, whose podman must read it
    and cannot cross the node's data dir, a file of the module's user in its install dir
    (never backed up), written without following a link it may have put there."""

    def node_copy(text: bytes) -> Path:
        copy = settings.run_dir / "backup-excludes" / f"{module_id}.conf"
        copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = copy.with_name(f".{copy.name}.{os.getpid()}")
        partial.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(partial, flags, filemodes.PRIVATE_FILE), "wb") as handle:
            handle.write(text)
        partial.replace(copy)
        return copy

    def user_copy(text: bytes) -> Path:
        assert owner is not None
        with restored_files.directory(Path(owner.home), (INSTALL_DIR,)) as install_fd:
            restored_files.write_replacing(
                install_fd, EXCLUDE_COPY, text, owner=(owner.uid, owner.gid)
            )
        return Path(owner.home) / INSTALL_DIR / EXCLUDE_COPY

    return node_copy if owner is None else user_copy


@contextlib.contextmanager
def removed_afterwards(state_dir: Path, paths: list[str]) -> Iterator[None]:
    """The dumped label files (snapshot paths) are gone once the body ends."""
    try:
        yield
    finally:
        for path in paths:
            (state_dir / path.removeprefix("state/")).unlink(missing_ok=True)
