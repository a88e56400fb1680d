"""Restore grants (private/gateway_restore_grants): the repository a restore in progress
lets a module read through the gateways and hold the lease of (its Redis user's rules).

A grant names its holder (the process running the restore) and when it expires (Redis's
clock): the holder renews it while the restore runs and removes it at the end. One whose
holder died (a crashed step or daemon) is stale once it expires, or at once when that
process ran on this host; whoever syncs the agents' users drops it (agent_acls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agent.adapters.redis_store import Redis
from agent.core import redis_keys
from agent.runtime.lease import Holder

TTL_SECONDS = 60
RENEW_SECONDS = TTL_SECONDS / 3

# ARGV: module id, destination, path, holder, ttl seconds.
_WRITE = """
local now = tonumber(redis.call('TIME')[1])
local grant = {destination = ARGV[2], path = ARGV[3], holder = ARGV[4],
               expires = now + tonumber(ARGV[5])}
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(grant))
return 1
"""
# ARGV: module id, holder, ttl seconds. Renew only one's own grant.
_RENEW = """
local text = redis.call('HGET', KEYS[1], ARGV[1])
if not text then return 0 end
local ok, grant = pcall(cjson.decode, text)
if not ok or type(grant) ~= 'table' or grant.holder ~= ARGV[2] then return 0 end
grant.expires = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(grant))
return 1
"""
# ARGV: module id, the exact value to remove (not one written or renewed since).
_REMOVE_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
# ARGV: module id, holder. Remove only one's own grant.
_REMOVE_OWN = """
local text = redis.call('HGET', KEYS[1], ARGV[1])
if not text then return 0 end
local ok, grant = pcall(cjson.decode, text)
if ok and type(grant) == 'table' and grant.holder == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass(frozen=True)
class RestoreGrant:
    destination: str
    path: str
    holder: str
    expires: int  # Redis clock, seconds

    @property
    def source(self) -> tuple[str, str]:
        return self.destination, self.path


def parse_grant(text: str) -> RestoreGrant | None:
    """A stored grant, None when it is not one (a grant of an older version: no holder)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    destination, path = value.get("destination"), value.get("path")
    holder, expires = value.get("holder"), value.get("expires")
    if not all(isinstance(v, str) and v for v in (destination, path, holder)):
        return None
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return None
    return RestoreGrant(str(destination), str(path), str(holder), int(expires))


def write(redis: Redis, module_id: str, destination: str, path: str, holder: Holder) -> None:
    redis.eval(
        _WRITE,
        1,
        redis_keys.GATEWAY_RESTORE_GRANTS,
        module_id,
        destination,
        path.strip("/"),
        holder.encode(),
        TTL_SECONDS,
    )


def renew(redis: Redis, module_id: str, holder: Holder) -> bool:
    """Push the grant's expiry on; False when it is no longer holder's (dropped)."""
    reply = redis.eval(
        _RENEW, 1, redis_keys.GATEWAY_RESTORE_GRANTS, module_id, holder.encode(), TTL_SECONDS
    )
    return reply == 1


def remove(redis: Redis, module_id: str, holder: Holder) -> None:
    redis.eval(_REMOVE_OWN, 1, redis_keys.GATEWAY_RESTORE_GRANTS, module_id, holder.encode())


def redis_now(redis: Redis) -> int:
    """Redis's clock in seconds (grants expire by it, whichever host judges them)."""
    seconds, _micro = redis.execute_command("TIME")
    return int(seconds)


def is_stale(grant: RestoreGrant | None, now: int) -> bool:
    """Expired, unreadable, or its holder's process (on this host) gone."""
    if grant is None or grant.expires <= now:
        return True
    holder = Holder.decode(grant.holder)
    return holder is None or holder.is_dead_local_process()


def drop_stale(redis: Redis) -> tuple[dict[str, RestoreGrant], list[str]]:
    """(the live grants by module id, the modules whose stale grant was removed now)."""
    stored = redis.hgetall(redis_keys.GATEWAY_RESTORE_GRANTS)
    if not stored:
        return {}, []
    now = redis_now(redis)
    live: dict[str, RestoreGrant] = {}
    dropped: list[str] = []
    for module_id, text in sorted(stored.items()):
        grant = parse_grant(text)
        if grant is not None and not is_stale(grant, now):
            live[module_id] = grant
        elif redis.eval(_REMOVE_IF, 1, redis_keys.GATEWAY_RESTORE_GRANTS, module_id, text) == 1:
            dropped.append(module_id)
    return live, dropped


def live_grant(redis: Redis, module_id: str) -> RestoreGrant | None:
    """module_id's grant, unless stale (a stale one is left for drop_stale)."""
    text = redis.hget(redis_keys.GATEWAY_RESTORE_GRANTS, module_id)
    if text is None:
        return None
    grant = parse_grant(text)
    return None if is_stale(grant, redis_now(redis)) else grant
