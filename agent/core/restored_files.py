"""The agent's own file access inside trees a snapshot wrote: never through a link.

A restore puts whatever the snapshot holds into a module's state dir or an operator's
directory, links included. Every read, write, chmod and walk the agent then does there
goes through directory descriptors opened one component at a time with O_NOFOLLOW, so a
link a snapshot planted is refused (or replaced) rather than followed out of the tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.errors import AgentError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
SETID = stat.S_ISUID | stat.S_ISGID


class NotPlain(AgentError):
    """A path the agent was to use inside a restored tree is a link or of the wrong kind."""


@dataclass
class OpenedDir:
    """A directory descriptor reached from a trusted base, and what opening it created."""

    fd: int
    created: list[str] = field(default_factory=list)  # relative to the base, outermost first

    def close(self) -> None:
        os.close(self.fd)


def open_beneath(
    base: Path, parts: Sequence[str], create: bool = False, mode: int = 0o700
) -> OpenedDir:
    """base/parts… as a directory fd, no component after base a link (NotPlain if one is);
    with create, missing components are made with mode. base itself is trusted."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    opened = OpenedDir(fd)
    try:
        for index, part in enumerate(parts):
            if part in ("", ".", "..") or "/" in part:
                raise NotPlain(f"{'/'.join(parts)}: {part!r} is not a plain name")
            try:
                next_fd = os.open(part, DIR_FLAGS, dir_fd=opened.fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, mode, dir_fd=opened.fd)
                opened.created.append("/".join(parts[: index + 1]))
                next_fd = os.open(part, DIR_FLAGS, dir_fd=opened.fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = base.joinpath(*parts[: index + 1])
                    raise NotPlain(f"{where} is a link or not a directory") from None
                raise
            os.close(opened.fd)
            opened.fd = next_fd
    except BaseException:
        os.close(opened.fd)
        raise
    return opened


@contextlib.contextmanager
def directory(base: Path, parts: Sequence[str]) -> Iterator[int]:
    """open_beneath(base, parts) for the duration of a with block."""
    opened = open_beneath(base, parts)
    try:
        yield opened.fd
    finally:
        opened.close()


def read_regular(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The bytes of the regular file name in dir_fd; None when there is none; NotPlain
    for a link, a directory, a device or a file over limit bytes."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise NotPlain(f"{name} is not a regular file") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NotPlain(f"{name} is not a regular file")
        if info.st_size > limit:
            raise NotPlain(f"{name} is larger than {limit} bytes")
        return handle.read(limit + 1)[:limit]


def write_replacing(
    dir_fd: int, name: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """name in dir_fd now holds data: written to a new file, then renamed over whatever
    name was (a link is replaced, never followed); owner: (uid, gid) of the new file."""
    temporary = f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=dir_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            handle.write(data)
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def unlink(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def strip_setid(dir_fd: int) -> int:
    """Clear setuid and setgid on every regular file below dir_fd; how many had them.
    The walk never leaves the tree: links are neither followed nor changed."""
    stripped = 0
    for _, _, names, walked_fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in names:
            try:
                info = os.stat(name, dir_fd=walked_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_mode & SETID:
                _clear_setid(walked_fd, name, info)
                stripped += 1
    return stripped


def _clear_setid(dir_fd: int, name: str, seen: os.stat_result) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == (seen.st_dev, seen.st_ino) and stat.S_ISREG(info.st_mode):
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~SETID)
    finally:
        os.close(fd)


def remove_created(base: Path, created: list[str]) -> None:
    """Undo what open_beneath(create=True) made: the innermost directory with all a restore
    put in it, then each enclosing one it created while it is empty."""
    if not created:
        return
    parent, _, innermost = created[-1].rpartition("/")
    with directory(base, parent.split("/") if parent else []) as fd:
        shutil.rmtree(innermost, dir_fd=fd)
    for relative in reversed(created[:-1]):
        parent, _, name = relative.rpartition("/")
        with directory(base, parent.split("/") if parent else []) as fd:
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                return  # something else was put there meanwhile: it stays
