"""Snapshot browsing for the console: one directory's entries (`restic ls`) and streamed
downloads (`restic dump`), through the project's restic container and adapter."""

from __future__ import annotations

import contextlib
import posixpath
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Annotated, Any, Literal

from pydantic import StringConstraints

from agent.adapters import proc, restic
from agent.core import restic_args, restic_messages
from agent.core.errors import ActionFailed
from agent.core.models import SnapshotRequest
from agent.operations.restore_source import (
    Repository,
    check_reachable,
    explain_read_failure,
    snapshot_paths,
)

CHUNK = 64 * 1024
MAX_ENTRIES = 5000  # one directory's listing; a hostile snapshot cannot flood the page
ItemPath = Annotated[str, StringConstraints(max_length=4096, pattern=r"^[^\x00\n\r]*$")]


class ListRequest(SnapshotRequest):
    """A directory of a snapshot; "" is its top."""

    dir: ItemPath = ""


class DumpRequest(SnapshotRequest):
    """A file (raw) or a folder (zip or tar) of a snapshot."""

    item: ItemPath
    format: Literal["raw", "zip", "tar"] = "raw"


def snapshot_dir(path: str) -> str:
    """'' → '/', 'volumes/pages' → '/volumes/pages'; '..' and the like are refused the way
    restore paths are."""
    return "/" if not path.strip("/") else snapshot_paths([path])[0]


@dataclass(frozen=True)
class Entry:
    name: str
    path: str  # relative to the snapshot's top, as restore paths are written
    type: str  # file, dir, symlink, …
    size: int
    mtime: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "mtime": self.mtime,
        }


def parse_listing(text: str, directory: str) -> tuple[list[Entry], bool]:
    """The direct children of directory in `restic ls --json` output (restic also lists
    the directory itself); (entries sorted folders first, whether the list was cut)."""
    entries: list[Entry] = []
    cut = False
    for message in restic_messages.parse_json_lines(text):
        if message.get("struct_type") != "node":
            continue
        path = message.get("path")
        if not isinstance(path, str) or posixpath.dirname(path) != directory:
            continue
        if len(entries) >= MAX_ENTRIES:
            cut = True
            break
        size = message.get("size")
        entries.append(
            Entry(
                name=str(message.get("name", posixpath.basename(path))),
                path=path.lstrip("/"),
                type=str(message.get("type", "")),
                size=size if isinstance(size, int) else 0,
                mtime=str(message.get("mtime", "")),
            )
        )
    entries.sort(key=lambda e: (e.type != "dir", e.name))
    return entries, cut


def list_directory(
    repository: Repository, snapshot: str, directory: str, podman_env: Mapping[str, str]
) -> tuple[list[Entry], bool]:
    check_reachable(repository)
    done = restic.run(
        repository.target,
        repository.password,
        restic_args.ls_args(snapshot, directory),
        podman_env=podman_env,
        timeout=600,
    )
    if done.returncode != 0:
        raise ActionFailed(explain_read_failure(done.returncode, done.error_text, repository, ""))
    return parse_listing(done.text, directory)


class Dump:
    """A running `restic dump`: its output read in chunks, so memory stays flat whatever the
    size; close() stops it when the browser goes away."""

    def __init__(
        self, repository: Repository, args: list[str], podman_env: Mapping[str, str]
    ) -> None:
        self.repository = repository
        # restic's stderr goes to a file, never a pipe that could fill; close() closes it.
        self.errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        argv = restic.podman_run_argv(repository.target, args)
        env = proc.merged_env(
            {**podman_env, **restic.container_env(repository.target, repository.password)}
        )
        self.child = proc.spawn(
            argv, env=env, stdin=proc.DEVNULL, stderr=self.errors, new_session=False
        )

    def read(self) -> bytes:
        assert self.child.stdout is not None
        return self.child.stdout.read(CHUNK)

    def failure(self) -> str | None:
        """After the output ended: None when restic succeeded, else why it failed."""
        code = self.child.wait()
        if code == 0:
            return None
        self.errors.seek(0)
        text = self.errors.read().decode(errors="replace")
        return explain_read_failure(code, text, self.repository, "")

    def chunks(self, first: bytes) -> Iterator[bytes]:
        try:
            chunk = first
            while chunk:
                yield chunk
                chunk = self.read()
        finally:
            self.close()

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.terminate()
            with contextlib.suppress(proc.TimeoutExpired):
                self.child.wait(timeout=10)
            if self.child.poll() is None:
                self.child.kill()
                self.child.wait()
        if self.child.stdout is not None:
            self.child.stdout.close()
        self.errors.close()


def start_dump(
    repository: Repository, request: DumpRequest, podman_env: Mapping[str, str]
) -> tuple[Dump, bytes, str]:
    """Start the dump and read its first chunk: (the dump, that chunk, the file name to
    offer). A dump that fails before any byte raises ActionFailed with restic's reason."""
    item = snapshot_paths([request.item])[0]
    check_reachable(repository)
    dump = Dump(
        repository, restic_args.dump_args(request.snapshot, item, request.format), podman_env
    )
    first = dump.read()
    if not first:
        reason = dump.failure()
        dump.close()
        if reason:
            raise ActionFailed(reason)
    name = posixpath.basename(item) or "snapshot"
    if request.format != "raw":
        name += "." + request.format
    return dump, first, name
