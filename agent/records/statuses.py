"""node/<N>/backup_status/<id>: hash of module id → JSON of the module's last backup run.

NS8 wrote {start, end, total_size, total_file_count, snapshots_count, errors}; this agent
adds its outcome and details. Every field may be absent from an older record."""

from __future__ import annotations

import json
from enum import StrEnum

from pydantic import Field

from agent.records.stored import StoredRecord, parse_stored_json


class Outcome(StrEnum):
    OK = "ok"
    PARTIAL = "partial"  # snapshot made, some files could not be read (restic exit 3)
    FAILED = "failed"


Count = Field(default=0, ge=0)


class StatusRecord(StoredRecord):
    """The stored JSON of one module's last run."""

    outcome: Outcome | None = None  # None in NS8's records: no errors means ok
    start: int = 0
    end: int = 0
    reason: str = ""
    snapshot_id: str = ""
    total_size: int = Count
    total_file_count: int = Count
    snapshots_count: int = Count
    bytes_added: int = Count
    errors: int = Count
    unreadable: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # include/exclude lines naming more than the module
    last_success: int = 0  # end of the last ok/partial run, carried over failures
    coalesced: bool = False
    mirrored: tuple[str, ...] = ()  # mirror destinations holding snapshot_id's copy
    finished: float | None = None  # precise end; NS8's records have only `end`
    partial: bool = False  # written for NS8-style readers; the outcome says it too

    @property
    def resolved_outcome(self) -> Outcome:
        if self.outcome is not None:
            return self.outcome
        return Outcome.OK if not self.errors else Outcome.FAILED

    @classmethod
    def from_json(cls, key: str, text: str) -> StatusRecord:
        """The record as read from key; StoredDataError naming key when malformed."""
        return parse_stored_json(cls, key, text)

    def to_json(self) -> str:
        """The stored JSON (sorted keys, as NS8's tools and older agents wrote it)."""
        data = self.model_dump(mode="json")
        data["outcome"] = self.resolved_outcome.value
        data["partial"] = self.resolved_outcome is Outcome.PARTIAL
        if not self.mirrored:  # only backups with mirrors write it (issue #18)
            del data["mirrored"]
        return json.dumps(data, sort_keys=True)
