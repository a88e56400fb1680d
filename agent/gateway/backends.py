"""The gateway's upstreams: one `rclone serve restic` child per destination, started on
first use (or ahead of it, see agent/gateway/warm.py) over the destination's rclone
remote; a `rest` destination is itself a restic REST server and is reached directly.
Each child listens on the loopback behind a user and password made for it, which only
the gateway knows: a module (whose restic runs with --network=host) cannot reach a
child around the gateway's checks.

A child that cannot start (a detached disk, a bad key) fails that destination's requests
with its reason; the gateway and the other destinations go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agent.adapters import proc, rclone, sockets
from agent.adapters.destinations import (
    Destination,
    check_destination,
    load_destination,
    local_directory,
    rclone_target,
    url_body,
)
from agent.adapters.redis_store import REDIS_ERRORS, Redis
from agent.core.destination_rules import DestinationNotAllowed, LocalPolicy
from agent.core.errors import AgentError, DestinationNotFound
from agent.core.gateway_rules import WEBDAV_PREFIX

log = logging.getLogger("agent.gateway")
START_SECONDS = 15.0


class Unavailable(AgentError):
    """This destination cannot be served now (the reason says why)."""


@dataclass(frozen=True)
class Upstream:
    base_url: str  # http://127.0.0.1:<port> or a rest destination's own URL (no slash)
    auth: tuple[str, str] | None = None  # a rest destination's own user and password


@dataclass(frozen=True)
class ChildSpec:
    """What an rclone child serves, from the destination as stored now."""

    remote: str
    env: dict[str, str] = field(hash=False)

    @property
    def fingerprint(self) -> str:
        text = json.dumps([self.remote, sorted(self.env.items())])
        return hashlib.sha256(text.encode()).hexdigest()


def serve_webdav_argv(address: str, remote: str, destination_id: str) -> list[str]:
    """The WebDAV child of a destination (the small files beside repositories), under the
    gateway's own path for it."""
    return rclone.serve_webdav_argv(address, remote, f"{WEBDAV_PREFIX}{destination_id}")


def child_spec(destination: Destination) -> ChildSpec:
    """The rclone remote serving destination from this host (a local one: its directory)."""
    if destination.provider == "local":
        return ChildSpec(local_directory(destination), {})
    remote, env = rclone_target(destination)
    return ChildSpec(remote, env)


@dataclass
class _Child:
    spec: ChildSpec
    process: proc.Popen[bytes]
    address: str
    log_path: str
    auth: tuple[str, str]  # the child's own user and password (RCLONE_USER/RCLONE_PASS)


