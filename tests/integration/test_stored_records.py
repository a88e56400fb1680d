"""Stored records on a real Redis: each model round-trips through its keys, and data that
does not parse is a StoredDataError naming the key where it is read, or is skipped with
that error by the readers that must go on with the rest."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import redis

from agent.adapters.destinations import load_destination
from agent.adapters.redis_store import Context
from agent.core import redis_keys
from agent.core.errors import StoredDataError
from agent.core.models import AlterBackupRequest, ListBackupsRequest
from agent.core.settings import Settings
from agent.operations import definitions
from agent.operations.run_backup import run_node_backup
from agent.records.backup_status import ModuleStatus, Outcome
from agent.records.backups import BackupDefinition, BackupSecrets
from agent.records.destinations import Destination
from agent.records.tasks import TaskRecord
from agent.runtime import tasks, timers
from agent.runtime.steps import Step
from tests.support import backups

DESTINATION = "48ce000a-79b7-5fe6-8558-177fd70c27b4"


@pytest.fixture
def step(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Step:
    redis_client.sadd(redis_keys.CLUSTER_NODES, "1")
    redis_client.hset(redis_keys.MODULE_NODE, mapping={"wiki1": "1", "wiki2": "1"})
    settings = Settings(tmp_path, 1, redis_url)
    return Step(Context(settings, redis_client), "cluster", "t1", None)


def test_each_model_round_trips_through_redis(redis_client: redis.Redis) -> None:
    definition = BackupDefinition(
        id=3,
        name="Nightly",
        repository=DESTINATION,
        schedule="daily",
        schedule_hint={"interval": "daily"},
        retention=4,
        enabled=True,
        instances=("wiki1", "wiki2"),
        keep_weekly=2,
    )
    destination = Destination(DESTINATION, "Disk", "local", "local:/srv", "p" * 64, {"k": "v"})
    with redis_client.pipeline(transaction=True) as pipe:
        definition.to_redis(pipe)
        BackupSecrets(ping_url="https://hc.example/abc").to_redis(pipe, 3)
        destination.to_redis(pipe)
        TaskRecord('{"ok": true}', "", 0).to_redis(pipe, "node/1", "t9", "{}")
        pipe.execute()
    assert BackupDefinition.from_redis(redis_client, 3) == definition
    assert BackupDefinition.from_redis(redis_client, 4) is None
    assert BackupSecrets.from_redis(redis_client, 3).ping_url == "https://hc.example/abc"
    assert Destination.from_redis(redis_client, DESTINATION) == destination
    assert TaskRecord.from_redis(redis_client, "node/1", "t9") == TaskRecord('{"ok": true}', "", 0)
    assert redis_client.ttl(redis_keys.task_field("node/1", "t9", "exit_code")) > 0
    # A rewrite without an optional field removes it (HSET alone would keep it).
    with redis_client.pipeline(transaction=True) as pipe:
        definition.model_copy(update={"keep_weekly": None}).to_redis(pipe)
        pipe.execute()
    assert not redis_client.hexists(redis_keys.backup(3), "keep_weekly")


def test_list_backups_names_a_malformed_definition(step: Step, redis_client: redis.Redis) -> None:
    backups.add_backup(redis_client, 1, DESTINATION, ["wiki1"])
    redis_client.hset(redis_keys.backup(1), "retention", "many")
    with pytest.raises(StoredDataError, match=r"malformed cluster/backup/1: retention"):
        definitions.list_backups(step, ListBackupsRequest())


def test_a_malformed_status_shows_as_none_and_is_logged_with_its_key(
    step: Step, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.hset(redis_keys.MODULE_UUID, mapping={"wiki1": "u1", "wiki2": "u2"})
    backups.add_backup(redis_client, 1, DESTINATION, ["wiki1", "wiki2"])
    good = ModuleStatus("wiki2", Outcome.OK, 10, 20, total_size=5, last_success=20)
    redis_client.hset(
        redis_keys.backup_status(1, 1), mapping={"wiki1": "{not json", "wiki2": good.to_record()}
    )
    redis_client.hset(redis_keys.backup_private(1), "ping_url", "https://hc.example/secret")
    with caplog.at_level(logging.WARNING):
        (listed,) = definitions.list_backups(step, ListBackupsRequest())["backups"]
    assert listed["ping_url"] == "https://hc.example/…"
    statuses = {item["module_id"]: item["status"] for item in listed["instances"]}
    assert statuses["wiki1"] is None
    assert statuses["wiki2"] is not None and statuses["wiki2"]["outcome"] == "ok"
    assert statuses["wiki2"]["total_size"] == 5 and statuses["wiki2"]["success"] is True
    assert "malformed node/1/backup_status/1 [wiki1]: not JSON" in caplog.text


def test_alter_backup_mends_a_malformed_definition(step: Step, redis_client: redis.Redis) -> None:
    backups.add_backup(redis_client, 1, DESTINATION, ["wiki1"], keep_daily=3)
    redis_client.hset(redis_keys.backup(1), mapping={"retention": "many", "uinstances": "u7"})
    redis_client.hset(redis_keys.module_environment("wiki1"), "IMAGE_URL", "localhost/w:1")
    request = AlterBackupRequest(
        id=1, name="", schedule="daily", retention=2, instances=["wiki1"], enabled=False
    )
    definitions.alter_backup(step, request)
    mended = BackupDefinition.from_redis(redis_client, 1)
    assert mended is not None and mended.retention == 2 and not mended.enabled
    assert mended.repository == DESTINATION and mended.uinstances == ("u7",)
    assert mended.keep_daily is None and mended.name == "Backup 1"


def test_the_timer_sync_skips_a_malformed_definition_and_keeps_the_others(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.hset(redis_keys.MODULE_NODE, "wiki1", "1")
    backups.add_backup(redis_client, 1, DESTINATION, ["wiki1"], schedule="*-*-* 01:00:00")
    backups.add_backup(redis_client, 2, DESTINATION, ["wiki1"], schedule="*-*-* 02:00:00")
    redis_client.hset(redis_keys.backup(1), "enabled", "yes")
    with caplog.at_level(logging.ERROR):
        found = timers.node_schedules(redis_client, 1)
    assert [b.backup_id for b in found] == [2]
    assert "malformed cluster/backup/1: enabled" in caplog.text


def test_a_run_of_a_malformed_definition_fails_naming_it(
    step: Step, redis_client: redis.Redis
) -> None:
    backups.add_backup(redis_client, 1, DESTINATION, ["wiki1"])
    redis_client.hset(redis_keys.backup(1), "schedule_hint", "{half")
    with pytest.raises(StoredDataError, match=r"malformed cluster/backup/1: schedule_hint"):
        run_node_backup(step.ctx, 1)


def test_a_destination_without_its_password_is_named(redis_client: redis.Redis) -> None:
    backups.add_destination(redis_client, "local", "local:/srv/x")
    (destination_id,) = [
        key.rsplit("/", 1)[1] for key in redis_client.keys("cluster/backup_repository/*")
    ]
    redis_client.hdel(redis_keys.backup_repository_private(destination_id), "password")
    redis_client.hset(redis_keys.backup_repository_private(destination_id), "other", "x")
    private_key = redis_keys.backup_repository_private(destination_id)
    with pytest.raises(StoredDataError, match=f"malformed {private_key}: password"):
        load_destination(redis_client, destination_id)


def test_a_task_result_with_a_malformed_exit_code_is_named(redis_client: redis.Redis) -> None:
    redis_client.set(redis_keys.task_field("cluster", "t1", "output"), json.dumps({"a": 1}))
    redis_client.set(redis_keys.task_field("cluster", "t1", "exit_code"), "finished")
    with pytest.raises(StoredDataError, match="malformed task/cluster/t1/exit_code"):
        tasks.fetch_result(redis_client, "cluster", "t1")
