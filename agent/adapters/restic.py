"""restic in the project's container image: the podman command lines and one runner.

restic's own arguments come from agent/restic_args.py, its JSON is read by
agent/restic_messages.py and its exit codes by agent/restic_errors.py."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.adapters import proc
from agent.adapters.restic_errors import Exit
from agent.core.restic_messages import Message, parse_json_lines, parse_message

log = logging.getLogger("agent.restic")
IMAGE = "localhost/backup-agent-restic:latest"
CACHE_VOLUME = "restic-cache"


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
    on_message: Callable[[Message], None],
    mounts: Sequence[Mount] = (),
    hostname: str | None = None,
    podman_args: Sequence[str] = (),
    workdir: str = "/srv",
    stdin_text: Callable[[], str] | None = None,
    name: str | None = None,
    retry_limit: float | None = None,
    run_as: proc.RunAs | None = None,
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
    Exit.STOPPED and stderr's last line says why. A podman client that is killed or
    interrupted never leaves the container (name) running behind it. run_as: podman
    runs as that user (a rootless module's), in its own store.
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
    code, stderr = _stream_once(
        argv, name, env, on_message, stdin_text, RetryWatch(retry_limit), run_as
    )
    if lost_cache_volume_race(code, stderr):
        code, stderr = _stream_once(
            argv, name, env, on_message, stdin_text, RetryWatch(retry_limit), run_as
        )
    return code, stderr


def _stream_once(
    argv: list[str],
    name: str,
    env: dict[str, str],
    on_message: Callable[[Message], None],
    feed: Callable[[], str] | None,
    watch: RetryWatch,
    run_as: proc.RunAs | None,
) -> tuple[int, str]:
    child = proc.spawn(
        argv,
        env=env,
        stdin=proc.DEVNULL if feed is None else proc.PIPE,
        new_session=False,
        run_as=run_as,
    )
    stdout, stderr = child.stdout, child.stderr
    assert stdout is not None and stderr is not None
    other: list[str] = []

    def read_stdout() -> None:
        for raw in stdout:
            for fields in parse_json_lines(raw.decode(errors="replace")):
                on_message(parse_message(fields))

    def read_stderr() -> None:
        for raw in stderr:
            line = raw.decode(errors="replace")
            messages = list(parse_json_lines(line))
            if not messages:
                watch.see(line, time.monotonic())
                other.append(line)
            for fields in messages:
                on_message(parse_message(fields))

    readers = [threading.Thread(target=read, daemon=True) for read in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    stopped = False
    try:
        if feed is not None:
            _write_stdin(child, feed)
        stopped = _wait_watching(child, name, env, watch, run_as)
    finally:
        if child.poll() is None:  # unwinding (a signal, an error in feed): restic too
            _stop_container(name, env, run_as=run_as)
        code = child.wait()
        for reader in readers:
            reader.join()
    log.debug("%s: exit %d after %.3fs", name, code, time.monotonic() - started)
    if stopped:
        return Exit.STOPPED, "".join(other) + watch.reason() + "\n"
    return code, "".join(other)


def _wait_watching(
    child: proc.Popen[bytes],
    name: str,
    env: dict[str, str],
    watch: RetryWatch,
    run_as: proc.RunAs | None,
) -> bool:
    """Wait for the child; True when it was stopped because the storage kept failing."""
    while True:
        try:
            child.wait(timeout=0.5)
            return False
        except proc.TimeoutExpired:
            pass
        if watch.expired(time.monotonic()):
            log.warning("%s: %s", name, watch.reason())
            _stop_container(name, env, run_as=run_as)
            child.wait()
            return True


def _stop_container(
    name: str, env: Mapping[str, str], grace: float = 10.0, run_as: proc.RunAs | None = None
) -> None:
    """SIGTERM to restic (it removes its lock when it can), SIGKILL after grace seconds;
    the container (--rm) goes away with it."""
    proc.run(stop_argv(name, "TERM"), env=env, timeout=60, run_as=run_as)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        listed = proc.run(present_argv(name), env=env, timeout=60, run_as=run_as)
        if name not in listed.text.split():
            return
        time.sleep(0.2)
    proc.run(remove_argv([name]), env=env, timeout=60, run_as=run_as)


def _write_stdin(child: proc.Popen[bytes], feed: Callable[[], str]) -> None:
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
    run_as: proc.RunAs | None = None,
) -> proc.Result:
    """Run restic (or entrypoint) once in the container and wait for it. Past timeout,
    the container is stopped too and the result has code Exit.STOPPED. run_as: podman
    runs as that user, in its own store."""
    name = name or container_name()
    argv = podman_run_argv(
        target, args, mounts=mounts, name=name, entrypoint=entrypoint, hostname=hostname
    )
    env = {**podman_env, **container_env(target, password)}
    result = _run_once(argv, name, env, timeout, input, run_as)
    if lost_cache_volume_race(result.returncode, result.error_text):
        result = _run_once(argv, name, env, timeout, input, run_as)
    return result


def _run_once(
    argv: list[str],
    name: str,
    env: dict[str, str],
    timeout: float | None,
    input: bytes | None,
    run_as: proc.RunAs | None,
) -> proc.Result:
    try:
        return proc.run(argv, env=env, timeout=timeout, input=input, run_as=run_as)
    except proc.TimeoutExpired:
        # Only the podman client was killed: the container would go on working.
        _stop_container(name, env, grace=0, run_as=run_as)
        return proc.Result(
            tuple(argv), Exit.STOPPED, b"", f"restic stopped after {timeout:g}s\n".encode()
        )


def lost_cache_volume_race(code: int, stderr: str) -> bool:
    """True when podman refused to start the container because another one created the
    cache volume at the same moment. podman creates a named volume on first use, and two
    restic containers starting together on a store without it (a backup and its snapshot
    count, or two modules) both try; starting the loser again finds the volume there."""
    return (
        code == Exit.PODMAN_FAILED
        and f'named volume "{CACHE_VOLUME}"' in stderr
        and "already exists" in stderr
    )
