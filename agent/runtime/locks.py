"""Redis locks with a heartbeat that also tell when the previous holder crashed.

A lock is a hash {holder, expires} with no Redis TTL: a holder that dies leaves it behind,
which is exactly how the next holder learns of the crash (and, for a repository, that a
stale restic lock must be removed). A holder is alive while it renews `expires`, or while
its process still runs on this host.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from agent.adapters.redis_store import Redis
from agent.runtime.lease import Holder, new_holder

# ARGV: holder, ttl ms, a holder known to be dead (or ""). Returns {acquired, previous}.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local current = redis.call('HGET', KEYS[1], 'holder')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
if current and current ~= ARGV[1] and expires > now_ms and current ~= ARGV[3] then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires', now_ms + tonumber(ARGV[2]))
if current and current ~= ARGV[1] then
  return {1, current}
end
return {1, ''}
"""
_RENEW = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('HSET', KEYS[1], 'expires', now_ms + tonumber(ARGV[2]))
return 1
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Expire the lock but leave the holder's name: the next holder takes it at once and, as
# after a crash, cleans up what this holder could not.
_ABANDON = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'expires', 0)
return 1
"""


class LockBusy(Exception):
    """Another live holder kept the lock for the whole wait."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{key} is held by {holder}")
        self.holder = holder


@dataclass
class HeldLock:
    redis: Redis
    key: str
    holder: Holder
    ttl_seconds: float
    previous_crashed: bool  # a holder died without releasing: clean up after it
    _stop: threading.Event
    _thread: threading.Thread | None = None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_seconds / 3):
            try:
                self.redis.eval(
                    _RENEW, 1, self.key, self.holder.encode(), int(self.ttl_seconds * 1000)
                )
            except Exception:  # a missed beat is retried; the TTL covers two more
                continue

    def release(self, crashed: bool = False) -> None:
        """Let the lock go; crashed=True leaves it as a crashed holder would (the next
        holder sees previous_crashed and cleans up)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.redis.eval(_ABANDON if crashed else _RELEASE, 1, self.key, self.holder.encode())

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_acquire(redis: Redis, key: str, holder: Holder, ttl_seconds: float) -> tuple[bool, str]:
    """One attempt; (acquired, previous holder or '')."""
    dead = ""
    for _ in range(2):
        reply = redis.eval(_ACQUIRE, 1, key, holder.encode(), int(ttl_seconds * 1000), dead)
        if not isinstance(reply, list) or len(reply) != 2:
            raise ValueError(f"lock script answered {reply!r}")
        acquired, answer = reply
        previous = answer.decode() if isinstance(answer, bytes) else str(answer)
        if acquired:
            return True, previous
        other = Holder.decode(previous)
        if other is None or not other.is_dead_local_process():
            return False, previous
        dead = previous  # its process is gone: take over without waiting for expiry
    return False, previous


def acquire(
    redis: Redis,
    key: str,
    *,
    ttl_seconds: float = 30.0,
    wait_seconds: float = 0.0,
    retry_seconds: float = 1.0,
    holder: Holder | None = None,
) -> HeldLock:
    """Take the lock, waiting up to wait_seconds for a live holder; raises LockBusy."""
    holder = holder or new_holder()
    deadline = time.monotonic() + wait_seconds
    while True:
        acquired, previous = try_acquire(redis, key, holder, ttl_seconds)
        if acquired:
            break
        if time.monotonic() >= deadline:
            raise LockBusy(key, previous)
        time.sleep(min(retry_seconds, max(0.05, deadline - time.monotonic())))
    lock = HeldLock(redis, key, holder, ttl_seconds, bool(previous), threading.Event())
    lock._thread = threading.Thread(target=lock._heartbeat, name=f"lock {key}", daemon=True)
    lock._thread.start()
    return lock
