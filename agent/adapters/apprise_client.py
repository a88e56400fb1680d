"""The apprise adapter: one message to one target URL, with the reason when it fails.

apprise is imported on first use: only the step that sends pays for loading its plugins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from agent.core.masking import redact_text

SEND_TIMEOUT_SECONDS = 15
Level = Literal["info", "success", "warning", "failure"]


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str = ""


def is_supported(url: str) -> bool:
    """True when apprise knows the URL's service and can parse the rest of it."""
    import apprise

    return apprise.Apprise.instantiate(url) is not None


def send(url: str, title: str, body: str, level: Level = "info") -> SendResult:
    """Deliver one message; never raises. The error text never contains the URL."""
    import apprise

    notifier = apprise.Apprise()
    if not notifier.add(url):
        return SendResult(False, "the URL names no service apprise supports")
    try:
        with apprise.LogCapture(level=logging.WARNING) as captured:  # type: ignore[no-untyped-call]
            result = notifier.notify(
                body=body,
                title=title,
                notify_type=apprise.NotifyType(level),
                timeout=SEND_TIMEOUT_SECONDS,
            )
            log_text = str(captured.getvalue())
    except Exception as exc:  # a plugin's own bug must not escape as a crash of the step
        return SendResult(False, redact_text(f"{type(exc).__name__}: {exc}", [url]))
    if result:
        return SendResult(True)
    lines = [line.split(" - ", 2)[-1] for line in log_text.splitlines() if line.strip()]
    reason = "; ".join(lines[-3:]) or "the service refused the message"
    return SendResult(False, redact_text(reason, [url, *_url_secrets(url)])[:500])


def _url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be credentials: user info, path segments, query values."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    found = [parts.username or "", parts.password or ""]
    found += [segment for segment in parts.path.split("/") if len(segment) >= 8]
    found += [value for _, value in parse_qsl(parts.query) if len(value) >= 8]
    return [f for f in found if f]
