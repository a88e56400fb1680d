"""What a module image's labels and `podman image inspect` say, as NS8's add-module
reads them: rootfull or rootless, ports to allocate, the images it runs, the roles it
asks for, its flags. Labels are the module author's input: a bad one is refused."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agent.core.image_names import bare_name

ROOTFULL = "org.nethserver.rootfull"
TCP_PORTS_DEMAND = "org.nethserver.tcp-ports-demand"
UDP_PORTS_DEMAND = "org.nethserver.udp-ports-demand"
AUTHORIZATIONS = "org.nethserver.authorizations"
IMAGES = "org.nethserver.images"
FLAGS = "org.nethserver.flags"
SELF_ADMIN = "self:selfadm"  # NS8 grants it to every module
MAX_PORTS_DEMAND = 1000
_AUTHORIZATION = re.compile(r"[A-Za-z0-9_.@/-]+:[A-Za-z0-9_.-]+")
_FLAG = re.compile(r"[A-Za-z0-9_.-]+")


class BadImageLabel(ValueError):
    """A label whose value NS8's add-module could not use."""


@dataclass(frozen=True)
class ImageFacts:
    """An image as add-module uses it."""

    image_id: str
    digest: str
    repo_digest: str  # the first of RepoDigests, '' when none
    rootfull: bool
    tcp_ports_demand: int
    udp_ports_demand: int
    authorizations: tuple[str, ...]  # "agent:role", SELF_ADMIN first
    images: tuple[str, ...]  # image URLs of the services the module runs
    flags: tuple[str, ...]  # org.nethserver.flags, then "rootfull" or "rootless"


def _demand(labels: dict[str, str], name: str) -> int:
    text = labels.get(name, "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) > MAX_PORTS_DEMAND:
        raise BadImageLabel(f"{name}={text!r}: not a number of ports (0..{MAX_PORTS_DEMAND})")
    return int(text)


def _words(labels: dict[str, str], name: str, pattern: re.Pattern[str]) -> list[str]:
    words = labels.get(name, "").split()
    for word in words:
        if not pattern.fullmatch(word):
            raise BadImageLabel(f"{name}: {word!r} is not allowed")
    return words


def image_facts(inspected: dict[str, Any]) -> ImageFacts:
    """ImageFacts from one entry of `podman image inspect`'s JSON."""
    raw_labels = inspected.get("Labels") or {}
    labels = {str(k): str(v) for k, v in raw_labels.items()} if isinstance(raw_labels, dict) else {}
    rootfull = labels.get(ROOTFULL, "").strip() == "1"
    authorizations = [SELF_ADMIN]
    for word in _words(labels, AUTHORIZATIONS, _AUTHORIZATION):
        if word not in authorizations:
            authorizations.append(word)
    images = labels.get(IMAGES, "").split()
    for url in images:
        if not url.isprintable() or "=" in url:
            raise BadImageLabel(f"{IMAGES}: {url!r} is not an image URL")
    flags = [*_words(labels, FLAGS, _FLAG), "rootfull" if rootfull else "rootless"]
    repo_digests = inspected.get("RepoDigests") or []
    return ImageFacts(
        image_id=str(inspected.get("Id", "")),
        digest=str(inspected.get("Digest", "")),
        repo_digest=str(repo_digests[0]) if repo_digests else "",
        rootfull=rootfull,
        tcp_ports_demand=_demand(labels, TCP_PORTS_DEMAND),
        udp_ports_demand=_demand(labels, UDP_PORTS_DEMAND),
        authorizations=tuple(authorizations),
        images=tuple(images),
        flags=tuple(dict.fromkeys(flags)),
    )


def parse_inspect(text: str) -> ImageFacts:
    """ImageFacts from `podman image inspect IMAGE`'s output (a JSON list of one)."""
    entries = json.loads(text)
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise BadImageLabel("podman image inspect gave no image")
    return image_facts(entries[0])


def image_variable(image_url: str) -> str:
    """NS8's create-module name for an image's variable: 'docker.io/library/redis:7' →
    'REDIS_IMAGE' (upper case, '-', '.', '+' and ' ' → '_', 'I' before a leading digit)."""
    name = re.sub(r"[-.+ ]", "_", bare_name(image_url).upper())
    name = re.sub(r"[^A-Z0-9_]", "", name)
    if name[:1].isdigit():
        name = "I" + name
    return f"{name}_IMAGE"


def image_variables(images: tuple[str, ...]) -> dict[str, str]:
    """`<NAME>_IMAGE=<url>` for each image the module runs."""
    return {image_variable(url): url for url in images if image_variable(url) != "_IMAGE"}


def port_variables(prefix: str, first: int, count: int) -> dict[str, str]:
    """NS8's variables for count ports from first: <P>_PORT, <P>_PORTS_RANGE (more than
    one), <P>_PORTS (eight or fewer)."""
    if count <= 0:
        return {}
    env = {f"{prefix}_PORT": str(first)}
    if count > 1:
        env[f"{prefix}_PORTS_RANGE"] = f"{first}-{first + count - 1}"
    if count <= 8:
        env[f"{prefix}_PORTS"] = ",".join(str(port) for port in range(first, first + count))
    return env
