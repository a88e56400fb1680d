"""Notification targets as stored: the public half in cluster/…, the URL in private/…."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, get_args

from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.errors import ConfigError
from agent.core.models import NotificationEvent

EVENTS: tuple[str, ...] = get_args(NotificationEvent)


@dataclass(frozen=True)
class Delivery:
    """The outcome of the last send to a target."""

    time: int = 0
    ok: bool = True
    error: str = ""
    event: str = ""


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    events: tuple[str, ...]
    backups: tuple[int, ...] = ()
    last: Delivery = field(default_factory=Delivery)

    def wants(self, event: str, backup_id: int | None) -> bool:
        """True when this target asked for event (a run's report goes to 'report' too)."""
        if backup_id is not None and self.backups and backup_id not in self.backups:
            return False
        if event in self.events:
            return True
        return "report" in self.events and event in ("failure", "partial", "success")

    def public_fields(self) -> dict[str, str]:
        return {"name": self.name, "events": " ".join(self.events), **_backups_field(self)}

    def listing(self) -> dict[str, Any]:
        """What list-notification-targets shows: the URL's scheme, never the rest of it."""
        return {
            "name": self.name,
            "url": self.url.split("://", 1)[0] + "://…",
            "events": list(self.events),
            "backups": list(self.backups),
            "last_sent": self.last.time,
            "last_ok": self.last.ok,
            "last_error": self.last.error,
            "last_event": self.last.event,
        }


def _backups_field(target: Target) -> dict[str, str]:
    return {"backups": " ".join(str(b) for b in target.backups)}


def parse(name: str, public: dict[str, str], private: dict[str, str]) -> Target:
    """The stored halves as a Target; a malformed record is a ConfigError naming its key."""
    key = redis_keys.notification_target(name)
    try:
        events = tuple(e for e in public.get("events", "").split() if e in EVENTS)
        backups = tuple(int(b) for b in public.get("backups", "").split())
        last = Delivery(
            time=int(public.get("last_time") or 0),
            ok=public.get("last_ok", "1") == "1",
            error=public.get("last_error", ""),
            event=public.get("last_event", ""),
        )
    except ValueError as exc:
        raise ConfigError(f"{key} is malformed: {exc}") from exc
    url = private.get("url", "")
    if not url:
        raise ConfigError(f"{redis_keys.notification_target_private(name)} has no url")
    return Target(name=name, url=url, events=events, backups=backups, last=last)


def load(redis: Redis, name: str) -> Target | None:
    with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(redis_keys.notification_target(name))
        pipe.hgetall(redis_keys.notification_target_private(name))
        public, private = pipe.execute()
    if not public:
        return None
    return parse(name, public, private)


def load_all(redis: Redis) -> list[Target]:
    prefix = redis_keys.notification_target("")
    names = sorted(k[len(prefix) :] for k in redis.scan_iter(match=prefix + "*", count=1000))
    targets = []
    for name in names:
        target = load(redis, name)
        if target is not None:
            targets.append(target)
    return targets


def save(redis: Redis, target: Target) -> None:
    """Both halves at once; the delivery record of an existing target is kept."""
    public_key = redis_keys.notification_target(target.name)
    with redis.pipeline(transaction=True) as pipe:
        pipe.hset(public_key, mapping=target.public_fields())
        pipe.hset(redis_keys.notification_target_private(target.name), mapping={"url": target.url})
        pipe.execute()


def remove(redis: Redis, name: str) -> bool:
    with redis.pipeline(transaction=True) as pipe:
        pipe.delete(redis_keys.notification_target(name))
        pipe.delete(redis_keys.notification_target_private(name))
        removed, _ = pipe.execute()
    return bool(removed)


def record_delivery(redis: Redis, name: str, event: str, ok: bool, error: str) -> None:
    """Keep the last send's outcome beside the target (only if it still exists)."""
    redis.eval(
        _RECORD_IF_PRESENT,
        1,
        redis_keys.notification_target(name),
        *("last_time", str(int(time.time())), "last_ok", "1" if ok else "0"),
        *("last_error", error, "last_event", event),
    )


# A target removed while a message was on its way must not come back as a husk.
_RECORD_IF_PRESENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 0
"""
