"""cluster/backup_repository/<id> and private/backup_repository/<id>: a backup destination,
its public half (what the UI lists) and its secrets, in NS8's hash format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field

from pydantic import Field
from pydantic.dataclasses import dataclass

from agent.adapters.redis_api import Pipeline, Redis
from agent.core import redis_keys
from agent.records.stored import StoredRecord, parse_stored


class DestinationPublic(StoredRecord):
    """cluster/backup_repository/<id>: no secret here."""

    name: str = ""
    provider: str = Field(min_length=1)
    url: str
    basepath: str = ""  # rclone destinations only


class DestinationPrivate(StoredRecord):
    """private/backup_repository/<id>: the restic password; every other field is a
    provider parameter (keys, account names, an rclone config)."""

    password: str = Field(min_length=1)


@dataclass(frozen=True)
class Destination:
    """A destination with its secrets, as the restic and rclone targets need it."""

    id: str
    name: str
    provider: str
    url: str
    password: str  # the restic password
    parameters: Mapping[str, str] = field(default_factory=dict)  # incl. secrets
    basepath: str = ""

    @classmethod
    def from_fields(
        cls, destination_id: str, public: Mapping[str, str], private: Mapping[str, str]
    ) -> Destination:
        """The destination in its two hashes as read; StoredDataError naming the key of
        the half that is malformed."""
        shown = parse_stored(
            DestinationPublic, redis_keys.backup_repository(destination_id), public
        )
        key = redis_keys.backup_repository_private(destination_id)
        secret = parse_stored(DestinationPrivate, key, private)
        return cls(
            id=destination_id,
            name=shown.name,
            provider=shown.provider,
            url=shown.url,
            password=secret.password,
            parameters={k: v for k, v in private.items() if k != "password"},
            basepath=shown.basepath,
        )

    @classmethod
    def from_redis(cls, redis: Redis, destination_id: str) -> Destination | None:
        """The stored destination; None when either half is missing."""
        public = redis.hgetall(redis_keys.backup_repository(destination_id))
        private = redis.hgetall(redis_keys.backup_repository_private(destination_id))
        if not public or not private:
            return None
        return cls.from_fields(destination_id, public, private)

    def public_fields(self) -> dict[str, str]:
        return {
            "name": self.name,
            "provider": self.provider,
            "url": self.url,
            "basepath": self.basepath,
        }

    def private_fields(self) -> dict[str, str]:
        return {**self.parameters, "password": self.password}

    def to_redis(self, pipe: Pipeline) -> None:
        """Queue the writes that replace both hashes with this destination."""
        public_key = redis_keys.backup_repository(self.id)
        private_key = redis_keys.backup_repository_private(self.id)
        pipe.delete(public_key, private_key)
        pipe.hset(public_key, mapping=self.public_fields())
        pipe.hset(private_key, mapping=self.private_fields())
