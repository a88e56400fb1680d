"""`agent web`: the console in a process of its own (uvicorn), so the daemon never carries it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.adapters.redis_store import connect
from agent.core.errors import ConfigError
from agent.core.settings import Settings

log = logging.getLogger("agent.web")


@dataclass(frozen=True)
class Address:
    host: str
    port: int


def parse_listen(text: str) -> Address:
    """'127.0.0.1:9311', '[::1]:9311' or ':9311' (every address) → Address."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"web_listen must be host:port, not {text!r}")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return Address(host, int(port))


def serve(
    settings: Settings,
    listen: str | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> None:
    """Serve the console until SIGTERM or SIGINT (uvicorn handles both)."""
    import uvicorn

    from agent.web.app import Console, make_app
    from agent.web.auth import read_hash

    read_hash(settings.root)  # no password, no console: say so now rather than at login
    address = parse_listen(listen or settings.web_listen)
    if bool(certfile) != bool(keyfile):
        raise ConfigError("TLS needs both --certfile and --keyfile")
    app = make_app(Console(settings, connect(settings.redis_url)))
    scheme = "https" if certfile else "http"
    log.info("console on %s://%s:%d", scheme, address.host, address.port)
    uvicorn.run(
        app,
        host=address.host,
        port=address.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
        proxy_headers=False,  # Secure cookies and Origin checks go by what this process sees
    )
