"""TCP and UDP ports a module's image asks for (org.nethserver.*-ports-demand), allocated
per node as contiguous ranges and given back when the module goes."""

from __future__ import annotations

from redis import WatchError

from agent.adapters.redis_api import watching
from agent.adapters.redis_store import Redis
from agent.core import redis_keys
from agent.core.errors import AgentError

FIRST_PORT = 20001  # NS8's modules get ports from here up
LAST_PORT = 29999  # below Linux's ephemeral range, where outgoing connections take ports


def parse_range(text: str) -> tuple[int, int] | None:
    """'a-b' → (a, b); None for anything else."""
    first, sep, last = text.partition("-")
    if not sep or not first.isdigit() or not last.isdigit() or int(first) > int(last):
        return None
    return int(first), int(last)


def find_free_range(
    taken: list[tuple[int, int]], count: int, low: int = FIRST_PORT, high: int = LAST_PORT
) -> int | None:
    """The first port of the lowest run of count ports in [low, high] that overlaps no
    taken range; None when there is none."""
    start = low
    for first, last in sorted(taken):
        if last < start:
            continue
        if first - start >= count:
            break
        start = max(start, last + 1)
    return start if start + count - 1 <= high else None


def _key(node_id: int, protocol: str) -> str:
    if protocol == "tcp":
        return redis_keys.node_tcp_ports(node_id)
    if protocol == "udp":
        return redis_keys.node_udp_ports(node_id)
    raise ValueError(f"unknown protocol {protocol!r}")


def allocate_ports(redis: Redis, node_id: int, module_id: str, protocol: str, count: int) -> int:
    """Reserve count ports for module_id on the node (WATCHed, so two add-modules never
    get the same ones); returns the first. A module that has a range keeps it."""
    key = _key(node_id, protocol)
    while True:
        with redis.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            ranges = watching(pipe).hgetall(key)
            mine = parse_range(ranges.get(module_id, ""))
            if mine is not None and mine[1] - mine[0] + 1 == count:
                return mine[0]
            taken = [r for m, text in ranges.items() if m != module_id and (r := parse_range(text))]
            first = find_free_range(taken, count)
            if first is None:
                raise AgentError(f"no {count} free {protocol} ports left on node {node_id}")
            pipe.multi()
            pipe.hset(key, module_id, f"{first}-{first + count - 1}")
            try:
                pipe.execute()
            except WatchError:
                continue  # another add-module took ports meanwhile: look again
            return first


def deallocate_ports(redis: Redis, node_id: int, module_id: str) -> None:
    """Give back every port the module had on the node."""
    with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(redis_keys.node_tcp_ports(node_id), module_id)
        pipe.hdel(redis_keys.node_udp_ports(node_id), module_id)
        pipe.execute()
