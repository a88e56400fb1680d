"""api-cli's own Redis client (agent/resp.py) against a real Redis, beside redis-py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from agent.adapters import resp


@pytest.fixture
def client(redis_url: str) -> Iterator[resp.Client]:
    made = resp.client(redis_url)
    yield made
    made.close()


@pytest.fixture
def prefix() -> str:
    return f"test-resp/{uuid.uuid4().hex}"


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    other = redis.Redis.from_url(redis_url, decode_responses=True)
    yield other
    other.close()


def kill(r: redis.Redis, client_id: int) -> None:
    assert r.client_kill_filter(_id=str(client_id)) == 1


def newest_subscriber(r: redis.Redis, after: int) -> int:
    ids = [int(c["id"]) for c in r.client_list(_type="pubsub") if int(c["id"]) > after]
    assert ids
    return max(ids)


def test_commands_answer_as_redis_py_does(client: resp.Client, r: redis.Redis, prefix: str) -> None:
    r.hset(f"{prefix}/h", mapping={"NODE_ID": "1", "ü": "wert"})
    r.sadd(f"{prefix}/s", "1", "2")
    assert client.ping()
    assert client.hget(f"{prefix}/h", "NODE_ID") == "1"
    assert client.hget(f"{prefix}/h", "ü") == "wert"
    assert client.hget(f"{prefix}/h", "missing") is None
    assert client.sismember(f"{prefix}/s", 2) and not client.sismember(f"{prefix}/s", 3)
    assert client.exists(f"{prefix}/h", f"{prefix}/s", f"{prefix}/none") == 2
    assert client.lpush(f"{prefix}/q", '{"id": "a"}', "b") == 2
    assert r.lrange(f"{prefix}/q", 0, -1) == ["b", '{"id": "a"}']
    assert client.lrem(f"{prefix}/q", 1, '{"id": "a"}') == 1
    r.set(f"{prefix}/k1", "one")
    with client.pipeline(transaction=False) as pipe:
        pipe.get(f"{prefix}/k1")
        pipe.get(f"{prefix}/k2")
        assert pipe.execute() == ["one", None]
    with pytest.raises(resp.RespError, match="WRONGTYPE"):
        client.get(f"{prefix}/h")
    assert client.get(f"{prefix}/k1") == "one"  # the connection is still in step


def test_a_subscription_hears_what_is_published_and_waits_no_longer_than_asked(
    client: resp.Client, r: redis.Redis, prefix: str
) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{prefix}/channel")
    assert r.pubsub_numsub(f"{prefix}/channel") == [(f"{prefix}/channel", 1)]  # confirmed
    started = time.monotonic()
    assert pubsub.get_message(timeout=0.3) is None
    assert time.monotonic() - started < 2
    r.publish(f"{prefix}/channel", '{"status": "running", "progress": 5}')
    r.publish(f"{prefix}/channel", "second")
    first = pubsub.get_message(timeout=5)
    assert first is not None and first["data"] == '{"status": "running", "progress": 5}'
    second = pubsub.get_message(timeout=5)
    assert second is not None and second["data"] == "second"
    pubsub.close()


def test_broken_connections_reconnect_but_writes_are_never_sent_twice(
    client: resp.Client, r: redis.Redis, prefix: str
) -> None:
    r.set(f"{prefix}/k", "v")
    kill(r, client._call("CLIENT", "ID"))
    assert client.get(f"{prefix}/k") == "v"  # a read is tried again on a new connection

    kill(r, client._call("CLIENT", "ID"))
    with pytest.raises(resp.RespConnectionError):
        client.lpush(f"{prefix}/q", "task")
    assert r.llen(f"{prefix}/q") == 0
    assert client.lpush(f"{prefix}/q", "task") == 1  # the next command connects again

    marker = int(r.client_id())
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{prefix}/channel")
    kill(r, newest_subscriber(r, marker))
    with pytest.raises(resp.RespConnectionError):
        pubsub.get_message(timeout=10)
    r.publish(f"{prefix}/channel", "lost")  # nobody listens between two connections
    assert next_message(pubsub) is None  # subscribed again on the next call
    r.publish(f"{prefix}/channel", "after")
    assert next_message(pubsub) == "after"
    pubsub.close()


def next_message(pubsub: resp.PubSub, seconds: float = 3.0) -> str | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is not None:
            return str(message["data"])
    return None


def test_an_unreachable_server_is_a_connection_error() -> None:
    from tests.conftest import free_port

    with pytest.raises(resp.RespConnectionError, match="cannot connect"):
        resp.client(f"redis://127.0.0.1:{free_port()}/0")
