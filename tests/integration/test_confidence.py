"""Restore confidence (issue #18): integrity checks, mirrors, freshness from repositories."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.operations.verify_restore import verify
from agent.records.backups import CheckPolicy
from tests.integration.test_notifications import Receiver, add_target
from tests.support import backends, backups
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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


def test_rolling_check_finds_a_flipped_bit_and_fails_like_a_backup(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki: str,
    tmp_path: Path,
    receiver: Receiver,
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

    code, _, stderr = add_target(cluster, "ops", receiver.url("hook"), ["failure"])
    assert code == 0, stderr
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
    message = receiver.next()  # what a failed backup sends, for each failed check
    assert message["type"] == "failure" and "integrity check" in message["title"]
    assert f"{wiki} (node 1): failed" in message["message"]
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


def test_mirror_holds_the_snapshots_restores_byte_for_byte_and_an_outage_is_partial(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    target = tmp_path / "backups"
    target.mkdir()
    primary = backups.add_destination(redis_client, "local", f"local:{target}")
    (tmp_path / "rest").mkdir()
    path = f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, wiki)}"
    with backends.rclone_serve("restic", tmp_path / "rest") as rest:
        mirror = backends_destination(redis_client, rest.url)
        backups.add_backup(
            redis_client, 1, primary, [wiki], retention=3, mirrors=(mirror,), mirror_retention=1
        )
        for _run in range(2):
            cluster.api_ok("run-backup", {"id": 1})
        status = backups.status(redis_client, 1, 1, wiki)
        with subtests.test("the run is ok and its snapshot is on both destinations"):
            assert status["outcome"] == "ok" and status["mirrored"] == [mirror]
            assert _listed(cluster, wiki)["newest_snapshot_copies"] == 2
        with subtests.test("the mirror holds the same snapshots, with its own retention"):
            source = cluster.api_ok("read-backup-snapshots", {"repository": primary, "path": path})
            copied = cluster.api_ok("read-backup-snapshots", {"repository": mirror, "path": path})
            assert len(source) == 2 and len(copied) == 1
            assert {s["timestamp"] for s in copied} <= {s["timestamp"] for s in source}
        with subtests.test("read-backup-repositories shows the mirror as such"):
            rows = [r for r in cluster.api_ok("read-backup-repositories") if r["path"] == path]
            by_destination = {r["repository_id"]: r for r in rows}
            assert by_destination[mirror]["mirror_of"] == [primary]
            assert by_destination[primary]["mirror_of"] == []
        restored = cluster.api_ok(
            "cluster/restore-module",
            {"node": 1, "repository": mirror, "path": path, "snapshot": ""},
        )
        with subtests.test("a restore from the mirror matches the source byte for byte"):
            nodes = {n: node.settings for n, node in cluster.nodes.items()}
            result = verify(connect(cluster.redis_url), nodes, wiki, restored["module_id"])
            assert result["ok"], result["differences"]
        cluster.api_ok("remove-module", {"module_id": restored["module_id"]})

    # The mirror's server is gone: the backup itself succeeds, its copy does not.
    with backends.refusing(rest.port):
        code, output, stderr = cluster.api_json("run-backup", {"id": 1})
    status = backups.status(redis_client, 1, 1, wiki)
    with subtests.test("a mirror outage makes the run partial, never ok"):
        assert code == 3, (output, stderr)
        assert status["outcome"] == "partial" and status["snapshot_id"]
        assert f"mirror {mirror}" in status["reason"] and not status.get("mirrored")
        assert _listed(cluster, wiki)["newest_snapshot_copies"] == 1


def backends_destination(redis_client: redis.Redis, url: str) -> str:
    """A rest destination on the rclone-served restic REST server at url."""
    return backups.add_destination(
        redis_client,
        "rest",
        f"rest:{url}/mirror",
        rest_user=backends.USER,
        rest_password=backends.PASSWORD,
    )


def test_refresh_reads_freshness_from_the_repository_and_flags_lost_snapshots(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    target = backups.add_local_backup(redis_client, tmp_path, [wiki], retention=3)
    repository = target / f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, wiki)}"
    for _run in range(2):
        cluster.api_ok("run-backup", {"id": 1})
    snapshots = sorted(backups.snapshots(repository), key=lambda s: str(s["time"]))
    assert "repository_freshness" not in _listed(cluster, wiki)  # only when asked

    fresh = _listed(cluster, wiki, {"refresh": True})["repository_freshness"]
    assert fresh["lost_snapshots"] is False and fresh["snapshots"] == 2
    assert fresh["holding_newest"] == 1 and fresh["error"] == ""
    newest = fresh["newest_snapshot"]

    # Someone with the repository's password forgets the newest snapshot: the cluster's
    # record still names it, the repository no longer holds it.
    backups.restic(repository, "forget", snapshots[-1]["id"])
    stale = _listed(cluster, wiki, {"refresh": True})["repository_freshness"]
    assert stale["lost_snapshots"] is True and stale["snapshots"] == 1
    assert stale["newest_snapshot"] < newest
    # The record alone cannot tell: without refresh nothing looks wrong.
    assert _listed(cluster, wiki)["snapshot_id"] == snapshots[-1]["id"]


def test_add_and_alter_backup_keep_check_drill_and_mirrors(
    cluster: ClusterHarness, redis_client: redis.Redis, tmp_path: Path
) -> None:
    primary = backups.add_destination(redis_client, "local", f"local:{tmp_path}")
    mirror = backups.add_destination(redis_client, "local", f"local:{tmp_path}/m")
    base = {"name": "n", "instances": [], "schedule": "daily", "retention": 2, "enabled": True}
    code, output, _ = cluster.api_json(
        "add-backup",
        {
            **base,
            "repository": primary,
            "check": {"schedule": "never at all"},
            "mirrors": [primary],
        },
    )
    assert code == 2
    assert {row["parameter"] for row in output} == {"check.schedule", "mirrors"}
    backup_id = cluster.api_ok(
        "add-backup",
        {
            **base,
            "repository": primary,
            "check": {"schedule": "Sun *-*-* 04:00", "read_data_subset": "1/4"},
            "drill": {"schedule": "monthly", "node": 1},
            "mirrors": [mirror],
            "mirror_retention": 5,
        },
    )
    # An alter that leaves them out (NS8's UI knows nothing of them) keeps them.
    cluster.api_ok("alter-backup", {**base, "id": backup_id, "retention": 3})
    [listed] = cluster.api_ok("list-backups")["backups"]
    assert listed["check"] == {"schedule": "Sun *-*-* 04:00", "read_data_subset": "1/4"}
    assert listed["drill"] == {"schedule": "monthly", "node": 1}
    assert (listed["mirrors"], listed["mirror_retention"], listed["retention"]) == ([mirror], 5, 3)
    # null and [] remove them.
    cluster.api_ok("alter-backup", {**base, "id": backup_id, "check": None, "mirrors": []})
    [listed] = cluster.api_ok("list-backups")["backups"]
    assert listed["check"] is None and listed["mirrors"] == [] and listed["drill"]
    assert not redis_client.hexists(redis_keys.backup(backup_id), "check")
    # A destination removed leaves the backups that only mirror to it, without it.
    cluster.api_ok("alter-backup", {**base, "id": backup_id, "mirrors": [mirror]})
    cluster.api_ok("remove-backup-repository", {"id": mirror})
    [listed] = cluster.api_ok("list-backups")["backups"]
    assert listed["id"] == backup_id and listed["mirrors"] == []


def test_a_mirror_on_s3_holds_the_snapshot_and_refresh_counts_both_copies(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    target = tmp_path / "backups"
    target.mkdir()
    primary = backups.add_destination(redis_client, "local", f"local:{target}")
    path = f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, wiki)}"
    with backends.moto_s3(tmp_path) as s3:
        mirror = backups.add_destination(
            redis_client,
            "generic-s3",
            f"s3:{s3.url}/bucket1/base",
            aws_access_key_id="AKIAEXAMPLE",
            aws_secret_access_key="s3-Secret-Key-Value",
            aws_default_region="us-east-1",
        )
        backups.add_backup(redis_client, 1, primary, [wiki], mirrors=(mirror,))
        cluster.api_ok("run-backup", {"id": 1})
        assert backups.status(redis_client, 1, 1, wiki)["mirrored"] == [mirror]
        source = cluster.api_ok("read-backup-snapshots", {"repository": primary, "path": path})
        copied = cluster.api_ok("read-backup-snapshots", {"repository": mirror, "path": path})
        assert [s["timestamp"] for s in copied] == [s["timestamp"] for s in source]
        assert copied[0]["id"] != source[0]["id"]  # a copy is a snapshot of its own
        fresh = _listed(cluster, wiki, {"refresh": True})["repository_freshness"]
        assert fresh["holding_newest"] == 2 and fresh["lost_snapshots"] is False
