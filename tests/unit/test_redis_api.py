"""redis-py against the Protocols of agent/redis_api.py: mypy cannot compare them (redis-py
annotates sync commands as "Awaitable[T] | T"), so each command the code may send is
checked here to exist in redis-py and to take the arguments the Protocol lets callers pass.
resp.Client is checked by mypy itself (apicli.client_redis returns it as a TaskClient)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import redis
import redis.client

from agent.adapters import redis_api, resp

PAIRS: list[tuple[type[Any], type[Any]]] = [
    (redis_api.TaskClient, redis.Redis),
    (redis_api.Redis, redis.Redis),
    (redis_api.BinaryRedis, redis.Redis),
    (redis_api.TaskPipeline, redis.client.Pipeline),
    (redis_api.Pipeline, redis.client.Pipeline),
    (redis_api.TaskPubSub, redis.client.PubSub),
    (redis_api.PubSub, redis.client.PubSub),
    (redis_api.TaskClient, resp.Client),
    (redis_api.TaskPipeline, resp.Pipeline),
    (redis_api.TaskPubSub, resp.PubSub),
]


def commands(protocol: type[Any]) -> list[str]:
    """The methods a Protocol declares (its own and inherited), dunders aside."""
    names = set()
    for klass in protocol.__mro__:
        if klass is object or not getattr(klass, "_is_protocol", False):
            continue
        names |= {n for n, v in vars(klass).items() if callable(v) and not n.startswith("_")}
    return sorted(names)


def call_shape(method: Any) -> tuple[list[object], dict[str, object]]:
    """Arguments a caller may pass per the Protocol's signature: every positional one,
    two for *args, every keyword-only one (by name)."""
    positional: list[object] = []
    keywords: dict[str, object] = {}
    for parameter in list(inspect.signature(method).parameters.values())[1:]:
        if parameter.kind is parameter.VAR_POSITIONAL:
            positional += ["a", "b"]
        elif parameter.kind is parameter.KEYWORD_ONLY:
            keywords[parameter.name] = "k"
        elif parameter.kind is not parameter.VAR_KEYWORD:
            positional.append("p")
    return positional, keywords


CASES = [
    pytest.param(protocol, client, name, id=f"{client.__module__}.{client.__name__}.{name}")
    for protocol, client in PAIRS
    for name in commands(protocol)
]


@pytest.mark.parametrize(("protocol", "client", "name"), CASES)
def test_the_client_takes_what_the_protocol_lets_callers_pass(
    protocol: type[Any], client: type[Any], name: str
) -> None:
    implementation = getattr(client, name, None)
    assert implementation is not None, f"{client.__name__} has no {name}"
    positional, keywords = call_shape(getattr(protocol, name))
    inspect.signature(implementation).bind(object(), *positional, **keywords)


def test_the_protocols_name_the_commands_the_code_uses() -> None:
    assert {"get", "hget", "lpush", "lrem", "pipeline", "pubsub"} <= set(
        commands(redis_api.TaskClient)
    )
    assert {"eval", "scan_iter", "hset", "publish"} <= set(commands(redis_api.Redis))
    assert {"watch", "multi", "execute"} <= set(commands(redis_api.Pipeline))
