"""What list-backups shows of a module's confidence (issue #18): its repository's last
check, the destinations holding its newest snapshot, and its freshness read from the
repositories when asked."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from agent.core.errors import StoredDataError
from agent.records.backups import BackupDefinition
from agent.records.repository_checks import CheckRecord
from agent.records.statuses import StatusRecord

log = logging.getLogger("agent.definitions")


def check_listing(destination_id: str, path: str, text: str | None) -> dict[str, Any] | None:
    """The repository's last check (its stored text) as list-backups shows it; None when
    never checked."""
    if not text:
        return None
    try:
        return CheckRecord.parse(destination_id, path, text).listing()
    except StoredDataError as exc:
        log.warning("%s", exc)
        return None


def _recorded(status_key: str, module_id: str, status_text: str) -> StatusRecord | None:
    if not status_text:
        return None
    try:
        return StatusRecord.from_json(f"{status_key} [{module_id}]", status_text)
    except StoredDataError:
        return None  # instance_status logs it


def instance_confidence(
    checks: Mapping[str, str],
    definition: BackupDefinition,
    path: str,
    module_id: str,
    status: tuple[str, str],
) -> dict[str, Any]:
    """The confidence fields of one instance of a backup in list-backups: the last check of
    its repository, and how many destinations hold the snapshot of its last run (its
    repository and the mirrors that run copied it to; None when it made no snapshot).
    checks: the stored checks of the backup's destination, by repository path."""
    record = _recorded(status[0], module_id, status[1])
    snapshot_id = record.snapshot_id if record else ""
    return {
        "check": check_listing(definition.repository, path, checks.get(path)),
        "snapshot_id": snapshot_id,
        "newest_snapshot_copies": 1 + len(record.mirrored) if record and snapshot_id else None,
    }


def definition_confidence(definition: BackupDefinition) -> dict[str, Any]:
    """The backup's check, drill and mirror settings as list-backups shows them."""
    item: dict[str, Any] = {
        "check": definition.check.model_dump() if definition.check else None,
        "drill": definition.drill.model_dump() if definition.drill else None,
        "mirrors": list(definition.mirrors),
    }
    if definition.mirror_retention is not None:
        item["mirror_retention"] = definition.mirror_retention
    return item
