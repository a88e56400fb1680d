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
    try:
        return image_labels.parse_inspect(podman.inspect_image(image_url, podman_env))
    except (image_labels.BadImageLabel, ValueError) as exc:
        raise AgentError(f"image {image_url}: {exc}") from None


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
