"""cluster/backup/<id> and private/backup/<id>: a backup definition, in NS8's hash format."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictBool

from agent.adapters.redis_api import Pipeline, Redis
from agent.core import redis_keys
from agent.records.stored import StoredRecord, parse_stored

KEEP_FIELDS = ("keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within")
# Fields a rewrite removes when the definition no longer has them (HSET alone keeps them).
CONFIDENCE_FIELDS = ("check", "drill", "mirrors", "mirror_retention")  # issue #18
OPTIONAL_FIELDS = (*KEEP_FIELDS, "uinstances", *CONFIDENCE_FIELDS)


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


def _flag(value: object) -> object:
    """NS8 stores a boolean as "1" or ""."""
    if isinstance(value, str):
        if value not in ("1", ""):
            raise ValueError("is neither '1' nor ''")
        return value == "1"
    return value


def _words(value: object) -> object:
    return tuple(value.split()) if isinstance(value, str) else value


def _json_object(value: object) -> object:
    if isinstance(value, str):
        return json.loads(value) if value else {}
    return value


def _json_or_none(value: object) -> object:
    if isinstance(value, str):
        return json.loads(value) if value else None
    return value


KeepCount = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_blank_is_none)]
Words = Annotated[tuple[str, ...], BeforeValidator(_words)]


class CheckPolicy(StoredRecord):
    """When each module repository of the backup gets `restic check`, and how much of its
    data that reads ("n/t": rolled over t runs; "x%": a random share each time)."""

    schedule: str
    read_data_subset: str = "1/1"


class DrillPolicy(StoredRecord):
    """When the backup's modules get a restore drill (run-drill), and on which node."""

    schedule: str
    node: int | None = None


def _policy_json(policy: StoredRecord) -> str:
    return json.dumps(policy.model_dump(mode="json"), sort_keys=True)


class BackupDefinition(StoredRecord):
    """What is backed up, when, where to and for how long (cluster/backup/<id>)."""

    id: int = Field(ge=1)  # from the key, not a field of the hash
    name: str  # "" shows as "Backup <id>"
    repository: str  # the destination's id
    schedule: str  # systemd OnCalendar; "" has no timer
    schedule_hint: Annotated[dict[str, Any], BeforeValidator(_json_object)] = Field(
        default_factory=dict
    )  # the UI's own form state, kept as given
    retention: int = Field(ge=0)  # restic --keep-last
    enabled: Annotated[StrictBool, BeforeValidator(_flag)]
    instances: Words
    # Uuids of modules of a restored cluster not yet back (NS8: relinked on restore).
    uinstances: Words = ()
    keep_daily: KeepCount = None
    keep_weekly: KeepCount = None
    keep_monthly: KeepCount = None
    keep_yearly: KeepCount = None
    keep_within: Annotated[str | None, BeforeValidator(_blank_is_none)] = None
    check: Annotated[CheckPolicy | None, BeforeValidator(_json_or_none)] = None
    drill: Annotated[DrillPolicy | None, BeforeValidator(_json_or_none)] = None
    mirrors: Words = ()  # further destination ids that get a copy of every snapshot
    mirror_retention: KeepCount = None  # --keep-last on the mirrors (None: retention)

    @property
    def key(self) -> str:
        return redis_keys.backup(self.id)

    @property
    def display_name(self) -> str:
        return self.name or f"Backup {self.id}"

    @classmethod
    def from_fields(cls, backup_id: int, fields: Mapping[str, str]) -> BackupDefinition:
        """The definition in a hash as read; StoredDataError naming the key if malformed."""
        return parse_stored(cls, redis_keys.backup(backup_id), {**fields, "id": backup_id})

    @classmethod
    def from_redis(cls, redis: Redis, backup_id: int) -> BackupDefinition | None:
        """The stored definition, None when there is none."""
        fields: dict[str, str] = redis.hgetall(redis_keys.backup(backup_id))
        return cls.from_fields(backup_id, fields) if fields else None

    def to_fields(self) -> dict[str, str]:
        """The hash in NS8's format; optional fields only when set."""
        fields = {
            "name": self.name,
            "repository": self.repository,
            "schedule": self.schedule,
            "schedule_hint": json.dumps(self.schedule_hint),
            "retention": str(self.retention),
            "enabled": "1" if self.enabled else "",
            "instances": " ".join(self.instances),
        }
        if self.uinstances:
            fields["uinstances"] = " ".join(self.uinstances)
        for name in KEEP_FIELDS:
            value = getattr(self, name)
            if value is not None:
                fields[name] = str(value)
        if self.check is not None:
            fields["check"] = _policy_json(self.check)
        if self.drill is not None:
            fields["drill"] = _policy_json(self.drill)
        if self.mirrors:
            fields["mirrors"] = " ".join(self.mirrors)
        if self.mirror_retention is not None:
            fields["mirror_retention"] = str(self.mirror_retention)
        return fields

    def to_redis(self, pipe: Pipeline) -> None:
        """Queue the writes that make the stored hash this definition (in a pipeline)."""
        fields = self.to_fields()
        pipe.hset(self.key, mapping=fields)
        absent = [name for name in OPTIONAL_FIELDS if name not in fields]
        if absent:
            pipe.hdel(self.key, *absent)

    def stored_values(self, *names: str) -> dict[str, str]:
        """Only the named fields in the stored format ("" for an unset optional one), for
        writers that change those alone, whatever an alter-backup does meanwhile."""
        fields = self.to_fields()
        return {name: fields.get(name, "") for name in names}


def backup_ids(redis: Redis) -> list[int]:
    """Ids of the stored backup definitions, ascending."""
    prefix = redis_keys.BACKUP_PATTERN.rstrip("*")
    keys = redis.scan_iter(match=redis_keys.BACKUP_PATTERN, count=1000)
    return sorted(int(key[len(prefix) :]) for key in keys if key[len(prefix) :].isdigit())


def read_backups(redis: Redis, ids: list[int]) -> list[BackupDefinition]:
    """The definitions of ids in one round trip (a key gone meanwhile is left out)."""
    with redis.pipeline(transaction=False) as pipe:
        for backup_id in ids:
            pipe.hgetall(redis_keys.backup(backup_id))
        hashes = pipe.execute()
    return [
        BackupDefinition.from_fields(backup_id, fields)
        for backup_id, fields in zip(ids, hashes, strict=True)
        if fields
    ]


class BackupSecrets(StoredRecord):
    """A backup's secrets (private/backup/<id>): a healthchecks-style ping URL is its own
    password."""

    ping_url: str = ""

    @classmethod
    def from_fields(cls, backup_id: int, fields: Mapping[str, str]) -> BackupSecrets:
        return parse_stored(cls, redis_keys.backup_private(backup_id), fields)

    @classmethod
    def from_redis(cls, redis: Redis, backup_id: int) -> BackupSecrets:
        """The backup's secrets (none stored reads as none)."""
        return cls.from_fields(backup_id, redis.hgetall(redis_keys.backup_private(backup_id)))

    def to_redis(self, pipe: Pipeline, backup_id: int) -> None:
        """Queue the writes: the hash holds ping_url, or is gone when there is none."""
        key = redis_keys.backup_private(backup_id)
        if self.ping_url:
            pipe.hset(key, "ping_url", self.ping_url)
        else:
            pipe.delete(key)
