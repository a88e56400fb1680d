"""What code shared by redis-py users and api-cli's own client (agent/resp.py) needs,
importable without importing redis-py: the client type, URLs for messages, and which
exceptions mean connection trouble."""

from __future__ import annotations

import sys
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from agent.resp import RespConnectionError

# redis-py annotates every sync command as "Awaitable[T] | T" (its asyncio client shares the
# stubs), so typed call sites would each need a cast; values are checked where they are used.
# resp.Client offers the same method names for the few commands api-cli sends.
Redis: TypeAlias = Any


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def connection_errors() -> tuple[type[Exception], ...]:
    """Connection trouble, as raised by whichever client this process has loaded."""
    errors: list[type[Exception]] = [RespConnectionError]
    redis = sys.modules.get("redis")
    if redis is not None:
        errors += [redis.ConnectionError, redis.TimeoutError]
    return tuple(errors)
