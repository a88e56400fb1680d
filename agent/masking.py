"""Secret masking for anything stored publicly or logged."""

from __future__ import annotations

import re
from typing import Any

MASK = "XXX"
# "url": apprise and ping URLs carry tokens, and a destination URL may hold user:pass@.
_SECRET_KEY = re.compile(r"(password|secret|key|token|pass|url)$", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """True for key names whose values must never be shown (…password, …secret, …key …)."""
    return bool(_SECRET_KEY.search(name))


def mask_secrets(value: Any) -> Any:
    """A deep copy of value with every secret-named key's value replaced by MASK."""
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v not in ("", None)
                else mask_secrets(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    return value


def secret_values(value: Any) -> list[str]:
    """The string values of every secret-named key in value, at any depth."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and is_secret_key(key) and isinstance(child, str):
                    found.append(child)
                else:
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def redact_text(text: str, secrets: list[str]) -> str:
    """text with every occurrence of the given secret values replaced by MASK."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
