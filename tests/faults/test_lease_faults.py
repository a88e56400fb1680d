"""The node lease under races and Redis errors: never "acquired" unless it is ours."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import redis

from agent.core import redis_keys
from agent.runtime import lease


class RivalTakesOver(redis.Redis):  # type: ignore[type-arg]
    """A real client; the moment it opens its takeover transaction, a live rival daemon
    writes the lease (the race a second `agent serve` starting at once would win)."""

    rival = lease.Holder(socket.gethostname(), os.getpid(), "rival", lease.process_space())

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.set(redis_keys.node_daemon_lease(1), self.rival.encode(), ex=60)
        return super().pipeline(*args, **kwargs)


def test_a_lost_takeover_race_is_not_an_acquired_lease(redis_url: str, redis_client: Any) -> None:
    # The previous value cannot be read as a holder (a stray write): it may be taken over.
    redis_client.set(redis_keys.node_daemon_lease(1), "left by something else", ex=60)
    client = RivalTakesOver.from_url(redis_url, decode_responses=True)
    me = lease.new_holder()
    assert not lease.acquire(client, 1, me)
    assert redis_client.get(redis_keys.node_daemon_lease(1)) == RivalTakesOver.rival.encode()
    assert lease.current_holder(redis_client, 1) == RivalTakesOver.rival


def test_a_redis_error_during_takeover_is_not_an_acquired_lease(
    redis_url: str, redis_client: Any
) -> None:
    # A real Redis refusing WATCH (an ACL without it) stands for any error mid-takeover.
    redis_client.set(redis_keys.node_daemon_lease(1), "left by something else", ex=60)
    redis_client.acl_setuser(
        "nowatch", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-watch"]
    )
    try:
        host_port = redis_url.split("//", 1)[1]
        client = redis.Redis.from_url(f"redis://nowatch:pw@{host_port}", decode_responses=True)
        with pytest.raises(redis.RedisError):
            lease.acquire(client, 1, lease.new_holder())
        assert redis_client.get(redis_keys.node_daemon_lease(1)) == "left by something else"
    finally:
        redis_client.acl_deluser("nowatch")


def test_a_lapsed_lease_is_taken_back_by_its_daemon_but_never_from_another(
    redis_client: Any,
) -> None:
    me, rival = lease.new_holder(), lease.Holder("elsewhere", 1, "rival")
    assert lease.acquire(redis_client, 1, me)
    redis_client.delete(redis_keys.node_daemon_lease(1))  # Redis restarted without it
    assert lease.extend(redis_client, 1, me)
    assert lease.current_holder(redis_client, 1) == me
    redis_client.set(redis_keys.node_daemon_lease(1), rival.encode(), ex=60)
    assert not lease.extend(redis_client, 1, me)
    assert lease.current_holder(redis_client, 1) == rival
    assert not lease.acquire(redis_client, 1, me)
