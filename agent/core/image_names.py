"""Module image URLs → the name NS8 derives from them (module ids, repository paths)."""

from __future__ import annotations

import re

from agent.core.errors import validation_error


def image_name(image_url: str) -> str:
    """'ghcr.io/x/samba:1.2' → 'samba'; digests and tags dropped."""
    last = image_url.rsplit("/", 1)[-1]
    last = last.split("@", 1)[0].split(":", 1)[0]
    name = re.sub(r"[^a-z0-9_-]", "", last.lower())
    if not name or not name[0].isalpha():
        raise validation_error("image", "image_name_invalid", image_url)
    return name
