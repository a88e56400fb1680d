"""Pings in healthchecks.io's convention: <url>/start, <url> on success, <url>/fail."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Literal

from agent.adapters.apprise_client import SendResult

PING_TIMEOUT_SECONDS = 10
Ping = Literal["start", "success", "fail"]


def ping_address(base: str, ping: Ping) -> str:
    """The URL to call for one ping (a query string stays at the end)."""
    head, question, query = base.partition("?")
    head = head.rstrip("/")
    if ping != "success":
        head += f"/{ping}"
    return head + question + query


def send_ping(base: str, ping: Ping) -> SendResult:
    """One POST; never raises. Errors name the status, never the URL."""
    request = urllib.request.Request(ping_address(base, ping), data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=PING_TIMEOUT_SECONDS) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return SendResult(False, f"ping {ping} not delivered: {type(reason).__name__}")
    if 200 <= status < 300:
        return SendResult(True)
    return SendResult(False, f"ping {ping} answered HTTP {status}")
