"""A quick TCP check of a destination's endpoint, before any container starts.

restic retries a dead backend for many minutes; a refused or silent endpoint is better
reported at once, with its address, as its own reason.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from agent.adapters import rclone
from agent.adapters.destinations import Destination, local_directory, s3_parts, url_body

DEFAULT_PORTS = {"http": 80, "https": 443, "smb": 445}


def _from_url(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme, 443)


def endpoint(destination: Destination) -> tuple[str, int] | None:
    """(host, port) the destination's traffic goes to, when we can tell."""
    provider = destination.provider
    if provider in ("rest", "cluster"):
        return _from_url(url_body(destination.url))
    if provider in ("aws", "generic-s3"):
        return _from_url(s3_parts(destination.url)[0])
    if provider == "smb":
        host = destination.parameters.get("smb_host", "")
        return (host, 445) if host else None
    if provider == "rclone":
        options = rclone.parse_config_section(destination.parameters.get("rclone_conf", ""))
        for key in ("url", "endpoint"):
            if options.get(key):
                return _from_url(options[key])
        if options.get("host"):
            return options["host"], int(options.get("port") or 0) or 22
    return None


def unreachable_reason(destination: Destination, timeout: float = 5.0) -> str | None:
    """Why the destination cannot be reached now, or None when it looks reachable."""
    if destination.provider == "local":
        directory = Path(local_directory(destination))
        return None if directory.is_dir() else f"destination directory {directory} is missing"
    address = endpoint(destination)
    if address is None:
        return None
    host, port = address
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"storage unreachable at {host}:{port}: {exc.strerror or exc}"
