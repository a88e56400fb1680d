"""Restore drills without a cluster: the record, its summary line, the drill's node and
modules, the backup's drill settings, and the failure message's shape."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent.core.errors import StoredDataError, ValidationFailed
from agent.operations.drills import chosen_modules
from agent.records import drills
from agent.records.backups import BackupDefinition
from agent.records.drills import DrillRecord
from agent.records.run_history import RunRecord
from agent.records.run_report import SendNotificationRequest

NS8_FIELDS = {
    "name": "nightly",
    "repository": "48ce000a-79b7-5fe6-8558-177fd70c27b4",
    "schedule": "daily",
    "retention": "3",
    "enabled": "1",
    "instances": "minwiki1 minwiki2",
}


def record(**fields: object) -> DrillRecord:
    base: dict[str, object] = {
        "module_id": "minwiki1",
        "backup_id": 1,
        "node": 1,
        "start": 1_000,
        "end": 1_030,
        "outcome": "ok",
        "restore_seconds": 12.4,
    }
    return DrillRecord.model_validate(base | fields)


def test_summary_says_when_and_how_long() -> None:
    assert record().summary(now=1_030 + 7 * 60 + 5) == (
        "last verified by a drill 7 minutes ago in 12 seconds"
    )
    assert record(restore_seconds=0.6).summary(now=1_090) == (
        "last verified by a drill 1 minute ago in 1 second"
    )
    failed = record(outcome="failed", reason="module-verify-restore failed (exit 1): bad")
    assert failed.summary(now=1_030) == (
        "last drill 0 minutes ago failed: module-verify-restore failed (exit 1): bad"
    )


def test_record_round_trips_and_a_bad_one_is_left_out() -> None:
    one = record(hook_exit_code=0, hook_output="pages: 200 indexed")
    assert DrillRecord.from_json(1, one.to_json()) == one
    with pytest.raises(StoredDataError, match="cluster/backup_drill/1"):
        DrillRecord.from_json(1, '{"module_id": "minwiki1"}')
    parsed = drills.parse_all(1, {"minwiki1": one.to_json(), "minwiki2": "not json"})
    assert parsed == {"minwiki1": one}


def test_hook_output_keeps_its_tail_within_bounds() -> None:
    text = "\n".join(f"line {n}" for n in range(100)) + "\n" + "x" * 9000
    kept = drills.tail(text)
    assert len(kept) <= drills.OUTPUT_CHARS
    assert kept.splitlines()[0] == "line 81" and kept.endswith("x" * 100)


def test_backup_definition_carries_the_drill_settings() -> None:
    plain = BackupDefinition.from_fields(1, NS8_FIELDS)
    assert plain.drill is None and "drill" not in plain.to_fields()
    fields = NS8_FIELDS | {"drill": '{"schedule": "weekly", "node": 2}'}
    definition = BackupDefinition.from_fields(1, fields)
    assert definition.drill is not None and definition.drill.node == 2
    assert BackupDefinition.from_fields(1, definition.to_fields()) == definition
    with pytest.raises(StoredDataError, match="drill"):
        BackupDefinition.from_fields(1, NS8_FIELDS | {"drill": '{"node": 2}'})


def test_a_drill_names_only_modules_of_its_backup() -> None:
    definition = BackupDefinition.from_fields(1, NS8_FIELDS)
    assert chosen_modules(definition, None) == ["minwiki1", "minwiki2"]
    assert chosen_modules(definition, ["minwiki2", "minwiki2"]) == ["minwiki2"]
    with pytest.raises(ValidationFailed) as refused:
        chosen_modules(definition, ["minwiki2", "other1"])
    assert refused.value.errors[0]["field"] == "modules.1"
    assert refused.value.errors[0]["error"] == "module_not_in_backup"


def test_a_failed_drill_is_a_failure_message_without_a_report() -> None:
    message = SendNotificationRequest(event="failure", backup_id=1, title="t", body="b")
    assert message.report is None
    with pytest.raises(ValidationError):
        SendNotificationRequest(event="failure", backup_id=1, title="t")


def test_history_entries_written_before_drills_read_as_backups() -> None:
    old: dict[str, Any] = {
        "backup_id": 1,
        "node": 1,
        "start": 1,
        "end": 2,
        "outcome": "ok",
        "reason": "",
        "snapshot_id": "",
        "total_size": 0,
        "bytes_added": 0,
        "total_file_count": 0,
        "snapshots_count": 0,
        "unreadable": [],
        "log": [],
    }
    entry = RunRecord(**old)
    assert entry.kind == "backup" and entry.restore_seconds is None
