"""Live updates for the browser: task progress and cluster events from Redis pub/sub, as
server-sent events (the browser's EventSource), never by polling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from agent.core import redis_keys

HEARTBEAT_SECONDS = 15.0


def parse_progress(channel: str, data: str) -> dict[str, Any] | None:
    """progress/<agent>/task/<id> + {"status", "progress"} → what the page needs; None for
    anything malformed (whoever can publish is not trusted to shape the page)."""
    parsed = redis_keys.parse_progress_channel(channel)
    if parsed is None:
        return None
    agent_id, task_id = parsed
    try:
        payload = json.loads(data)
        status, percent = str(payload["status"])[:32], int(payload["progress"])
    except (ValueError, KeyError, TypeError):
        return None
    return {
        "agent": agent_id[:128],
        "task": task_id[:64],
        "status": status,
        "progress": max(0, min(100, percent)),
    }


def parse_event(channel: str) -> dict[str, Any]:
    """cluster/event/<name> or node/<N>/event/<name> → {"source", "name"}."""
    source, name = redis_keys.parse_event_channel(channel)
    return {"source": source[:64], "name": name[:128]}


def sse(kind: str, payload: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"


async def stream(redis_url: str) -> AsyncIterator[str]:
    """Every progress message and event while the browser listens; a comment line every
    HEARTBEAT_SECONDS so a closed tab is noticed and the subscription released."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.psubscribe(redis_keys.PROGRESS_PATTERN, *redis_keys.EVENT_PATTERNS)
        yield ": subscribed\n\n"
        while True:
            message = await pubsub.get_message(timeout=HEARTBEAT_SECONDS)
            if message is None:
                yield ": heartbeat\n\n"
                continue
            channel, data = str(message.get("channel", "")), str(message.get("data", ""))
            progress = parse_progress(channel, data)
            if progress is not None:
                yield sse("progress", progress)
            elif redis_keys.parse_event_channel(channel)[1]:
                yield sse("cluster-event", parse_event(channel))
    finally:
        await pubsub.aclose()
        await client.aclose()
