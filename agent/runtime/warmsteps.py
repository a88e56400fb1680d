"""Python steps forked from a warm interpreter instead of started cold.

A cold Python step spends ~0.2 s starting the interpreter and importing redis, pydantic and
the agent before doing anything; a backup fans out through two such steps and a restore
through five. The daemon therefore forks one helper process at start (before its threads)
that imports all of that once and forks a child per step: the child gets the step's
stdin, stdout, stderr and COMFD, its environment and working directory, its own session,
and runs the step file as `__main__`. To the runner it looks like any child process: a
pid to signal, pipes to read, an exit code.

Only steps whose `#!` line names this very interpreter (`/usr/bin/env python3` resolving
to it through the step's PATH, or its path) are forked; anything else starts cold, as it
would without the helper. A forked child's /proc environ is the helper's, so the
crash-recovery scan would not find it by AGENT_TASK_ID: each child is also recorded as
`<registry>/<pid>` (task id and start time) until it is reaped, and the recovery reads
those records. The helper exits when the daemon's end of the control socket closes; children
still running then go on like cold steps would, until the next daemon's recovery.
"""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import json
import logging
import os
import pkgutil
import runpy
import select
import selectors
import shutil
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.core import filemodes

log = logging.getLogger(__name__)

PYTHON_SHEBANGS = ("#!/usr/bin/env python3", "#!/usr/bin/env python")
COMFD = 3  # the COMFD number inside a forked step
_FDS = 5  # per request: reply socket, stdin, stdout, stderr, COMFD
_MAX_HEADER = 1 << 20


def runs_warm(path: Path, env: dict[str, str]) -> bool:
    """True when path is a Python step this interpreter can run as itself."""
    try:
        with path.open("rb") as handle:
            first = handle.readline(256).decode(errors="replace").strip()
    except OSError:
        return False
    if first in PYTHON_SHEBANGS:
        found = shutil.which(first.rsplit(" ", 1)[1], path=env.get("PATH", os.defpath))
    elif first.startswith("#!") and " " not in first:
        found = first[2:]
    else:
        return False
    if found is None:
        return False
    # Same file and same bin directory: a venv's python and its base interpreter are one
    # binary, but only the venv one sees the agent's packages.
    me = Path(sys.executable)
    with contextlib.suppress(OSError):
        return Path(found).parent == me.parent and os.path.samefile(found, me)
    return False


# --- registry of forked children, read by crash recovery -------------------------------


def start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat, which tells a pid apart from a later one reusing it;
    "" once the process has ended (a zombie too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] == "Z" else fields[19]


def _records(registry: Path) -> list[tuple[int, str, bool]]:
    """(pid, task id, still running) for each record in registry."""
    records = []
    for entry in registry.glob("[0-9]*"):
        try:
            task_id, started = entry.read_text().split()
        except (OSError, ValueError):
            task_id, started = "", "?"
        records.append((int(entry.name), task_id, start_time(int(entry.name)) == started))
    return records


def registered_processes(registry: Path, task_id: str) -> list[int]:
    """Running forked steps of task_id recorded in registry."""
    return [pid for pid, task, running in _records(registry) if task == task_id and running]


def prune_registry(registry: Path) -> None:
    """Forget records of steps that have ended."""
    for pid, _task, running in _records(registry):
        if not running:
            (registry / str(pid)).unlink(missing_ok=True)


# --- the daemon's side ---------------------------------------------------------------------


