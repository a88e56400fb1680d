"""The daemon lease: at most one daemon serves a node; a dead one's lease is taken over."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import NamedTuple

from agent.adapters.redis_api import Redis, TaskClient, watching
from agent.core import redis_keys

LEASE_SECONDS = 15
HEARTBEAT_SECONDS = 5

# Extend only a lease we still hold (check-then-set must be atomic). One that lapsed with
# nobody taking it (Redis was down or restarted longer than the lease) is ours again.
_EXTEND = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@functools.cache
def process_space() -> str:
    """Which processes a pid names here: this kernel's boot and this PID namespace.
    A hostname does not tell: containers started with the host's network share it, and
    so do two machines named alike. '' when /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}.{namespace}" if boot else ""


class Holder(NamedTuple):
    host: str  # for people: where the holder ran
    pid: int
    instance: str
    space: str = ""  # where pid means that process (process_space); "": not known

    def encode(self) -> str:
        return f"{self.host} {self.pid} {self.instance} {self.space}".rstrip()

    @classmethod
    def decode(cls, value: str) -> Holder | None:
        parts = value.split(" ")
        if len(parts) not in (3, 4) or not parts[1].isdigit():
            return None
        # Three parts: a holder written before spaces were recorded; only expiry frees it.
        space = parts[3] if len(parts) == 4 else ""
        return cls(parts[0], int(parts[1]), parts[2], space)

    def is_dead_local_process(self) -> bool:
        """True when the holder's pid names a process here (same kernel boot and PID
        namespace) and that process is gone."""
        if not self.space or self.space != process_space():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        # A killed daemon whose parent has not reaped it yet is a zombie: dead all the same.
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            return False


def new_holder() -> Holder:
    import uuid  # only a daemon takes a lease; api-cli reads them

    return Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex, process_space())


def acquire(redis: Redis, node_id: int, holder: Holder, attempts: int = 5) -> bool:
    """Take the node's lease; True only once holder's value is written. Redis errors
    propagate: a daemon that cannot tell must not act as the node's daemon."""
    from redis.exceptions import WatchError  # the daemon's client; api-cli never acquires

    key = redis_keys.node_daemon_lease(node_id)
    mine = holder.encode()
    for _ in range(attempts):
        if redis.set(key, mine, nx=True, ex=LEASE_SECONDS):
            return True
        with redis.pipeline() as pipe:
            try:
                # Read under WATCH: the takeover below is void if anyone writes meanwhile.
                pipe.watch(key)
                current = watching(pipe).get(key)
                if current is None:
                    continue  # it expired after our SET NX: try that again
                other = Holder.decode(current)
                if other is not None and not other.is_dead_local_process():
                    return False
                pipe.multi()
                pipe.set(key, mine, ex=LEASE_SECONDS)
                pipe.execute()
                return True
            except WatchError:
                continue  # another daemon wrote the lease first: look again
    return False


def current_holder(redis: TaskClient, node_id: int) -> Holder | None:
    """Who holds the node's lease now (None: nobody, or a value that is not a holder)."""
    value = redis.get(redis_keys.node_daemon_lease(node_id))
    return Holder.decode(value) if value else None


def extend(redis: Redis, node_id: int, holder: Holder) -> bool:
    key = redis_keys.node_daemon_lease(node_id)
    return bool(redis.eval(_EXTEND, 1, key, holder.encode(), LEASE_SECONDS))


def release(redis: Redis, node_id: int, holder: Holder) -> None:
    redis.eval(_RELEASE, 1, redis_keys.node_daemon_lease(node_id), holder.encode())


def is_served(redis: TaskClient, node_id: int) -> bool:
    return bool(redis.exists(redis_keys.node_daemon_lease(node_id)))
