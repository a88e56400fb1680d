"""`agent.redis_connect`: a redis-py client as the module, with NS8's defaults.

NS8 gives a step REDIS_ADDRESS (the leader's Redis), REDIS_REPLICA_ADDRESS (the node's
read-only replica) and, in the module's agent.env, REDIS_USER/REDIS_PASSWORD. This
project has one Redis per cluster; the node's REDIS_URL names it. Until a module has
Redis credentials of its own (REDIS_USER unset), privileged connections use the
credentials of REDIS_URL, and so do unprivileged ones when that Redis wants a password
for its default user (NS8's `default` user takes any password: "nopass").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from agent.core.redis_address import DEFAULT_ADDRESS, parse_address, url_address


def redis_address(env: Mapping[str, str], use_replica: bool) -> tuple[str, int]:
    """Where to connect: REDIS_REPLICA_ADDRESS for the replica, else REDIS_ADDRESS, else
    the node's REDIS_URL, else 127.0.0.1:6379."""
    name = "REDIS_REPLICA_ADDRESS" if use_replica else "REDIS_ADDRESS"
    address = env.get(name) or env.get("REDIS_ADDRESS") or url_address(env.get("REDIS_URL", ""))
    return parse_address(address or DEFAULT_ADDRESS)


def redis_credentials(env: Mapping[str, str], privileged: bool) -> tuple[str | None, str | None]:
    """(user, password) for a privileged or a default connection (see the module doc;
    None: no AUTH). KeyError, as in NS8, when a privileged one has no credentials at all."""
    if "REDIS_USER" in env:
        # Unprivileged too: NS8's `default` user reads every cluster/*, node/* and module/*
        # key, which this cluster's isolation refuses (no module reads another's keys), so
        # the embedded Redis's `default` reads nothing and a module reads with its own user.
        return env["REDIS_USER"], env["REDIS_PASSWORD"]
    if "REDIS_URL" in env:  # the node's connection
        node_url = urlsplit(env["REDIS_URL"])
        if not node_url.password:
            return None, None
        user = unquote(node_url.username) if node_url.username else "default"
        if privileged or user == "default":
            return user, unquote(node_url.password)
    if privileged:
        raise KeyError("REDIS_USER")
    return "default", "nopass"


def redis_connect(privileged: bool = False, use_replica: bool = False, **kwargs: Any) -> Any:
    """A lazy redis.Redis: kwargs only replace the defaults (host, port, db=0, username,
    password, decode_responses=True) and pass anything else through."""
    import redis  # here, not at `import agent`: most steps and every api-cli never need it

    host, port = redis_address(os.environ, use_replica)
    username, password = redis_credentials(os.environ, privileged)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "db": 0,
        "username": username,
        "password": password,
        "decode_responses": True,
    }
    options.update(kwargs)
    return redis.Redis(**options)
