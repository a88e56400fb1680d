"""restic in the project's container image: pure argv builders plus one runner."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent import proc

log = logging.getLogger("agent.restic")
IMAGE = "localhost/backup-agent-restic:latest"
CACHE_VOLUME = "restic-cache"
PODMAN_FAILED = 125  # podman's own error, before any restic runs

# restic's documented exit codes (restic ≥ 0.17).
EXIT_OK = 0
EXIT_FATAL = 1
EXIT_INCOMPLETE = 3  # backup: snapshot made, some source files unreadable
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12


@dataclass(frozen=True)
class ResticTarget:
    """Where a repository is and how to reach it from inside the container.

    env values are secrets or settings; they reach the container only by name
    (`podman run --env NAME`, value from the podman process's own environment),
    never on a command line.
    """

    repository: str
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: tuple[tuple[str, str], ...] = ()  # (host path, container path)
    options: tuple[str, ...] = ()  # extra global restic options, no secrets


@dataclass(frozen=True)
class Mount:
    source: str  # host path or podman volume name
    target: str
    read_only: bool = False

    def flag(self) -> str:
        return f"--volume={self.source}:{self.target}" + (":ro" if self.read_only else "")


def container_env(target: ResticTarget, password: str) -> dict[str, str]:
    """What the podman process needs in its environment for `--env NAME` to carry."""
    return {**target.env, "RESTIC_REPOSITORY": target.repository, "RESTIC_PASSWORD": password}


def podman_run_argv(
    target: ResticTarget,
    args: Sequence[str],
    *,
    image: str = IMAGE,
    mounts: Sequence[Mount] = (),
    name: str | None = None,
    workdir: str = "/",
    hostname: str | None = None,
    entrypoint: str | None = None,
    podman_args: Sequence[str] = (),
    progress_fps: float | None = None,
) -> list[str]:
    """`podman run … <image> <restic args>` with secrets passed by name only."""
    env_names = sorted({*target.env, "RESTIC_REPOSITORY", "RESTIC_PASSWORD"})
    argv = [
        "podman",
        "run",
        "--rm",
        "--interactive",
        "--log-driver=none",
        "--network=host",
        "--security-opt=label=disable",  # read any file, whatever its SELinux label
        f"--name={name or 'restic-' + uuid.uuid4().hex[:12]}",
        f"--workdir={workdir}",
        f"--volume={CACHE_VOLUME}:/var/cache/restic",
        "--env=RESTIC_CACHE_DIR=/var/cache/restic",
        "--env=RCLONE_CONFIG=/dev/null",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if entrypoint:
        argv.append(f"--entrypoint={entrypoint}")
    if progress_fps is not None:
        # Only with --json: without it, this variable makes restic print progress text.
        argv.append(f"--env=RESTIC_PROGRESS_FPS={progress_fps:g}")
    argv += [f"--env={env_name}" for env_name in env_names]
    argv += [f"--volume={host}:{inside}" for host, inside in target.volumes]
    argv += [mount.flag() for mount in mounts]
    argv += list(podman_args)
    argv.append(image)
    if entrypoint is None:
        argv += list(target.options)
    argv += list(args)
    return argv


def backup_args(
    *, tags: Sequence[str] = (), host: str | None = None, exclude_file: str | None = None
) -> list[str]:
    """`restic backup` with JSON output; the paths and patterns come on standard input."""
    args = ["backup", "--json"]
    for tag in tags:
        args += ["--tag", tag]
    if host:
        args += ["--host", host]
    args += ["--files-from", "-"]
    if exclude_file:
        args += ["--exclude-file", exclude_file]
    return args


def forget_args(
    keep_last: int,
    *,
    tags: Sequence[str] = (),
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    keep_monthly: int | None = None,
    keep_yearly: int | None = None,
    keep_within: str | None = None,
    group_by: str = "",
    prune: bool = True,
) -> list[str]:
    """`forget` of the snapshots carrying tags, in one group: grouping by paths (restic's
    default) would strand old snapshots out of retention's reach when an include list
    changes, and grouping by host when a module is restored under a new id."""
    args = ["forget", "--json", f"--group-by={group_by}", f"--keep-last={keep_last}"]
    for flag, value in (
        ("--keep-daily", keep_daily),
        ("--keep-weekly", keep_weekly),
        ("--keep-monthly", keep_monthly),
        ("--keep-yearly", keep_yearly),
    ):
        if value:
            args.append(f"{flag}={value}")
    if keep_within:
        args.append(f"--keep-within={keep_within}")
    for tag in tags:
        args += ["--tag", tag]
    if prune:
        args.append("--prune")
    return args


def parse_json_lines(text: str) -> Iterator[dict[str, Any]]:
    """restic --json prints one object a line; other lines (warnings) are skipped."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value


_NANOSECONDS = re.compile(r"(\.\d{6})\d+")


def parse_time(text: str) -> float:
    """restic's RFC 3339 time (nanoseconds, Z or an offset) → seconds since the epoch;
    ValueError for anything else."""
    moment = datetime.fromisoformat(_NANOSECONDS.sub(r"\1", text.strip()).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"no time zone in {text!r}")
    return moment.timestamp()


# restic's --json progress comes 60 times a second by default; each message wakes the
# step, the daemon (a Redis publish) and every task waiting on it, on the cores the
# backup needs. Twice a second is live enough for a progress bar.
PROGRESS_FPS = 2.0


def stream(
    target: ResticTarget,
    password: str,
    args: Sequence[str],
    *,
    podman_env: Mapping[str, str],
    on_message: Callable[[dict[str, Any]], None],
    mounts: Sequence[Mount] = (),
    hostname: str | None = None,
    podman_args: Sequence[str] = (),
    workdir: str = "/srv",
    stdin_text: Callable[[], str] | None = None,
) -> tuple[int, str]:
    """Run restic with --json output, handing each message to on_message as it comes.

    restic prints progress and the summary on stdout and its error messages (unreadable
    files) as JSON on stderr: both are parsed. Returns (exit code, stderr's other lines).

    With stdin_text, the container starts first and stdin_text() runs meanwhile in this
    thread (again if podman has to start the container a second time); what it returns is
    restic's standard input (`--files-from -`). restic reads its standard input before it
    opens the repository, so the container's start overlaps stdin_text's work. When
    stdin_text raises, restic's input stays empty (`nothing to backup`: it ends without
    touching the repository) and the exception propagates.
    """
    argv = podman_run_argv(
        target,
        args,
        mounts=mounts,
        hostname=hostname,
        podman_args=podman_args,
        workdir=workdir,
        progress_fps=PROGRESS_FPS,
    )
    env = proc.merged_env({**podman_env, **container_env(target, password)})
    code, stderr = _stream_once(argv, env, on_message, stdin_text)
    if lost_cache_volume_race(code, stderr):
        code, stderr = _stream_once(argv, env, on_message, stdin_text)
    return code, stderr


def _stream_once(
    argv: list[str],
    env: dict[str, str],
    on_message: Callable[[dict[str, Any]], None],
    feed: Callable[[], str] | None,
) -> tuple[int, str]:
    child = proc.spawn(
        argv, env=env, stdin=proc.DEVNULL if feed is None else proc.PIPE, new_session=False
    )
    stdout, stderr = child.stdout, child.stderr
    assert stdout is not None and stderr is not None
    other: list[str] = []

    def read_stdout() -> None:
        for raw in stdout:
            for message in parse_json_lines(raw.decode(errors="replace")):
                on_message(message)

    def read_stderr() -> None:
        for raw in stderr:
            line = raw.decode(errors="replace")
            messages = list(parse_json_lines(line))
            if not messages:
                other.append(line)
            for message in messages:
                on_message(message)

    readers = [threading.Thread(target=read, daemon=True) for read in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    try:
        if feed is not None:
            _write_stdin(child, feed)
    finally:
        code = child.wait()
        for reader in readers:
            reader.join()
    name = next((arg for arg in argv if arg.startswith("--name=")), "restic")
    log.debug(
        "%s: exit %d after %.3fs", name.removeprefix("--name="), code, time.monotonic() - started
    )
    return code, "".join(other)


def _write_stdin(child: subprocess.Popen[bytes], feed: Callable[[], str]) -> None:
    """feed()'s text to the child's stdin, then EOF; EOF alone when feed raises."""
    assert child.stdin is not None
    try:
        text = feed()
        with contextlib.suppress(BrokenPipeError):  # the container ended before reading
            child.stdin.write(text.encode(errors="surrogateescape"))
    finally:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()


def run(
    target: ResticTarget,
    password: str,
    args: Sequence[str],
    *,
    podman_env: Mapping[str, str],
    mounts: Sequence[Mount] = (),
    timeout: float | None = None,
    input: bytes | None = None,
    entrypoint: str | None = None,
    hostname: str | None = None,
) -> proc.Result:
    """Run restic (or entrypoint) once in the container and wait for it."""
    argv = podman_run_argv(target, args, mounts=mounts, entrypoint=entrypoint, hostname=hostname)
    env = {**podman_env, **container_env(target, password)}
    result = proc.run(argv, env=env, timeout=timeout, input=input)
    if lost_cache_volume_race(result.returncode, result.error_text):
        result = proc.run(argv, env=env, timeout=timeout, input=input)
    return result


def lost_cache_volume_race(code: int, stderr: str) -> bool:
    """True when podman refused to start the container because another one created the
    cache volume at the same moment. podman creates a named volume on first use, and two
    restic containers starting together on a store without it (a backup and its snapshot
    count, or two modules) both try; starting the loser again finds the volume there."""
    return (
        code == PODMAN_FAILED
        and f'named volume "{CACHE_VOLUME}"' in stderr
        and "already exists" in stderr
    )