class WarmChild:
    """A forked step as the runner sees a child process."""

    def __init__(
        self, pid: int, reply: socket.socket, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[bytes]
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._reply = reply
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        """The exit code if the step has ended; safe from any thread."""
        with self._lock:
            if self.returncode is None and select.select([self._reply], [], [], 0)[0]:
                data = self._reply.recv(16)
                # Nothing to read: the helper died before reporting; the step is beyond reach.
                code = struct.unpack("!i", data)[0] if len(data) == 4 else -signal.SIGKILL
                self.returncode = code
        return self.returncode

    def wait(self) -> int:
        """Block until the step ends (the runner's thread only: it closes the socket)."""
        while (code := self.poll()) is None:
            select.select([self._reply], [], [], 1.0)
        self._reply.close()
        return code


class WarmSteps:
    """The daemon's handle on its helper process."""

    def __init__(self, registry: Path) -> None:
        """Fork the helper. Call it before the daemon starts any thread: the helper is a
        copy of the daemon (sharing its pages and imports), and forking a threaded process
        could copy a lock some other thread holds."""
        self.registry = registry
        registry.mkdir(parents=True, exist_ok=True)
        prune_registry(registry)
        self._lock = threading.Lock()
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # What exists now lives as long as the daemon: kept out of the collector's sweeps,
        # its pages stay shared with the helper instead of being copied on first touch.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the helper
            code = 1
            try:
                self._control.close()
                os.umask(filemodes.STEP_UMASK)  # the daemon's is for its own files only
                preload()
                gc.freeze()  # the same for the steps forked from here
                _Helper(theirs, registry, {}).serve()
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self._pid = pid
        self._exited = False

    def alive(self) -> bool:
        if not self._exited:
            with contextlib.suppress(ChildProcessError):
                self._exited = os.waitpid(self._pid, os.WNOHANG)[0] != 0
        return not self._exited

    def spawn(self, path: Path, env: dict[str, str], cwd: Path, comfd: int) -> WarmChild | None:
        """Fork path in the helper; None when the helper is gone (start it cold then)."""
        if not self.alive():
            return None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        header = json.dumps(
            {"path": str(path), "env": env, "cwd": str(cwd), "task": env.get("AGENT_TASK_ID", "")}
        ).encode()
        fds = array.array("i", [theirs.fileno(), stdin_r, stdout_w, stderr_w, comfd])
        try:
            with self._lock:
                self._control.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            sent = True
        except OSError:
            sent = False
        finally:
            # Our copies go before we wait: a helper dying now must leave us an EOF.
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
            theirs.close()
        try:
            reply = mine.recv(16) if sent else b""
        except OSError:
            reply = b""
        if len(reply) != 4:
            mine.close()
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            return None
        (pid,) = struct.unpack("!i", reply)
        pipes = os.fdopen(stdin_w, "wb"), os.fdopen(stdout_r, "rb"), os.fdopen(stderr_r, "rb")
        return WarmChild(pid, mine, *pipes)

    def close(self) -> None:
        """Let the helper go (it exits when the control socket closes)."""
        self._control.close()
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)


# --- the helper's side ---------------------------------------------------------------------


def preload() -> None:
    """Import what steps import, once, before any fork."""
    import agent.ns8api
    import agent.operations
    import agent.runtime.steps
    import agent.tasks

    # NS8 module steps: the API behind `import agent`, loaded lazily in a cold step.
    for package in (agent.operations, agent.ns8api):
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)


@dataclass
class _Helper:
    control: socket.socket
    registry: Path
    children: dict[int, socket.socket]

    def serve(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the daemon's handlers are not ours
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C on `agent serve` is its own
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(wake_r, selectors.EVENT_READ, "child")
        while True:
            for key, _ in selector.select():
                if key.data == "child":
                    os.read(wake_r, 4096)
                    self.reap()
                elif not self.accept():
                    return  # the daemon is gone: its next incarnation recovers our children
            self.reap()

    def accept(self) -> bool:
        fds = array.array("i")
        try:
            data, ancillary, _flags, _addr = self.control.recvmsg(
                _MAX_HEADER, socket.CMSG_SPACE(_FDS * fds.itemsize)
            )
        except InterruptedError:
            return True
        if not data:
            return False
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if len(fds) != _FDS:
            for fd in fds:
                os.close(fd)
            return True
        request = json.loads(data)
        reply = socket.socket(fileno=fds[0])
        pid = os.fork()
        if pid == 0:
            _run_child(request, list(fds[1:]), self.control)
        for fd in fds[1:]:
            os.close(fd)
        with contextlib.suppress(OSError):
            (self.registry / str(pid)).write_text(f"{request['task']} {start_time(pid)}\n")
        self.children[pid] = reply
        with contextlib.suppress(OSError):
            reply.send(struct.pack("!i", pid))
        return True

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            reply = self.children.pop(pid, None)
            (self.registry / str(pid)).unlink(missing_ok=True)
            if reply is not None:
                with contextlib.suppress(OSError):
                    reply.send(struct.pack("!i", os.waitstatus_to_exitcode(status)))
                reply.close()


def _run_child(request: dict[str, Any], fds: list[int], control: socket.socket) -> None:
    """In the forked child: become the step, never return."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        control.close()
        for target, fd in zip((0, 1, 2, COMFD), fds, strict=True):
            os.dup2(fd, target)
        os.closerange(COMFD + 1, os.sysconf("SC_OPEN_MAX"))
        sys.stdin = open(0, closefd=False)  # noqa: SIM115  (lives as long as the process)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["AGENT_COMFD"] = str(COMFD)
        os.chdir(request["cwd"])
        path = request["path"]
        sys.argv = [path]
        sys.path[0] = os.path.dirname(path)
        # A module's own packages (NS8's PYTHONPATH=<install>/pypkg), as a cold start
        # would put them: after the step's directory, before the interpreter's.
        extra = [entry for entry in request["env"].get("PYTHONPATH", "").split(":") if entry]
        sys.path[1:1] = [entry for entry in extra if entry not in sys.path]
        try:
            runpy.run_path(path, run_name="__main__")
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
