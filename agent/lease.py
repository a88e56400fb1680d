"""The daemon lease: at most one daemon serves a node; a dead one's lease is taken over."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from agent import redis_keys
from agent.redis_api import Redis

LEASE_SECONDS = 15
HEARTBEAT_SECONDS = 5

# Extend only a lease we still hold (check-then-set must be atomic).
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    instance: str

    def encode(self) -> str:
        return f"{self.host} {self.pid} {self.instance}"

    @classmethod
    def decode(cls, value: str) -> Holder | None:
        parts = value.split(" ")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def is_dead_local_process(self) -> bool:
        """True when the holder ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def new_holder() -> Holder:
    return Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex)


def acquire(redis: Redis, node_id: int, holder: Holder) -> Holder | None:
    """Take the node's lease; returns the live holder that prevents it, or None on success."""
    key = redis_keys.node_daemon_lease(node_id)
    if redis.set(key, holder.encode(), nx=True, ex=LEASE_SECONDS):
        return None
    current = redis.get(key)
    other = Holder.decode(current) if current else None
    if current is None or other is None or other.is_dead_local_process():
        # WATCH makes the takeover lose against a daemon that took the lease meanwhile.
        with redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) != current:
                    return other
                pipe.multi()
                pipe.set(key, holder.encode(), ex=LEASE_SECONDS)
                pipe.execute()
                return None
            except Exception:
                return other
    return other


def extend(redis: Redis, node_id: int, holder: Holder) -> bool:
    key = redis_keys.node_daemon_lease(node_id)
    return bool(redis.eval(_EXTEND, 1, key, holder.encode(), LEASE_SECONDS))


def release(redis: Redis, node_id: int, holder: Holder) -> None:
    redis.eval(_RELEASE, 1, redis_keys.node_daemon_lease(node_id), holder.encode())


def is_served(redis: Redis, node_id: int) -> bool:
    return bool(redis.exists(redis_keys.node_daemon_lease(node_id)))
