"""Exclusive use of one repository by this cluster, and restic's locks judged by it.

restic judges a lock stale by its PID on its host; inside a container that PID is 1,
always alive, so a killed restic's lock looks live to the next restic forever (or 30
minutes). The agent knows better: while it holds a repository's lease nobody else in
the cluster works on that repository. So

- the holder that follows a crashed holder removes every lock (after stopping any restic
  container the crashed holder left running on this node);
- a restic run under the lease that ended abnormally (killed, stopped, a fatal error)
  has the locks removed before the lease is released;
- when that removal fails too, the lease is released as if its holder had crashed, so
  the next holder removes them.
Backup, retention and restore all take the lease through open_lease.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent.adapters import proc, restic
from agent.adapters.redis_store import Redis
from agent.adapters.restic_errors import Exit, may_leave_lock
from agent.core import restic_args
from agent.core.restic_messages import Message
from agent.runtime import locks

log = logging.getLogger("agent.repository")
UNLOCK_TIMEOUT = 300.0


class RepositoryBusy(Exception):
    """Another live holder kept the repository for the whole wait."""


class StaleLocksKept(Exception):
    """The locks a crashed holder left could not be removed."""


def container_prefix(lease_key: str) -> str:
    """What the names of the restic containers working under a lease start with: a
    holder that takes over after a crash finds its predecessor's by it."""
    return "restic-" + hashlib.sha256(lease_key.encode()).hexdigest()[:10] + "-"


@dataclass
class RepositoryLease:
    """The lease on one repository and the restic runs made under it (thread-safe)."""

    target: restic.ResticTarget
    password: str
    podman_env: Mapping[str, str]
    prefix: str
    retry_limit: float | None
    run_as: proc.RunAs | None = None  # a rootless module's user: its restic runs as it
    abnormal_end: str = ""  # why restic's locks must go before the lease does
    unlock_failure: str = ""  # what the last failed `unlock --remove-all` said
    _running: set[str] = field(default_factory=set)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def _started(self) -> str:
        name = restic.container_name(self.prefix.removesuffix("-"))
        with self._guard:
            self._running.add(name)
        return name

    def _ended(self, name: str, code: int, what: str) -> None:
        with self._guard:
            self._running.discard(name)
            if may_leave_lock(code) and not self.abnormal_end:
                self.abnormal_end = f"restic {what} ended with exit {code}"

    def run(self, args: Sequence[str], *, timeout: float, **kwargs: Any) -> proc.Result:
        """restic.run under the lease."""
        name = self._started()
        code: int = Exit.STOPPED  # unless it returns: an exception is an abnormal end
        try:
            done = restic.run(
                self.target,
                self.password,
                args,
                podman_env=self.podman_env,
                timeout=timeout,
                name=name,
                run_as=self.run_as,
                **kwargs,
            )
            code = done.returncode
            return done
        finally:
            self._ended(name, code, args[0])

    def stream(
        self,
        args: Sequence[str],
        *,
        on_message: Callable[[Message], None],
        **kwargs: Any,
    ) -> tuple[int, str]:
        """restic.stream under the lease, stopped when the storage keeps failing."""
        name = self._started()
        code: int = Exit.STOPPED
        try:
            code, stderr = restic.stream(
                self.target,
                self.password,
                args,
                podman_env=self.podman_env,
                on_message=on_message,
                name=name,
                retry_limit=self.retry_limit,
                run_as=self.run_as,
                **kwargs,
            )
            return code, stderr
        finally:
            self._ended(name, code, args[0])

    def remove_locks(self, why: str) -> bool:
        """`unlock --remove-all`; True when no lock is left (or no repository at all)."""
        log.warning("%s: %s; removing its restic locks", self.target.repository, why)
        timeout = UNLOCK_TIMEOUT if self.retry_limit is None else self.retry_limit + 60
        done = restic.run(
            self.target,
            self.password,
            restic_args.unlock_args(),
            podman_env=self.podman_env,
            timeout=timeout,
            name=restic.container_name(self.prefix.removesuffix("-")),
            run_as=self.run_as,
        )
        if done.returncode in (Exit.OK, Exit.NO_REPOSITORY):
            return True
        lines = done.error_text.strip().splitlines()
        self.unlock_failure = lines[-1][-300:] if lines else f"exit {done.returncode}"
        log.warning(
            "%s: restic locks not removed (exit %d): %s",
            self.target.repository,
            done.returncode,
            done.error_text.strip()[-300:],
        )
        return False


def stop_leftovers(
    prefix: str, podman_env: Mapping[str, str], run_as: proc.RunAs | None = None
) -> list[str]:
    """Kill and remove the restic containers on this node whose names start with prefix
    (run_as: in that user's store)."""
    listed = proc.run(restic.present_argv(prefix), env=podman_env, timeout=60, run_as=run_as)
    names = [name for name in listed.text.split() if name.startswith(prefix)]
    if names:
        log.warning("stopping restic containers a crashed run left: %s", ", ".join(names))
        proc.run(restic.remove_argv(names), env=podman_env, timeout=120, run_as=run_as)
    return names


@contextmanager
def open_lease(
    redis: Redis,
    lease_key: str,
    target: restic.ResticTarget,
    password: str,
    podman_env: Mapping[str, str],
    *,
    wait_seconds: float,
    retry_limit: float | None = None,
    run_as: proc.RunAs | None = None,
) -> Iterator[RepositoryLease]:
    """Hold the repository's lease for the body; raises RepositoryBusy, or StaleLocksKept
    when a crashed holder's locks cannot be removed (the body would only meet them).
    run_as: every restic run under it runs as that user (a rootless module's)."""
    try:
        held = locks.acquire(redis, lease_key, wait_seconds=wait_seconds)
    except locks.LockBusy as busy:
        raise RepositoryBusy(busy.holder) from None
    prefix = container_prefix(lease_key)
    lease = RepositoryLease(target, password, podman_env, prefix, retry_limit, run_as)
    dirty = False
    try:
        if held.previous_crashed:
            stop_leftovers(prefix, podman_env, run_as)
            if not lease.remove_locks("a previous run on the repository crashed"):
                dirty = True
                raise StaleLocksKept(
                    "cannot remove the restic locks a crashed run left on the repository: "
                    + lease.unlock_failure
                )
        try:
            yield lease
        finally:
            with lease._guard:
                unfinished = sorted(lease._running)
            if unfinished:  # the body unwound while restic worked: it must not go on alone
                proc.run(restic.remove_argv(unfinished), env=podman_env, timeout=120, run_as=run_as)
                lease.abnormal_end = lease.abnormal_end or "interrupted while restic ran"
            if lease.abnormal_end:
                dirty = not lease.remove_locks(lease.abnormal_end)
    finally:
        held.release(crashed=dirty)
