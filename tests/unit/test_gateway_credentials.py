"""A node's own gateway credentials, read from the Redis URL `cluster init` gave it."""

from __future__ import annotations

import pytest

from agent.adapters import gateway
from agent.core import redis_acl


def test_a_node_shows_the_user_its_redis_url_carries() -> None:
    url = redis_acl.agent_url("redis://:x@10.5.4.1:6379/0", "node/2", "p@ss:w/rd")
    assert gateway.Credentials.from_redis_url(url) == gateway.Credentials("node/2", "p@ss:w/rd")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",  # no credentials
        "redis://:secret@127.0.0.1:6379/0",  # requirepass only: the default user
        "redis://default:secret@127.0.0.1:6379/0",
        "redis://node%2F1@127.0.0.1:6379/0",  # no password
    ],
)
def test_a_url_without_a_user_of_its_own_shows_none(url: str) -> None:
    assert gateway.Credentials.from_redis_url(url) is None
