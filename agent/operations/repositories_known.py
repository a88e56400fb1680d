"""Which repositories this cluster has written: one of them that reads as missing has
vanished (an unmounted disk, an emptied bucket) and must not be created anew."""

from __future__ import annotations

from agent.adapters.redis_store import Redis
from agent.core import redis_keys


def remember(redis: Redis, destination_id: str, path: str, config_id: str) -> None:
    """Record that path on the destination holds this cluster's data; a config id, once
    known (from `init`), is never replaced by an unknown one."""
    key = redis_keys.written_repositories(destination_id)
    if config_id:
        redis.hset(key, path, config_id)
    else:
        redis.hsetnx(key, path, "")


def is_known(redis: Redis, destination_id: str, path: str) -> bool:
    return bool(redis.hexists(redis_keys.written_repositories(destination_id), path))
