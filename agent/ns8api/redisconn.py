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


def redis_credentials(env: Mapping[str, str], privileged: bool) -> tuple[str, str]:
    """(user, password) for a privileged or a default connection (see the module doc).
    KeyError, as in NS8, when a privileged one has no credentials at all."""
    node_url = urlsplit(env.get("REDIS_URL", ""))
    node_password = unquote(node_url.password) if node_url.password else ""
    node_user = unquote(node_url.username) if node_url.username else "default"
    if privileged:
        if "REDIS_USER" in env or not node_password:
            return env["REDIS_USER"], env["REDIS_PASSWORD"]
        return node_user, node_password
    if node_password and node_user == "default":
        return "default", node_password
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
