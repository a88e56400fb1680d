"""Redis addresses as NS8 passes them to modules ('host:port'), from the node's URL."""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_ADDRESS = "127.0.0.1:6379"


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port', or a bare host) → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.endswith("]")):
        return address.strip("[]"), 6379
    return host.strip("[]"), int(port)


def url_address(url: str) -> str:
    """host:port of a redis:// URL; '' when there is none (a unix socket, no URL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 6379}"
