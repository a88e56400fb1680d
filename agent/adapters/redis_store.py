"""Redis connections: one place that turns connection trouble into a clear error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis

from agent.adapters.redis_api import BinaryRedis, Redis, connection_errors, describe_url
from agent.core.errors import RedisUnavailable
from agent.core.settings import Settings

__all__ = ["REDIS_ERRORS", "BinaryRedis", "Context", "Redis", "connect", "connect_binary"]


def connect(url: str, *, check: bool = True, timeout: float = 5.0) -> Redis:
    """A decode_responses=True client for url; raises RedisUnavailable when unreachable."""
    # redis-py's annotations cover its asyncio client too ("Awaitable[T] | T"): seen as
    # the Protocol it satisfies (tests/unit/test_redis_api.py checks the commands).
    client = cast(
        Redis,
        redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=timeout, health_check_interval=30
        ),
    )
    if check:
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {describe_url(url)}: {exc}") from None
        except redis.AuthenticationError:
            raise RedisUnavailable(
                f"Redis at {describe_url(url)} refused the credentials"
            ) from None
    return client


def connect_binary(url: str, *, single_connection: bool = False) -> BinaryRedis:
    """A raw-bytes client (DUMP payloads are binary; a queued task may not be UTF-8)."""
    return cast(
        BinaryRedis,
        redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=5.0,
            single_connection_client=single_connection,
        ),
    )


@dataclass(frozen=True)
class Context:
    """What every operation needs: the node's settings and a Redis connection."""

    settings: Settings
    redis: Redis

    @classmethod
    def open(cls, settings: Settings) -> Context:
        return cls(settings=settings, redis=connect(settings.redis_url))


# redis-py is loaded here, so this names its connection errors too (one definition).
REDIS_ERRORS: tuple[type[Exception], ...] = connection_errors()
