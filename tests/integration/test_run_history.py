"""Each module's run history: outcomes, sizes, reasons and log lines, newest first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from agent.core import redis_keys
from agent.records import run_history
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


def test_runs_are_kept_newest_first_with_their_reason_and_log(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    backups.add_local_backup(redis_client, tmp_path, [wiki])
    state = cluster.nodes[1].settings.state_dir(f"module/{wiki}")

    (state / "FAIL_DUMP").write_text("asked by the test\n")
    run = cluster.api("run", "run-backup", "--data", json.dumps({"id": 1}))
    assert run.returncode == 1
    (state / "FAIL_DUMP").unlink()
    assert cluster.api("run", "run-backup", "--data", json.dumps({"id": 1})).returncode == 0

    runs = cluster.api_ok("list-backup-runs", {"module_id": wiki})
    assert [r["outcome"] for r in runs] == ["ok", "failed"]
    good, bad = runs
    assert good["snapshot_id"] and good["total_size"] > 0 and good["snapshots_count"] == 1
    assert good["node"] == 1 and good["backup_id"] == 1 and good["duration"] >= 0
    assert any("started" in line for line in good["log"])
    assert "module-dump-state failed" in bad["reason"]
    assert any("failed" in line for line in bad["log"])
    assert cluster.api_ok("list-backup-runs", {"module_id": wiki, "limit": 1}) == [good]

    code, output, _ = cluster.api_json("list-backup-runs", {"module_id": wiki, "limit": 0})
    assert code == 10 and output[0]["parameter"] == "limit"


def test_the_history_is_capped_and_junk_is_shown_not_dropped(redis_client: redis.Redis) -> None:
    record = run_history.RunRecord(1, 1, 10, 20, "ok", "", "abc", 1, 1, 1, 1, [], ["line"])
    for _ in range(run_history.HISTORY_LENGTH + 5):
        run_history.append(redis_client, "wiki9", record)
    assert redis_client.llen(redis_keys.backup_history("wiki9")) == run_history.HISTORY_LENGTH
    redis_client.lpush(redis_keys.backup_history("wiki9"), "{not json")
    rows = run_history.read(redis_client, "wiki9", 2)
    assert rows[0] == {"malformed": "{not json"} and rows[1]["duration"] == 10
