"""The stored-state models: each round-trips its NS8 format and names the key of data
that does not parse."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.core.errors import AgentError, StoredDataError
from agent.records.backup_status import ModuleStatus, Outcome
from agent.records.backups import BackupDefinition, BackupSecrets
from agent.records.destinations import Destination
from agent.records.stored import parse_stored_json
from agent.records.tasks import QueuedTask, TaskRecord

NS8_DEFINITION = {
    "name": "Nightly",
    "repository": "48ce000a-79b7-5fe6-8558-177fd70c27b4",
    "schedule": "*-*-* 03:15:00",
    "schedule_hint": '{"interval": "daily", "time": "03:15"}',
    "retention": "7",
    "enabled": "1",
    "instances": "wiki1 mail2",
}


def test_definition_round_trips_the_ns8_hash() -> None:
    stored = NS8_DEFINITION | {"keep_daily": "7", "keep_within": "1y6m", "uinstances": "u-1 u-2"}
    definition = BackupDefinition.from_fields(4, stored)
    assert definition.instances == ("wiki1", "mail2") and definition.uinstances == ("u-1", "u-2")
    assert definition.enabled is True and definition.retention == 7
    assert definition.keep_daily == 7 and definition.keep_weekly is None
    assert definition.schedule_hint == {"interval": "daily", "time": "03:15"}
    assert definition.to_fields() == stored
    assert BackupDefinition.from_fields(4, definition.to_fields()) == definition


def test_definition_reads_optional_fields_left_blank_as_unset() -> None:
    stored = NS8_DEFINITION | {"enabled": "", "schedule_hint": "", "keep_daily": "", "name": ""}
    definition = BackupDefinition.from_fields(2, stored | {"keep_within": "", "uinstances": ""})
    assert definition.enabled is False and definition.schedule_hint == {}
    assert definition.keep_daily is None and definition.keep_within is None
    assert definition.uinstances == () and definition.display_name == "Backup 2"
    assert "keep_daily" not in definition.to_fields()
    assert "uinstances" not in definition.to_fields()


def test_definition_ignores_fields_it_does_not_know() -> None:
    definition = BackupDefinition.from_fields(1, NS8_DEFINITION | {"future": "x"})
    assert "future" not in definition.to_fields()


def test_definition_stored_values_are_in_the_stored_format() -> None:
    definition = BackupDefinition.from_fields(1, NS8_DEFINITION)
    assert definition.stored_values("instances", "uinstances") == {
        "instances": "wiki1 mail2",
        "uinstances": "",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"retention": "seven"}, "retention"),
        ({"retention": ""}, "retention"),
        ({"retention": "-1"}, "retention"),
        ({"enabled": "yes"}, "enabled"),
        ({"schedule_hint": "{not json"}, "schedule_hint"),
        ({"schedule_hint": "[1, 2]"}, "schedule_hint"),
        ({"keep_daily": "many"}, "keep_daily"),
        ({"keep_weekly": "-3"}, "keep_weekly"),
    ],
)
def test_malformed_definition_names_the_key_and_the_field(
    change: dict[str, str], field: str
) -> None:
    with pytest.raises(StoredDataError) as raised:
        BackupDefinition.from_fields(9, NS8_DEFINITION | change)
    assert isinstance(raised.value, AgentError)
    assert raised.value.key == "cluster/backup/9"
    assert str(raised.value).startswith(f"malformed cluster/backup/9: {field}")


@pytest.mark.parametrize("missing", ["repository", "retention", "enabled", "instances"])
def test_definition_missing_a_field_ns8_always_writes_is_malformed(missing: str) -> None:
    stored = {k: v for k, v in NS8_DEFINITION.items() if k != missing}
    with pytest.raises(StoredDataError, match=f"cluster/backup/3: {missing}"):
        BackupDefinition.from_fields(3, stored)


def test_backup_secrets_hold_only_the_ping_url() -> None:
    assert BackupSecrets.model_validate({"ping_url": "https://hc/abc"}).ping_url == "https://hc/abc"
    assert BackupSecrets.model_validate({}).ping_url == ""


PUBLIC = {"name": "Disk", "provider": "local", "url": "local:/mnt/backups", "basepath": ""}
PRIVATE = {"password": "p" * 64, "aws_access_key_id": "key", "aws_secret_access_key": "s"}
DESTINATION_ID = "7f2b2d0e-5a1c-5b6e-9d8f-0a1b2c3d4e5f"


def test_destination_round_trips_both_halves() -> None:
    destination = Destination.from_fields(DESTINATION_ID, PUBLIC, PRIVATE)
    assert destination.password == "p" * 64
    assert dict(destination.parameters) == {
        "aws_access_key_id": "key",
        "aws_secret_access_key": "s",
    }
    assert destination.public_fields() == PUBLIC
    assert destination.private_fields() == PRIVATE
    again = Destination.from_fields(
        DESTINATION_ID, destination.public_fields(), destination.private_fields()
    )
    assert again == destination


def test_destination_without_basepath_reads_as_none() -> None:
    public = {k: v for k, v in PUBLIC.items() if k != "basepath"}
    assert Destination.from_fields(DESTINATION_ID, public, PRIVATE).basepath == ""


@pytest.mark.parametrize(
    ("public", "private", "key", "field"),
    [
        ({"name": "x", "url": "local:/x"}, PRIVATE, "cluster", "provider"),
        (PUBLIC | {"provider": ""}, PRIVATE, "cluster", "provider"),
        ({"name": "x", "provider": "local"}, PRIVATE, "cluster", "url"),
        (PUBLIC, {"aws_access_key_id": "key"}, "private", "password"),
        (PUBLIC, {"password": ""}, "private", "password"),
    ],
)
def test_malformed_destination_names_the_half_that_is_wrong(
    public: dict[str, str], private: dict[str, str], key: str, field: str
) -> None:
    with pytest.raises(StoredDataError) as raised:
        Destination.from_fields(DESTINATION_ID, public, private)
    assert raised.value.key == f"{key}/backup_repository/{DESTINATION_ID}"
    assert f": {field}:" in str(raised.value)


def test_a_destination_candidate_that_is_not_json_is_a_stored_data_error() -> None:
    with pytest.raises(StoredDataError, match="malformed private/x: not JSON"):
        parse_stored_json(Destination, "private/x", "{not json")
    with pytest.raises(StoredDataError, match="malformed private/x: provider"):
        parse_stored_json(
            Destination, "private/x", '{"id": "a", "name": "", "url": "", "password": "p"}'
        )


def test_module_status_record_keeps_its_stored_format() -> None:
    status = ModuleStatus(
        "wiki1", Outcome.PARTIAL, 100, 160, reason="1 unreadable", snapshot_id="ab12",
        total_size=2048, total_file_count=3, snapshots_count=2, bytes_added=512, errors=1,
        unreadable=("state/x",), last_success=160, finished=160.5,
    )  # fmt: skip
    assert json.loads(status.to_record()) == {
        "bytes_added": 512, "coalesced": False, "end": 160, "errors": 1, "finished": 160.5,
        "ignored": [],
        "last_success": 160, "outcome": "partial", "partial": True, "reason": "1 unreadable",
        "snapshot_id": "ab12", "snapshots_count": 2, "start": 100, "total_file_count": 3,
        "total_size": 2048, "unreadable": ["state/x"],
    }  # fmt: skip
    assert status.to_record() == json.dumps(json.loads(status.to_record()), sort_keys=True)
    assert (
        ModuleStatus.parse_record("node/1/backup_status/1", "wiki1", status.to_record()) == status
    )


def test_module_status_reads_ns8_records_without_an_outcome() -> None:
    ns8 = '{"start": 1, "end": 9, "total_size": 5, "total_file_count": 1, "snapshots_count": 1}'
    read = ModuleStatus.parse_record("node/1/backup_status/1", "wiki1", ns8)
    assert read.outcome is Outcome.OK and read.finished == 9.0 and read.last_success == 0
    failed = ModuleStatus.parse_record("k", "wiki1", '{"end": 9, "errors": 2}')
    assert failed.outcome is Outcome.FAILED


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "Input should be"),
        ('{"outcome": "great"}', "outcome"),
        ('{"start": "yesterday"}', "start"),
        ('{"total_size": -1}', "total_size"),
        ('{"unreadable": "state/x"}', "unreadable"),
    ],
)
def test_malformed_module_status_names_key_and_module(text: str, problem: str) -> None:
    with pytest.raises(StoredDataError) as raised:
        ModuleStatus.parse_record("node/2/backup_status/5", "wiki1", text)
    assert str(raised.value).startswith("malformed node/2/backup_status/5 [wiki1]: ")
    assert problem in str(raised.value)
    # The backup path reads a malformed previous status as none: the run starts afresh.
    assert ModuleStatus.from_record("wiki1", text) is None


def test_queued_task_round_trips_and_says_what_is_wrong() -> None:
    task = QueuedTask.new("run-backup", {"id": 1}, "parent-1")
    decoded = json.loads(task.to_json())
    assert list(decoded) == ["id", "action", "data", "parent", "extra"]
    assert QueuedTask.problem(decoded) is None and QueuedTask(**decoded) == task
    assert QueuedTask.problem({"id": "a/b", "action": "x"}) == "task has no usable id"
    assert QueuedTask.problem({"id": "t1", "action": ""}) == "task has no action name"
    assert QueuedTask.problem({"id": "t1"}) == "task has no action name"


def test_task_record_reads_a_result_and_names_a_malformed_exit_code() -> None:
    assert TaskRecord.from_values("cluster", "t1", ['{"a": 1}', None, None]) is None
    record = TaskRecord.from_values("cluster", "t1", ['{"a": 1}', "", "0"])
    assert record == TaskRecord('{"a": 1}', "", 0)
    assert TaskRecord.from_values("node/1", "t2", [None, None, "3"]) == TaskRecord("", "", 3)
    with pytest.raises(StoredDataError, match="malformed task/cluster/t1/exit_code: exit code"):
        TaskRecord.from_values("cluster", "t1", ["", "", "done"])


def test_api_cli_reads_settings_and_task_records_without_pydantic() -> None:
    """api-cli is started once per call: importing pydantic would cost it about a second."""
    probe = "import sys, agent.apicli; print('pydantic' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
