"""The seed's sequence through api-cli: destination, backup, list, alter, remove — and
no secret anywhere public (Redis, task records, daemon log, argv of every process)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from agent.core import redis_keys
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman

SECRET_PASSWORD = "restic-Pass-4-seq-XYZZY"


def public_text(client: redis.Redis) -> dict[str, str]:
    """Every key outside private/* rendered as text (hash fields, lists, strings)."""
    found = {}
    for key in client.keys("*"):
        if key.startswith("private/"):
            continue
        kind = client.type(key)
        if kind == "string":
            found[key] = client.get(key)
        elif kind == "hash":
            found[key] = json.dumps(client.hgetall(key))
        elif kind == "list":
            found[key] = json.dumps(client.lrange(key, 0, -1))
        elif kind == "set":
            found[key] = json.dumps(sorted(client.smembers(key)))
    return found


def test_seed_sequence_on_an_embedded_cluster(
    audited: tuple[ClusterHarness, Path],
    redis_client: redis.Redis,
    minwiki_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    """Each step's checks report on their own (subtests): a wrong listing does not hide
    a leaked secret further on."""
    cluster, argv_log = audited
    for expected in ("minwiki1", "minwiki2"):
        code, output, stderr = cluster.api_json("add-module", {"image": minwiki_image, "node": 1})
        assert code == 0 and output["module_id"] == expected, stderr
    events = redis_client.pubsub()
    events.psubscribe("cluster/event/backup-*")
    # Once the server confirms, no event published from here on can pass unheard.
    confirmed = events.get_message(timeout=30)
    assert confirmed is not None and confirmed["type"] == "psubscribe", confirmed

    (tmp_path / "backups").mkdir()
    request = {
        "name": "",
        "provider": "local",
        "url": f"local:{tmp_path}/backups",
        "password": SECRET_PASSWORD,
        "parameters": {},
    }
    code, added, stderr = cluster.api_json("add-backup-repository", request)
    assert code == 0, stderr
    with subtests.test("a typed password is not echoed into the task output"):
        assert added == {"password": "XXX", "id": added["id"]}
    destination = added["id"]

    backup = {
        "name": "nightly",
        "repository": destination,
        "schedule": "daily",
        "retention": 3,
        "instances": ["minwiki1", "minwiki2"],
        "enabled": True,
    }
    code, backup_id, stderr = cluster.api_json("add-backup", backup)
    assert (code, backup_id) == (0, 1), stderr

    code, listed, _ = cluster.api_json("list-backup-repositories")
    assert code == 0
    with subtests.test("list-backup-repositories"):
        assert listed["password_exists"] is False
        [item] = listed["repositories"]
        assert item == {
            "id": destination,
            "provider": "local",
            "name": f"local {destination[:4]}",
            "url": request["url"],
            "password": SECRET_PASSWORD,
            "basepath": "",
            "parameters": {},
        }
    redis_client.hset(
        redis_keys.backup_status(1, 1),
        "minwiki1",
        json.dumps(
            {
                "start": 10,
                "end": 20,
                "total_size": 5,
                "total_file_count": 2,
                "snapshots_count": 1,
                "errors": 0,
                "partial": False,
                "snapshot_id": "abc",
                "reason": "",
                "outcome": "ok",
            }
        ),
    )
    code, backups, _ = cluster.api_json("list-backups")
    assert code == 0
    with subtests.test("list-backups"):
        [listed_backup] = backups["backups"]
        assert {k: listed_backup[k] for k in ("id", "name", "repository", "schedule")} == {
            "id": 1,
            "name": "nightly",
            "repository": destination,
            "schedule": "daily",
        }
        assert listed_backup["retention"] == 3 and listed_backup["enabled"] is True
        first, second = listed_backup["instances"]
        assert first["module_id"] == "minwiki1"
        assert first["repository_path"].startswith("minwiki/")
        assert first["status"]["success"] is True and first["status"]["outcome"] == "ok"
        assert second["status"] is None
        assert backups["unconfigured_instances"] == []

    altered = {
        **backup,
        "retention": 5,
        "enabled": False,
        "instances": ["minwiki2"],
        "keep_daily": 7,
        "keep_within": "1y",
    }
    del altered["repository"]
    code, _, stderr = cluster.api_json("alter-backup", {**altered, "id": 1})
    assert code == 0, stderr
    with subtests.test("alter-backup"):
        fields = redis_client.hgetall(redis_keys.backup(1))
        assert fields["retention"] == "5" and fields["enabled"] == ""
        assert fields["keep_daily"] == "7"
        assert fields["instances"] == "minwiki2" and fields["repository"] == destination
        code, backups, _ = cluster.api_json("list-backups")
        assert backups["unconfigured_instances"] == [{"id": "minwiki1", "ui_name": ""}]

    code, _, stderr = cluster.api_json("remove-backup", {"id": 1})
    assert code == 0, stderr
    with subtests.test("removing it twice is a validation error"):
        code, output, _ = cluster.api_json("remove-backup", {"id": 1})
        assert code == 2 and output[0]["error"] == "backup_not_found"
    code, _, stderr = cluster.api_json("remove-backup-repository", {"id": destination})
    assert code == 0, stderr
    with subtests.test("remove-backup-repository"):
        assert not redis_client.keys("cluster/backup*/*") and not redis_client.keys("private/*")
        assert (tmp_path / "backups").is_dir(), "the stored data is left alone"

    channels = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = events.get_message(timeout=0.2)
        if message is not None and message["type"] == "pmessage":
            channels.append((message["channel"], json.loads(message["data"])))
    with subtests.test("one event per change"):
        assert channels == [
            ("cluster/event/backup-destination-changed", {"destination_ids": [destination]}),
            ("cluster/event/backup-schedule-changed", {"backup_ids": ["1"]}),
            ("cluster/event/backup-schedule-changed", {"backup_ids": ["1"]}),
            ("cluster/event/backup-schedule-changed", {"backup_ids": ["1"]}),
            ("cluster/event/backup-destination-changed", {"destination_ids": [destination]}),
        ]

    # The restic password is shown by contract in the output of list-backup-repositories
    # (as NS8 does); add-backup-repository echoes a generated one only, never a typed one.
    allowed = {
        key
        for key, text in public_text(redis_client).items()
        if key.endswith("/output") and ("password_exists" in text or '"id"' in text)
    }
    leaks = [k for k, v in public_text(redis_client).items() if SECRET_PASSWORD in v]
    with subtests.test("the password only in list-backup-repositories' output"):
        assert set(leaks) <= allowed and len(leaks) == 1
    with subtests.test("the password in no log"):
        log = (cluster.nodes[1].root / "log" / "agent.log").read_text()
        assert SECRET_PASSWORD not in log
        assert argv_log.exists() and SECRET_PASSWORD not in argv_log.read_text()