class Backends:
    """Upstreams by destination id; rclone children started on demand, restarted when
    they died or the destination changed, all stopped by close()."""

    def __init__(
        self,
        redis: Redis,
        policy: Callable[[], LocalPolicy],
        log_dir: str,
        run_dir: str,
        # (address, remote, destination id) → argv; None: rclone.serve_restic_argv
        serve_argv: Callable[[str, str, str], list[str]] | None = None,
        kind: str = "",  # "" restic's children, "webdav" the WebDAV ones
    ) -> None:
        self._redis = redis
        self._policy = policy
        self._log_dir = log_dir
        self._serve_argv = serve_argv
        self._suffix = f"-{kind}" if kind else ""
        # One pid file per child: a gateway killed outright leaves children that the next
        # one stops before starting its own.
        self._pid_dir = os.path.join(run_dir, f"gateway-children{self._suffix}")
        self._children: dict[str, _Child] = {}
        # One lock per destination: a slow start of one never holds up another's requests.
        self._locks: dict[str, asyncio.Lock] = {}
        os.makedirs(self._pid_dir, mode=0o700, exist_ok=True)
        stop_leftovers(self._pid_dir)

    async def upstream(self, destination_id: str) -> Upstream:
        destination = await asyncio.to_thread(self._load, destination_id)
        if destination.provider == "rest":
            params = destination.parameters
            user = params.get("rest_user", "")
            auth = (user, params.get("rest_password", "")) if user else None
            return Upstream(url_body(destination.url).rstrip("/"), auth)
        spec = child_spec(destination)
        async with self._locks.setdefault(destination_id, asyncio.Lock()):
            child = self._children.get(destination_id)
            if child is None or child.process.poll() is not None or child.spec != spec:
                if child is not None:
                    self._stop(child)
                child = await self._start(destination_id, destination, spec)
                self._children[destination_id] = child
        return Upstream(f"http://{child.address}", child.auth)

    async def replace(self, destination_id: str, stale: Upstream) -> Upstream:
        """The upstream of destination_id once more, with its child started anew when it
        is still the one at stale, which took no connection (it died after it was looked
        at, or its listener is gone while it runs on)."""
        async with self._locks.setdefault(destination_id, asyncio.Lock()):
            child = self._children.get(destination_id)
            if child is not None and f"http://{child.address}" == stale.base_url:
                del self._children[destination_id]
                code = child.process.poll()
                log.warning(
                    "destination %s: rclone pid %d took no connection at %s (%s): starting another",
                    destination_id,
                    child.process.pid,
                    child.address,
                    "still running" if code is None else f"exit {code}",
                )
                self._stop(child)
        return await self.upstream(destination_id)

    async def refresh(self, destination_id: str) -> None:
        """The child of destination_id started (or restarted) as the destination is
        stored now, or stopped when it is gone or no longer served here. Failures are
        only logged: a request meets them again, with its reason."""
        try:
            await self.upstream(destination_id)
            return
        except DestinationNotFound:
            log.info("destination %s removed", destination_id)
        except Unavailable as exc:
            log.info("destination %s not served: %s", destination_id, exc)
        except REDIS_ERRORS as exc:
            log.warning("destination %s not started ahead: %s", destination_id, exc)
            return
        except (AgentError, OSError) as exc:
            log.warning("destination %s not started ahead: %s", destination_id, exc)
        async with self._locks.setdefault(destination_id, asyncio.Lock()):
            child = self._children.pop(destination_id, None)
            if child is not None:
                self._stop(child)

    def _load(self, destination_id: str) -> Destination:
        try:
            destination = load_destination(self._redis, destination_id)
            check_destination(destination, self._policy())
        except DestinationNotAllowed as exc:
            raise Unavailable(f"not served by this node: {exc}") from None
        if destination.provider == "local" and not os.path.isdir(local_directory(destination)):
            raise Unavailable(f"{local_directory(destination)} is missing on this node")
        return destination

    async def _start(
        self, destination_id: str, destination: Destination, spec: ChildSpec
    ) -> _Child:
        log_name = f"gateway{self._suffix}-{destination_id[:8]}.log"
        log_path = os.path.join(self._log_dir, log_name)
        auth = (secrets.token_hex(8), secrets.token_hex(24))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RCLONE_CONFIG": "/dev/null",  # the remote is defined by the environment only
            **spec.env,
            # After the remote's: no destination parameter can name the child's login.
            "RCLONE_USER": auth[0],
            "RCLONE_PASS": auth[1],
        }
        handle: IO[bytes]
        with open(log_path, "ab") as handle:
            process = proc.spawn(
                # Port 0: the child holds the port the kernel gave it, which no other
                # process can have taken before it (a picked free port could be).
                self._serve_argv(f"{sockets.LOOPBACK}:0", spec.remote, destination_id)
                if self._serve_argv
                else rclone.serve_restic_argv(f"{sockets.LOOPBACK}:0", spec.remote),
                env=env,
                stdin=proc.DEVNULL,
                stdout=handle,
                stderr=handle,
                # Started on the event loop's thread: a SIGKILLed gateway leaves no rclone.
                die_with_parent=True,
            )
        child = _Child(spec, process, "", log_path, auth)
        Path(self._pid_dir, f"{process.pid}.pid").write_text(f"{process.pid}\n")
        deadline = time.monotonic() + START_SECONDS
        try:
            while (port := sockets.bound_port(process.pid, sockets.LOOPBACK)) is None:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(
                        f"the storage server of {destination.name or destination_id} did "
                        f"not start: {_tail(log_path)}"
                    )
                await asyncio.sleep(0.02)
        except BaseException:  # Unavailable, or cancelled (the gateway stopping)
            self._stop(child)
            raise
        child.address = f"{sockets.LOOPBACK}:{port}"
        log.info(
            "destination %s served by rclone pid %d at %s",
            destination_id,
            process.pid,
            child.address,
        )
        return child

    def _stop(self, child: _Child) -> None:
        if child.process.poll() is None:
            child.process.terminate()
            try:
                child.process.wait(5)
            except proc.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._pid_dir, f"{child.process.pid}.pid"))

    def close(self) -> None:
        for child in self._children.values():
            self._stop(child)
        self._children.clear()

    def pids(self) -> dict[str, int]:
        """Running children by destination id (tests stop one to see only it fail)."""
        return {
            dest: child.process.pid
            for dest, child in self._children.items()
            if child.process.poll() is None
        }


def stop_leftovers(pid_dir: str) -> None:
    """Kill the `rclone serve` children an earlier gateway left (their pid files say who)."""
    for name in os.listdir(pid_dir):
        path = os.path.join(pid_dir, name)
        pid = int(name.removesuffix(".pid")) if name.removesuffix(".pid").isdigit() else 0
        if pid and _is_rclone_serve(pid):
            log.warning("stopping rclone pid %d left by an earlier gateway", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.unlink(path)


def _is_rclone_serve(pid: int) -> bool:
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")  # noqa: SIM115
    except OSError:
        return False
    return rclone.is_serve_argv(argv)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 2000))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "no log"
    return proc.last_line(text)
