"""`agent gateway`: the node's storage gateway in a process of its own (uvicorn), with its
rclone children; it says where it listens in `node/<N>/gateway`."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from agent.adapters.gateway import parse_address, published
from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.core.errors import ConfigError
from agent.core.settings import Settings, load_settings
from agent.gateway.app import Gateway, make_app
from agent.gateway.backends import Backends, serve_webdav_argv

log = logging.getLogger("agent.gateway")


def bound_sockets(listen: Sequence[str]) -> list[socket.socket]:
    sockets = []
    for text in listen:
        host, port = parse_address(text)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def serve(settings: Settings, watch_pid: int | None = None) -> None:
    """Serve every destination to this node's agents until SIGTERM or SIGINT, or until
    watch_pid is gone."""
    if not settings.gateway_listen:
        raise ConfigError("gateway_listen is empty in agent.json: no gateway on this node")
    redis = connect(settings.redis_url)
    sockets = bound_sockets(settings.gateway_listen)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    # agent.json read again at each check, as steps do: local_roots changed by the
    # operator apply without a gateway restart.
    backends = Backends(
        redis,
        lambda: load_settings(settings.root).local_policy(),
        str(settings.log_dir),
        str(settings.run_dir),
    )
    webdav = Backends(
        redis,
        lambda: load_settings(settings.root).local_policy(),
        str(settings.log_dir),
        str(settings.run_dir),
        serve_webdav_argv,
        "webdav",
    )
    gateway = Gateway(redis, backends, settings.node_id, webdav)
    key = redis_keys.node_gateway(settings.node_id)
    redis.delete(key)
    redis.hset(key, mapping=published(settings.gateway_listen, settings.gateway_address))
    config = uvicorn.Config(
        make_app(gateway),
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        # A stop must not wait on a client that never hangs up: whoever stops the gateway
        # SIGKILLs it after 10 s, before its children are stopped in order.
        timeout_graceful_shutdown=5,
    )
    log.info(
        "storage gateway of node %d on %s", settings.node_id, ", ".join(settings.gateway_listen)
    )
    server = uvicorn.Server(config)
    if watch_pid:
        threading.Thread(target=_watch, args=(server, watch_pid), daemon=True).start()
    try:
        asyncio.run(server.serve(sockets=sockets))
    finally:
        backends.close()  # when uvicorn failed before its lifespan ended
        webdav.close()


def _watch(server: uvicorn.Server, pid: int) -> None:
    """Stop server once pid no longer runs (its daemon was killed outright)."""
    while _alive(pid):
        time.sleep(1.0)
    log.warning("the daemon (pid %d) is gone: stopping the storage gateway", pid)
    server.should_exit = True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
