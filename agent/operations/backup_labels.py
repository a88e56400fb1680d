"""A module's UI label and note, carried in its backup as Redis DUMPs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from agent.adapters import proc
from agent.adapters.module_users import INSTALL_DIR
from agent.adapters.redis_store import Context, connect_binary
from agent.core import redis_keys, restored_files

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


@contextlib.contextmanager
def removed_afterwards(state_dir: Path, paths: list[str]) -> Iterator[None]:
    """The dumped label files (snapshot paths) are gone once the body ends."""
    try:
        yield
    finally:
        for path in paths:
            (state_dir / path.removeprefix("state/")).unlink(missing_ok=True)
