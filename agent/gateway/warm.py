"""Keeping the gateway's rclone children ready: each destination's child is started when
the gateway starts and again whenever the destination is added or changed (the cluster's
backup-destination-changed event), so that a module's first request does not wait for
rclone to start. A removed or no longer servable destination has its child stopped.

Nothing here decides who may do what: every request is still checked by the app, and a
destination's child is (re)started on demand as before when warming missed it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable

from agent.adapters.redis_store import REDIS_ERRORS, Redis
from agent.core import redis_keys
from agent.gateway.backends import Backends

log = logging.getLogger("agent.gateway")
DESTINATION_CHANGED = redis_keys.cluster_event(redis_keys.Event.BACKUP_DESTINATION_CHANGED)


def destination_ids(redis: Redis) -> list[str]:
    """Every destination of the cluster, by id."""
    keys = redis.scan_iter(match=redis_keys.BACKUP_REPOSITORY_PATTERN, count=500)
    return sorted({redis_keys.id_in_key(key) for key in keys})


def changed_ids(payload: object) -> list[str]:
    """The destination ids a backup-destination-changed message names (anything else in
    it is ignored: the message comes from Redis)."""
    try:
        data = json.loads(payload) if isinstance(payload, str | bytes) else None
    except ValueError:
        return []
    ids = data.get("destination_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list):
        return []
    return [item for item in ids if isinstance(item, str) and item.isprintable() and item]


async def refresh_all(backends: Backends, redis: Redis) -> None:
    """Every destination's child as the destination is stored now."""
    try:
        ids = await asyncio.to_thread(destination_ids, redis)
    except REDIS_ERRORS as exc:
        log.warning("cannot list the destinations to serve: %s", exc)
        return
    await refresh(backends, ids)


async def refresh(backends: Backends, ids: Iterable[str]) -> None:
    for destination_id in ids:
        await backends.refresh(destination_id)


class DestinationWatcher:
    """A thread following backup-destination-changed; each change refreshes the named
    destinations' children on the gateway's event loop."""

    def __init__(self, redis: Redis, backends: Backends, loop: asyncio.AbstractEventLoop) -> None:
        self._redis = redis
        self._backends = backends
        self._loop = loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-warm", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _submit(self, ids: list[str] | None) -> None:
        if self._stop.is_set():
            return
        if ids is None:
            work = refresh_all(self._backends, self._redis)
        else:
            work = refresh(self._backends, ids)
        try:
            asyncio.run_coroutine_threadsafe(work, self._loop)
        except RuntimeError:  # the loop closed meanwhile: the gateway is stopping
            work.close()

    def _run(self) -> None:
        missed = False
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(DESTINATION_CHANGED)
                if missed:  # changes published while Redis was away are lost: look again
                    self._submit(None)
                    missed = False
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._submit(changed_ids(message.get("data")))
            except REDIS_ERRORS as exc:
                log.warning("destination events lost, subscribing again: %s", exc)
                missed = True
                self._stop.wait(1.0)
            finally:
                pubsub.close()
