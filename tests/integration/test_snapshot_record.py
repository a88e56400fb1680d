"""The record of each snapshot's environment that backups leave, and restores that use it
instead of reading the environment back with a restic run of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.operations.verify_restore import verify
from agent.records import snapshot_environments
from tests.support import backups
from tests.support.cluster import ClusterHarness, podman_runs

ENVIRONMENT = "IMAGE_URL=localhost/minwiki:latest\nMODULE_UUID=u1\n"


def test_lookup_names_one_snapshot_of_one_repository_path(redis_client: redis.Redis) -> None:
    redis_client.sadd(redis_keys.CLUSTER_NODES, 1, 2)
    first, second = "ab12cd34" + "0" * 56, "ab12cd99" + "1" * 56
    snapshot_environments.record(redis_client, 1, first, "dest", "minwiki/u1", ENVIRONMENT)
    snapshot_environments.record(redis_client, 2, second, "dest", "minwiki/u1", "IMAGE_URL=x\n")

    def lookup(snapshot: str, repository: str = "dest", path: str = "minwiki/u1") -> str | None:
        return snapshot_environments.lookup(redis_client, repository, path, snapshot)

    assert lookup(first) == ENVIRONMENT
    assert lookup("ab12cd34") == ENVIRONMENT  # a prefix, recorded by node 1
    assert lookup("ab12cd99") == "IMAGE_URL=x\n"  # recorded by node 2
    assert lookup("ab12cd") is None  # too short to trust
    assert lookup("ab12cd3") is None and lookup("ab12cd*") is None
    redis_client.hset(
        redis_keys.snapshot_environments(1),
        "ab12cd99" + "2" * 56,
        json.dumps({"repository": "dest", "path": "minwiki/u1", "environment": "IMAGE_URL=y\n"}),
    )
    assert lookup("ab12cd99") is None  # two recorded snapshots start so: restic must choose
    assert lookup("", "dest") is None and lookup("latest") is None
    assert lookup(first, repository="other") is None
    assert lookup(first, path="minwiki/u2") is None
    snapshot_environments.forget(redis_client, 1, [first, "0" * 64])
    assert lookup(first) is None


def test_newest_is_restics_latest_when_every_listed_snapshot_is_recorded(
    redis_client: redis.Redis,
) -> None:
    redis_client.sadd(redis_keys.CLUSTER_NODES, 1, 2)
    old, new, other = "a" * 64, "b" * 64, "c" * 64
    # Recorded in an order unlike their times: restic's time decides, as for restic.
    snapshot_environments.record(
        redis_client, 2, new, "d", "p", "IMAGE_URL=new\n", "2026-11-22T08:24:18.438472757Z"
    )
    snapshot_environments.record(
        redis_client, 1, old, "d", "p", "IMAGE_URL=old\n", "2026-11-22T09:24:17.9+02:00"
    )
    snapshot_environments.record(redis_client, 1, other, "d", "p", "IMAGE_URL=x\n")

    def newest(*ids: str, repository: str = "d") -> tuple[str, str] | None:
        return snapshot_environments.newest(redis_client, repository, "p", ids)

    assert newest(old, new) == (new, "IMAGE_URL=new\n")
    assert newest(old) == (old, "IMAGE_URL=old\n")  # what the listing lacks is gone
    assert newest(old, new, "d" * 64) is None  # a snapshot the cluster did not write
    assert newest(old, new, "snapshot.tmp") is None
    assert newest(old, other) is None  # recorded without its time
    assert newest(old, new, repository="e") is None
    assert newest() is None


def test_the_record_keeps_the_newest(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_environments, "MAX_RECORDS", 3)
    ids = [f"{n:064x}" for n in range(5)]
    for snapshot_id in ids:
        snapshot_environments.record(redis_client, 1, snapshot_id, "d", "p", ENVIRONMENT)
    assert sorted(redis_client.hkeys(redis_keys.snapshot_environments(1))) == ids[2:]


@pytest.mark.podman
def test_perf_contract_a_restore_of_a_snapshot_this_cluster_took_reads_no_environment_back(
    audited: tuple[ClusterHarness, Path],
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    cluster, argv_log = audited
    wiki = cluster.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"]
    target = tmp_path / "dest"
    target.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{target}")
    backups.add_backup(redis_client, 1, destination, [wiki], retention=1)
    path = f"minwiki/{redis_client.hget('cluster/module_uuid', wiki)}"
    cluster.api_ok("run-backup", {"id": 1})
    first = backups.status(redis_client, 1, 1, wiki)["snapshot_id"]
    recorded = json.loads(str(redis_client.hget(redis_keys.snapshot_environments(1), first)))
    assert (recorded["repository"], recorded["path"]) == (destination, path)
    dumped = backups.restic(target / path, "dump", first, "/state/environment").stdout
    assert recorded["environment"] == dumped  # the very bytes the snapshot holds

    def restored_with_dumps(snapshot: str) -> tuple[str, int]:
        argv_log.unlink(missing_ok=True)
        request = {"node": 1, "repository": destination, "path": path, "snapshot": snapshot}
        module_id = cluster.api_ok("cluster/restore-module", request)["module_id"]
        dumps = [argv for argv in podman_runs(argv_log) if "dump" in argv]
        report = verify(connect(cluster.redis_url), {1: cluster.nodes[1].settings}, wiki, module_id)
        assert report["ok"], report["differences"]
        return module_id, len(dumps)

    copy, dumps = restored_with_dumps(first[:12])
    assert dumps == 0
    cluster.api_ok("remove-module", {"module_id": copy})
    # latest: the repository's only snapshot file is one the record holds.
    copy, dumps = restored_with_dumps("")
    assert dumps == 0
    restores = [a for a in podman_runs(argv_log) if "restore" in a]
    # The module's restic restore names the snapshot whose environment was installed.
    assert [a[a.index("restore") + 2] for a in restores] == [first]
    cluster.api_ok("remove-module", {"module_id": copy})
    # No record (a snapshot of another cluster, say): the environment is read back.
    key = redis_keys.snapshot_environments(1)
    redis_client.hdel(key, first)
    copy, dumps = restored_with_dumps("")
    assert dumps == 1
    cluster.api_ok("remove-module", {"module_id": copy})
    assert not redis_client.hexists(key, first), "what `latest` named is not known: no record"
    # The eligibility check the UI makes before a restore reads it back by the whole id
    # and records it: the restore that follows reads nothing.
    argv_log.unlink(missing_ok=True)
    request = {"repository": destination, "path": path, "snapshot": first}
    cluster.api_ok("determine-restore-eligibility", request)
    assert len([argv for argv in podman_runs(argv_log) if "dump" in argv]) == 1
    kept = json.loads(str(redis_client.hget(key, first)))
    assert (kept["environment"], kept["snapshot_time"]) == (dumped, "")
    copy, dumps = restored_with_dumps(first)
    assert dumps == 0
    cluster.api_ok("remove-module", {"module_id": copy})

    # Retention forgets the first snapshot, and its record with it.
    snapshot_environments.record(redis_client, 1, first, destination, path, dumped)
    cluster.api_ok("run-backup", {"id": 1})
    second = backups.status(redis_client, 1, 1, wiki)["snapshot_id"]
    assert [s["id"] for s in backups.snapshots(target / path)] == [second]
    assert redis_client.hkeys(redis_keys.snapshot_environments(1)) == [second]
