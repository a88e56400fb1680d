"""Module image URLs → the name NS8 derives from them (module ids, repository paths)."""

from __future__ import annotations

import re

from agent.core.errors import validation_error


def bare_name(image_url: str) -> str:
    """The URL's last path part without its tag or digest, as written:
    'ghcr.io/x/Samba:1.2' → 'Samba'."""
    last = image_url.rstrip("/").rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


def image_name(image_url: str) -> str:
    """'ghcr.io/x/samba:1.2' → 'samba'; digests and tags dropped."""
    name = re.sub(r"[^a-z0-9_-]", "", bare_name(image_url).lower())
    if not name or not name[0].isalpha():
        raise validation_error("image", "image_name_invalid", image_url)
    return name
