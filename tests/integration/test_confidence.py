"""Restore confidence (issue #18): integrity checks, mirrors, freshness from repositories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.core import redis_keys
from agent.records.backups import CheckPolicy
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


def _flip_a_bit(repository: Path) -> Path:
    """Flip one bit in the middle of the biggest pack file; returns the pack."""
    packs = sorted((p for p in (repository / "data").rglob("*") if p.is_file()), key=_size)
    pack = packs[-1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x10
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    return pack


def _size(path: Path) -> int:
    return path.stat().st_size


def _check(redis_client: redis.Redis, destination: str, path: str) -> dict[str, Any]:
    text = redis_client.hget(redis_keys.repository_check(destination), path)
    assert text, f"no check record for {path}"
    return dict(json.loads(text))


def _listed(cluster: ClusterHarness, module_id: str, data: Any = None) -> dict[str, Any]:
    listing = cluster.api_ok("list-backups", data)
    for backup in listing["backups"]:
        for instance in backup["instances"]:
            if instance["module_id"] == module_id:
                return dict(instance)
    raise AssertionError(f"{module_id} not in list-backups")


def test_rolling_check_finds_a_flipped_bit_and_fails_like_a_backup(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    target = tmp_path / "backups"
    target.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{target}")
    policy = CheckPolicy(schedule="Sun *-*-* 04:00", read_data_subset="1/2")
    backups.add_backup(redis_client, 1, destination, [wiki], check=policy)
    module_uuid = str(redis_client.hget(redis_keys.MODULE_UUID, wiki))
    path = f"minwiki/{module_uuid}"
    cluster.api_ok("run-backup", {"id": 1})

    first = cluster.api_ok("run-check", {"id": 1})
    assert first["outcome"] == "ok"
    record = _check(redis_client, destination, path)
    assert (record["outcome"], record["subset"], record["runs"]) == ("ok", "1/2", 1)
    cluster.api_ok("run-check", {"id": 1})
    assert _check(redis_client, destination, path)["subset"] == "2/2"

    _flip_a_bit(target / path)
    # Two more runs read both halves again: one of them holds the damaged pack.
    verdicts = []
    for _run in range(2):
        code, output, stderr = cluster.api_json("run-check", {"id": 1})
        verdict = output["nodes"]["1"]["modules"][wiki]
        assert code == (1 if verdict["outcome"] == "failed" else 0), (output, stderr)
        verdicts.append(verdict)
    failed = [v for v in verdicts if v["outcome"] == "failed"]
    assert failed, verdicts  # two if the flipped pack holds trees (read by every check)
    assert failed[0]["num_errors"] >= 1 and failed[0]["broken_packs"]
    assert "restic check found" in failed[0]["reason"]
    record = _check(redis_client, destination, path)
    assert record["runs"] == 4 and record["subset"] == "2/2"

    instance = _listed(cluster, wiki)
    assert instance["check"]["subset"] == "2/2"
    runs = cluster.api_ok("list-backup-runs", {"module_id": wiki, "limit": 10})
    checks = [run for run in runs if run.get("kind") == "check"]
    assert len(checks) == 4 and "failed" in {run["outcome"] for run in checks}
    prom = cluster.nodes[1].settings.state_dir("node/1") / "node_exporter" / "check1.prom"
    assert f'node_backup_check_status{{id="1",name="Backup 1",module="{wiki}"}}' in (
        prom.read_text()
    )


def test_check_of_a_module_never_backed_up_records_nothing(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    target = backups.add_local_backup(
        redis_client, tmp_path, [wiki], check=CheckPolicy(schedule="daily")
    )
    assert cluster.api_ok("run-check", {"id": 1})["outcome"] == "ok"
    assert not list(target.iterdir())
    assert _listed(cluster, wiki)["check"] is None
