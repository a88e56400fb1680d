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
# Not restic's: the agent stopped the container (a deadline passed, or the storage kept
# failing for longer than the node allows). The same number as timeout(1).
EXIT_STOPPED = 124
# Codes of a restic that ended on its own: it removed its lock, or never made one. On a
# fatal error (1) restic still removes its lock; when the storage refuses even that,
# restic retries it, and the retry watch stops it (EXIT_STOPPED).
_CLEAN_ENDS = frozenset(
    {EXIT_OK, EXIT_FATAL, EXIT_INCOMPLETE, EXIT_NO_REPOSITORY, EXIT_LOCKED, EXIT_WRONG_PASSWORD}
)


def may_leave_lock(code: int) -> bool:
    """True when a restic run that ended with code may have left its lock in the
    repository: killed (podman reports 128+signal, Python a negative code), stopped by
    the agent, or not started as asked (podman's own 125-127)."""
    return code not in _CLEAN_ENDS


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
        f"--name={name or container_name()}",
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


def container_name(prefix: str = "restic") -> str:
    """A fresh name for a restic container: prefix plus a random suffix."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def stop_argv(name: str, signal_name: str) -> list[str]:
    return ["podman", "kill", f"--signal={signal_name}", name]


def remove_argv(names: Sequence[str]) -> list[str]:
    """Kill at once and remove (restic containers hold nothing worth a grace period)."""
    return ["podman", "rm", "--force", "--time=0", *names]


def present_argv(prefix: str) -> list[str]:
    """Names of the containers whose name starts with prefix, running or not: a restic
    whose podman client died is removed by no one once it exits."""
    return ["podman", "ps", "--all", "--filter", f"name=^{prefix}", "--format", "{{.Names}}"]


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


def parse_init_id(init_output: str) -> str:
    """The new repository's config id from `init --json` ('' when it is not there)."""
    for message in parse_json_lines(init_output):
        if message.get("message_type") == "initialized":
            return str(message.get("id", ""))
    return ""


_NANOSECONDS = re.compile(r"(\.\d{6})\d+")


def parse_time(text: str) -> float:
    """restic's RFC 3339 time (nanoseconds, Z or an offset) → seconds since the epoch;
    ValueError for anything else."""
    moment = datetime.fromisoformat(_NANOSECONDS.sub(r"\1", text.strip()).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"no time zone in {text!r}")
    return moment.timestamp()


_RETRYING = re.compile(r"returned error, retrying after")
_RETRY_DONE = re.compile(r"operation successful after \d+ retries")


class RetryWatch:
    """Tells when restic has kept retrying a failing storage for longer than limit seconds.

    restic (0.17+) retries a failing backend operation for up to 15 minutes, whatever the
    error (a read-only disk, a full one, a dead server); it reports each retry on stderr
    and reports the success that ends a series."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.since: float | None = None
        self.last_error = ""

    def see(self, line: str, now: float) -> None:
        if _RETRYING.search(line):
            if self.since is None:
                self.since = now
            self.last_error = line.strip()
        elif _RETRY_DONE.search(line):
            self.since = None

    def expired(self, now: float) -> bool:
        return self.limit is not None and self.since is not None and now - self.since > self.limit

    def reason(self) -> str:
        error = self.last_error.rpartition(": ")[2] or self.last_error
        return f"the storage kept failing for over {self.limit:g}s, restic stopped: {error}"


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
    name: str | None = None,
    retry_limit: float | None = None,
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

    With retry_limit, a storage that keeps failing (restic retrying the same kind of
    operation) for longer than retry_limit seconds gets restic stopped: the code is then
    EXIT_STOPPED and stderr's last line says why. A podman client that is killed or
    interrupted never leaves the container (name) running behind it.
    """
    name = name or container_name()
    argv = podman_run_argv(
        target,
        args,
        mounts=mounts,
        name=name,
        hostname=hostname,
        podman_args=podman_args,
        workdir=workdir,
        progress_fps=PROGRESS_FPS,
    )
    env = proc.merged_env({**podman_env, **container_env(target, password)})
    code, stderr = _stream_once(argv, name, env, on_message, stdin_text, RetryWatch(retry_limit))
    if lost_cache_volume_race(code, stderr):
        code, stderr = _stream_once(
            argv, name, env, on_message, stdin_text, RetryWatch(retry_limit)
        )
    return code, stderr


def _stream_once(
    argv: list[str],
    name: str,
    env: dict[str, str],
    on_message: Callable[[dict[str, Any]], None],
    feed: Callable[[], str] | None,
    watch: RetryWatch,
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
                watch.see(line, time.monotonic())
                other.append(line)
            for message in messages:
                on_message(message)

    readers = [threading.Thread(target=read, daemon=True) for read in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    stopped = False
    try:
        if feed is not None:
            _write_stdin(child, feed)
        stopped = _wait_watching(child, name, env, watch)
    finally:
        if child.poll() is None:  # unwinding (a signal, an error in feed): restic too
            _stop_container(name, env)
        code = child.wait()
        for reader in readers:
            reader.join()
    log.debug("%s: exit %d after %.3fs", name, code, time.monotonic() - started)
    if stopped:
        return EXIT_STOPPED, "".join(other) + watch.reason() + "\n"
    return code, "".join(other)


def _wait_watching(
    child: subprocess.Popen[bytes], name: str, env: dict[str, str], watch: RetryWatch
) -> bool:
    """Wait for the child; True when it was stopped because the storage kept failing."""
    while True:
        try:
            child.wait(timeout=0.5)
            return False
        except subprocess.TimeoutExpired:
            pass
        if watch.expired(time.monotonic()):
            log.warning("%s: %s", name, watch.reason())
            _stop_container(name, env)
            child.wait()
            return True


def _stop_container(name: str, env: Mapping[str, str], grace: float = 10.0) -> None:
    """SIGTERM to restic (it removes its lock when it can), SIGKILL after grace seconds;
    the container (--rm) goes away with it."""
    proc.run(stop_argv(name, "TERM"), env=env, timeout=60)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if name not in proc.run(present_argv(name), env=env, timeout=60).text.split():
            return
        time.sleep(0.2)
    proc.run(remove_argv([name]), env=env, timeout=60)


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
    name: str | None = None,
) -> proc.Result:
    """Run restic (or entrypoint) once in the container and wait for it. Past timeout,
    the container is stopped too and the result has code EXIT_STOPPED."""
    name = name or container_name()
    argv = podman_run_argv(
        target, args, mounts=mounts, name=name, entrypoint=entrypoint, hostname=hostname
    )
    env = {**podman_env, **container_env(target, password)}
    result = _run_once(argv, name, env, timeout, input)
    if lost_cache_volume_race(result.returncode, result.error_text):
        result = _run_once(argv, name, env, timeout, input)
    return result


def _run_once(
    argv: list[str],
    name: str,
    env: dict[str, str],
    timeout: float | None,
    input: bytes | None,
) -> proc.Result:
    try:
        return proc.run(argv, env=env, timeout=timeout, input=input)
    except proc.TimeoutExpired:
        # Only the podman client was killed: the container would go on working.
        _stop_container(name, env, grace=0)
        return proc.Result(
            tuple(argv), EXIT_STOPPED, b"", f"restic stopped after {timeout:g}s\n".encode()
        )


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
