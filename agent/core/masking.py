"""Secret masking for anything stored publicly or logged."""

from __future__ import annotations

import re
from typing import Any

MASK = "XXX"
_SECRET_KEY = re.compile(r"(password|secret|key|token|pass)$", re.IGNORECASE)
_URL_KEY = re.compile(r"url$", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """True for key names whose values must never be shown (…password, …secret, …key …)."""
    return bool(_SECRET_KEY.search(name))


def is_secret(name: str, value: object) -> bool:
    """A secret-named value, or a URL with a scheme under a …url key: apprise and ping
    URLs carry their tokens, and `rest:http://user:pass@host` its password. A bare
    `local:/srv/backup` or `s3:host/bucket` stays readable in errors."""
    if is_secret_key(name):
        return True
    return bool(_URL_KEY.search(name)) and isinstance(value, str) and "://" in value


def mask_secrets(value: Any) -> Any:
    """A deep copy of value with every secret-named key's value replaced by MASK."""
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret(k, v) and v not in ("", None)
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
                if isinstance(key, str) and is_secret(key, child) and isinstance(child, str):
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
