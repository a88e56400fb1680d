"""cluster/backup_drill/<id>: the last restore drill of each module of a backup."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field

from agent.adapters.redis_api import Pipeline, Redis
from agent.core import redis_keys
from agent.core.errors import StoredDataError
from agent.records.stored import StoredRecord, parse_stored_json

log = logging.getLogger("agent.drill")
OUTPUT_LINES = 20  # of the hook's output, kept as its tail
OUTPUT_CHARS = 4000


class DrillRecord(StoredRecord):
    """What one drill of one module found: the restore's time (RTO) and size, and the
    verdict of the module's module-verify-restore hook."""

    module_id: str  # the source module, never touched by the drill
    backup_id: int = Field(ge=1)
    node: int = Field(ge=1)  # where the scratch instance was
    scratch_module_id: str = ""  # "" when none was made
    snapshot_id: str = ""
    start: int  # epoch seconds
    end: int
    outcome: Literal["ok", "failed"]
    reason: str = ""
    restore_seconds: float = Field(ge=0, default=0.0)  # measured RTO: install + restore
    verify_seconds: float = Field(ge=0, default=0.0)
    restored_bytes: int = Field(ge=0, default=0)
    restored_files: int = Field(ge=0, default=0)
    # The hook's exit code; None when the module ships no module-verify-restore (or the
    # drill failed before it ran).
    hook_exit_code: int | None = None
    hook_output: Annotated[str, Field(max_length=OUTPUT_CHARS)] = ""

    @classmethod
    def from_json(cls, backup_id: int, text: str) -> DrillRecord:
        return parse_stored_json(cls, redis_keys.backup_drill(backup_id), text)

    def to_redis(self, pipe: Pipeline) -> None:
        """Queue the write: this drill is now the module's last one in its backup."""
        pipe.hset(redis_keys.backup_drill(self.backup_id), self.module_id, self.to_json())

    def to_json(self) -> str:
        return self.model_dump_json()

    def summary(self, now: float | None = None) -> str:
        """One line for people: 'last verified by a drill 12 minutes ago in 9 seconds'."""
        ago = max(0, int((time.time() if now is None else now) - self.end)) // 60
        when = f"{ago} minute{'s' if ago != 1 else ''} ago"
        took = round(self.restore_seconds)
        if self.outcome == "ok":
            return f"last verified by a drill {when} in {took} second{'s' if took != 1 else ''}"
        return f"last drill {when} failed: {self.reason}"

    def listing(self, now: float | None = None) -> dict[str, object]:
        return {**self.model_dump(), "summary": self.summary(now)}


def tail(text: str) -> str:
    """The last lines of a hook's output, bounded."""
    lines = text.strip().splitlines()[-OUTPUT_LINES:]
    return "\n".join(line[:500] for line in lines)[-OUTPUT_CHARS:]


def parse_all(backup_id: int, fields: Mapping[str, str]) -> dict[str, DrillRecord]:
    """The stored hash as records; one that does not parse is logged and left out."""
    records = {}
    for module_id, text in fields.items():
        try:
            records[module_id] = DrillRecord.from_json(backup_id, text)
        except StoredDataError as exc:
            log.warning("%s [%s]", exc, module_id)
    return records


def read(redis: Redis, backup_id: int) -> dict[str, DrillRecord]:
    """module id → its last drill in this backup."""
    return parse_all(backup_id, redis.hgetall(redis_keys.backup_drill(backup_id)))
