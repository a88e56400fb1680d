"""What NS8's add-module takes from a module's image: labels and ids become the module's
first environment variables, its port allocations, its flags and its authorizations."""

from __future__ import annotations

import json

from agent.adapters import podman
from agent.adapters.redis_store import Redis
from agent.core import image_labels, redis_keys
from agent.core.errors import AgentError
from agent.core.image_labels import ImageFacts
from agent.operations import module_ports


def read_image(image_url: str, podman_env: dict[str, str]) -> ImageFacts:
    """The image's facts (it must be on this node: install it first)."""
    return parse_image(image_url, podman.inspect_image(image_url, podman_env))


def parse_image(image_url: str, inspected: str) -> ImageFacts:
    """The facts of `podman image inspect image_url`'s output."""
    try:
        return image_labels.parse_inspect(inspected)
    except (image_labels.BadImageLabel, ValueError) as exc:
        raise AgentError(f"image {image_url}: {exc}") from None


def raw_label(inspected: str, name: str) -> str | None:
    """One label of `podman image inspect`'s output as `--format '{{index .Labels …}}'`
    gives it (stripped; None when the image has no such label)."""
    try:
        entries = json.loads(inspected)
    except ValueError:
        return None
    entry = entries[0] if isinstance(entries, list) and entries else None
    labels = entry.get("Labels") if isinstance(entry, dict) else None
    value = labels.get(name) if isinstance(labels, dict) else None
    return value.strip() or None if isinstance(value, str) else None


def image_id_of(inspected: str) -> str | None:
    """The image id in `podman image inspect`'s output, as podman.image_id reads it."""
    try:
        entries = json.loads(inspected)
    except ValueError:
        return None
    entry = entries[0] if isinstance(entries, list) and entries else None
    found = entry.get("Id") if isinstance(entry, dict) else None
    return found if isinstance(found, str) and found and "/" not in found else None


def image_environment(facts: ImageFacts) -> dict[str, str]:
    """IMAGE_ID, IMAGE_DIGEST, IMAGE_REOPODIGEST (NS8's spelling) and <NAME>_IMAGE."""
    return {
        "IMAGE_ID": facts.image_id,
        "IMAGE_DIGEST": facts.digest,
        "IMAGE_REOPODIGEST": facts.repo_digest,
        **image_labels.image_variables(facts.images),
    }


def apply_image(redis: Redis, node_id: int, module_id: str, facts: ImageFacts) -> dict[str, str]:
    """Allocate the ports the image asks for, record its flags and authorizations; the
    environment variables to add to the module's first environment."""
    env = image_environment(facts)
    for protocol, count in (("tcp", facts.tcp_ports_demand), ("udp", facts.udp_ports_demand)):
        if count:
            first = module_ports.allocate_ports(redis, node_id, module_id, protocol, count)
            env |= image_labels.port_variables(protocol.upper(), first, count)
    with redis.pipeline(transaction=True) as pipe:
        pipe.delete(redis_keys.module_flags(module_id))
        pipe.sadd(redis_keys.module_flags(module_id), *facts.flags)
        pipe.hset(
            redis_keys.MODULE_AUTHORIZATIONS, module_id, json.dumps(list(facts.authorizations))
        )
        pipe.execute()
    return env
