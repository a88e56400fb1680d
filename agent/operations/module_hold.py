"""Holding a module apart from its backups: a restore into it or its removal takes the
module's backup lock, so no backup reads it half-restored or half-removed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent.adapters.redis_store import Redis
from agent.core import redis_keys
from agent.core.errors import AgentError
from agent.runtime import locks

# As long as a backup run waits for another one of the same module.
HOLD_WAIT_SECONDS = 3600.0


@contextmanager
def held_from_backups(
    redis: Redis,
    module_id: str,
    cancelled: threading.Event | None = None,
    wait_seconds: float = HOLD_WAIT_SECONDS,
) -> Iterator[None]:
    """The module's backup lock, taken once a running backup of it ends (a backup that
    starts meanwhile waits for this one); raises AgentError when waiting is cancelled or
    lasts longer than wait_seconds. Removing the module may delete the lock itself."""
    key = redis_keys.module_backup_lock(module_id)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            lock = locks.acquire(redis, key, wait_seconds=min(1.0, wait_seconds))
            break
        except locks.LockBusy as busy:
            if cancelled is not None and cancelled.is_set():
                raise AgentError(f"cancelled while a backup of {module_id} was running") from None
            if time.monotonic() >= deadline:
                raise AgentError(
                    f"a backup of {module_id} kept running for {wait_seconds:.0f}s ({busy.holder})"
                ) from None
    with lock:
        yield
