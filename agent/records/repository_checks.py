"""cluster/repository_check/<destination>: each module repository's last `restic check`."""

from __future__ import annotations

import json

from pydantic import Field

from agent.adapters.redis_api import Pipeline, Redis
from agent.core import redis_keys
from agent.records.statuses import Outcome
from agent.records.stored import StoredRecord, parse_stored_json

Count = Field(default=0, ge=0)


class CheckRecord(StoredRecord):
    """The last check of one repository. runs counts the checks that reached a verdict:
    the next one reads part (runs mod t)+1 of an "n/t" subset."""

    backup_id: int = 0
    node: int = 0
    outcome: Outcome = Outcome.FAILED  # ok, or failed: errors found or no verdict
    start: int = 0
    end: int = 0
    subset: str = ""  # the --read-data-subset this run read
    num_errors: int = Count
    broken_packs: tuple[str, ...] = ()
    reason: str = ""
    errors: tuple[str, ...] = ()  # restic's error messages, the first few
    runs: int = Count
    last_ok: int = 0  # end of the last check that found no error

    @property
    def duration(self) -> int:
        return max(0, self.end - self.start)

    @classmethod
    def from_redis(cls, redis: Redis, destination_id: str, path: str) -> CheckRecord | None:
        """The stored record, None when the repository was never checked; StoredDataError
        naming the key when it is malformed."""
        text = redis.hget(redis_keys.repository_check(destination_id), path)
        return cls.parse(destination_id, path, text) if text else None

    @classmethod
    def parse(cls, destination_id: str, path: str, text: str) -> CheckRecord:
        """One stored record's text; StoredDataError naming its key when malformed."""
        key = redis_keys.repository_check(destination_id)
        return parse_stored_json(cls, f"{key} [{path}]", text)

    def to_redis(self, pipe: Pipeline, destination_id: str, path: str) -> None:
        pipe.hset(redis_keys.repository_check(destination_id), path, self.to_json())

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def listing(self) -> dict[str, object]:
        """What list-backups shows of it."""
        return {
            "outcome": self.outcome.value,
            "end": self.end,
            "duration": self.duration,
            "subset": self.subset,
            "num_errors": self.num_errors,
            "broken_packs": list(self.broken_packs),
            "reason": self.reason,
            "last_ok": self.last_ok or None,
        }


def stored_checks(redis: Redis, destination_ids: list[str]) -> dict[str, dict[str, str]]:
    """destination id → (repository path → its record's text), in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for destination_id in destination_ids:
            pipe.hgetall(redis_keys.repository_check(destination_id))
        found: list[dict[str, str]] = pipe.execute()
    return dict(zip(destination_ids, found, strict=True))
