"""The module's environment file, as NS8's `agent.set_env` and friends write it.

Setters change `$AGENT_STATE_DIR/environment` only (not os.environ, not Redis): the agent
reads the file again before every step, and copies it to `module/<id>/environment` when
the action ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

ENVIRONMENT = "environment"
_WRITE_MODES = ("w", "wt", "wb", "tw", "bw")


@contextlib.contextmanager
def safe_open(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Write path atomically: a temp file in the same directory, fsync, rename, directory
    fsync. An existing file keeps its mode; a new one gets 0666 & ~umask."""
    if mode not in _WRITE_MODES:
        raise ValueError(f"safe_open: mode {mode!r} is not a write mode")
    target = Path(path)
    directory = target.parent
    try:
        file_mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        file_mode = 0o666 & ~umask
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), file_mode)
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def exclusive_file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """A blocking flock on `<dir>/.<name>.lock` while the block runs."""
    target = Path(path)
    lock_path = target.parent / f".{target.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def parse_envfile_text(text: str) -> dict[str, str]:
    """NS8's reading: split each line at its first '=', no quoting or escapes; empty
    lines and '#' lines skipped, a line without '=' warned about and skipped."""
    env: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            warnings.warn(f"read_envfile: ignoring line without '=': {line!r}", stacklevel=3)
            continue
        key, value = line.split("=", 1)
        env[key] = value
    return env


def format_envfile(envmap: Mapping[str, Any]) -> str:
    """Sorted `K=str(V)` lines; a name or value that would break the line format (a
    newline, or '=' in a name) is refused rather than written as two variables."""
    lines = []
    for key in sorted(envmap):
        value = str(envmap[key])
        if not key or "=" in key or "\n" in key or "\n" in value or "\r" in key:
            raise ValueError(f"cannot write environment variable {key!r}: bad name or value")
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def read_envfile(file_path: str | os.PathLike[str]) -> dict[str, str]:
    """The file's variables (FileNotFoundError when it is missing)."""
    with open(file_path, encoding="utf-8") as handle:
        return parse_envfile_text(handle.read())


def write_envfile(file_path: str | os.PathLike[str], envmap: Mapping[str, Any]) -> None:
    """Replace the file with envmap's variables, atomically."""
    text = format_envfile(envmap)
    with safe_open(file_path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _environment_path() -> Path:
    return Path(os.environ["AGENT_STATE_DIR"]) / ENVIRONMENT  # KeyError when unset, as NS8


def mset_env(values: Mapping[str, Any]) -> None:
    """Set several variables in the module's environment file (under its lock)."""
    if not values:
        return
    path = _environment_path()
    with exclusive_file_lock(path):
        env = read_envfile(path)
        env.update({key: str(value) for key, value in values.items()})
        write_envfile(path, env)


def set_env(name: str, value: Any) -> None:
    """Set one variable in the module's environment file."""
    mset_env({name: value})


def munset_env(names: Iterable[str]) -> None:
    """Remove variables from the module's environment file; absent ones change nothing."""
    names = list(names)
    if not names:
        return
    path = _environment_path()
    with exclusive_file_lock(path):
        env = read_envfile(path)
        present = [name for name in names if name in env]
        if not present:
            return
        for name in present:
            del env[name]
        write_envfile(path, env)


def unset_env(name: str) -> None:
    """Remove one variable from the module's environment file."""
    munset_env([name])


def dump_env() -> None:
    """Deprecated in NS8 (the agent copies the file to Redis itself): does nothing."""


def slurp_file(path: str | os.PathLike[str]) -> str:
    """The file's text, stripped."""
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()
