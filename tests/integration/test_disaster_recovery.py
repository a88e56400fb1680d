"""Disaster drill: a cluster is destroyed (Redis, data dir, volumes) and comes back from
its destinations and the cluster backup passphrase alone."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.core.volumes import included_volumes
from agent.operations.verify_restore import module_tree, redis_values
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman

PASSPHRASE = "drill passphrase, kept on paper"


def snapshot_of(cluster: ClusterHarness, module_id: str) -> dict[str, Any]:
    """What a byte-for-byte comparison needs of a module, taken while it exists."""
    settings = cluster.nodes[1].settings
    home = settings.agent_home(f"module/{module_id}")
    include, exclude = home / "etc" / "state-include.conf", home / "etc" / "state-exclude.conf"
    volumes = included_volumes(include.read_text())
    entries, links = module_tree(settings, module_id, volumes, include, exclude)
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    return {
        "volumes": volumes,
        "entries": entries,
        "links": links,
        "keys": redis_values(client, module_id),
        "include": include.read_text(),
        "exclude": exclude.read_text() if exclude.exists() else "",
    }


def compare(cluster: ClusterHarness, module_id: str, before: dict[str, Any], work: Path) -> None:
    settings = cluster.nodes[1].settings
    include, exclude = work / f"{module_id}-include", work / f"{module_id}-exclude"
    include.write_text(before["include"])
    exclude.write_text(before["exclude"])
    entries, links = module_tree(settings, module_id, before["volumes"], include, exclude)
    differences = [
        rel
        for rel in sorted(entries.keys() | before["entries"].keys())
        if entries.get(rel) != before["entries"].get(rel)
    ]
    assert not differences, differences[:20]
    assert links == before["links"] and len(entries) > 200
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    assert redis_values(client, module_id) == before["keys"]


def definitions(client: redis.Redis) -> dict[str, dict[str, str]]:
    """Every definition a restore-cluster must bring back, keyed by Redis key."""
    patterns = (
        "cluster/backup_repository/*",
        "private/backup_repository/*",
        "cluster/backup/*",
        "private/backup/*",
        "cluster/notification_target/*",
        "private/notification_target/*",
    )
    return {
        key: client.hgetall(key) for pattern in patterns for key in client.scan_iter(match=pattern)
    }


def test_a_destroyed_cluster_comes_back_from_its_destinations(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_url: str,
    minwiki_image: str,
    restic_image: str,
    subtests: pytest.Subtests,
) -> None:
    """Each stage's checks report on their own (subtests)."""
    # Both clusters reach the destinations beside them (a disk moved to the new one).
    roots = (str(tmp_path),)
    old = ClusterHarness(tmp_path / "old", redis_url, local_roots=roots)
    new = ClusterHarness(tmp_path / "new", redis_url, local_roots=roots)
    try:
        old.add_node(1)
        wikis = [old.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"]]
        wikis.append(old.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"])
        stores = [tmp_path / "dest1", tmp_path / "dest2"]
        destinations = []
        for index, store in enumerate(stores):
            store.mkdir()
            destinations.append(backups.add_destination(redis_client, "local", f"local:{store}"))
            backups.add_backup(redis_client, index + 1, destinations[index], [wikis[index]])
        redis_client.set(f"module/{wikis[1]}/ui_name", "Second wiki")
        old.api_ok(
            "add-notification-target",
            {"name": "ops", "url": "json://127.0.0.1:9/hook", "events": ["failure"]},
        )
        assert old.api_ok("download-cluster-backup", {"password": PASSPHRASE})["path"]
        old.api_ok("run-backup", {"id": 1})
        old.api_ok("run-backup", {"id": 2})
        redis_client.hset("private/backup/2", "ping_url", "https://hc-ping.com/5f3c")
        old.api_ok("run-backup", {"id": 1})  # the newest dump now carries the ping URL too
        cluster_uuid = redis_client.get("cluster/uuid")
        module_uuids = {m: redis_client.hget("cluster/module_uuid", m) for m in wikis}
        name = f"cluster-backup-{cluster_uuid}.json.gz.enc"
        assert (stores[1] / name).is_file(), "every destination gets the cluster backup"
        before = {m: snapshot_of(old, m) for m in wikis}
        expected = definitions(redis_client)

        # The disaster: Redis, the data directory, the module volumes, all gone.
        old.stop()
        shutil.rmtree(tmp_path / "old")
        old.nodes.clear()
        redis_client.flushdb()

        new.add_node(1)
        sealed = (stores[0] / name).read_bytes()
        request = {"type": "file", "file": base64.b64encode(sealed).decode()}
        with subtests.test("a wrong passphrase or a damaged file is refused"):
            code, output, _ = new.api_json(
                "retrieve-cluster-backup", {**request, "password": "guess"}
            )
            assert code == 2 and output[0]["error"] == "invalid_passphrase", output
            damaged = bytearray(sealed)
            damaged[len(damaged) // 2] ^= 0xFF
            code, output, _ = new.api_json(
                "retrieve-cluster-backup",
                {
                    **request,
                    "file": base64.b64encode(bytes(damaged)).decode(),
                    "password": PASSPHRASE,
                },
            )
            assert code == 2 and output[0]["error"] == "backup_file_damaged", output
            assert not redis_client.keys("cluster/backup*"), "a refused file changes nothing"

        found = new.api_ok("retrieve-cluster-backup", {**request, "password": PASSPHRASE})
        with subtests.test("retrieve-cluster-backup lists what it holds"):
            assert found["backup_repositories"] == 2 and found["backups"] == 2
            assert {m["module_id"] for m in found["modules"]} == set(wikis)
        new.api_ok("restore-cluster")
        with subtests.test("the cluster's uuid comes back"):
            assert redis_client.get("cluster/uuid") == cluster_uuid
        restored_definitions = definitions(redis_client)
        restored_definitions_all = definitions(redis_client)
        with subtests.test("the definitions come back, instances by uuid"):
            for backup_id, module_id in ((1, wikis[0]), (2, wikis[1])):
                key = f"cluster/backup/{backup_id}"
                assert restored_definitions[key].pop("uinstances") == module_uuids[module_id]
                assert restored_definitions[key].pop("instances") == ""
                assert expected[key].pop("instances") == module_id
            assert restored_definitions == expected
        with subtests.test("a second restore-cluster is refused"):
            code, output, _ = new.api_json("restore-cluster")
            assert code != 0, "a second restore-cluster is refused"
        encoded = base64.b64encode(sealed).decode()
        with subtests.test("import-backup-destinations adds only what is missing"):
            code, output, _ = new.api_json(
                "import-backup-destinations", {"backup_password": "guess", "backup_data": encoded}
            )
            assert code == 3 and output[0]["error"] == "invalid_passphrase", output
            imported = new.api_ok(
                "import-backup-destinations",
                {"backup_password": PASSPHRASE, "backup_data": encoded},
            )
            assert imported == {"imported_destinations": 0, "skipped_destinations": 2}
            redis_client.delete(f"cluster/backup_repository/{destinations[0]}")
            imported = new.api_ok(
                "import-backup-destinations",
                {"backup_password": PASSPHRASE, "backup_data": encoded},
            )
            assert imported == {"imported_destinations": 1, "skipped_destinations": 1}
            assert definitions(redis_client) == restored_definitions_all

        with subtests.test("read-backup-repositories finds every module's repository"):
            rows = new.api_ok("read-backup-repositories")
            paths = {(r["repository_id"], r["path"]) for r in rows}
            assert paths == {
                (destinations[i], f"minwiki/{module_uuids[m]}") for i, m in enumerate(wikis)
            }
        restored = []
        for index, module_id in enumerate(wikis):
            added = new.api_ok(
                "cluster/restore-module",
                {
                    "node": 1,
                    "repository": destinations[index],
                    "path": f"minwiki/{module_uuids[module_id]}",
                    "snapshot": "",
                },
            )
            restored.append(added["module_id"])
            with subtests.test("restore-module brings back the module", module=module_id):
                assert added["module_uuid"] == module_uuids[module_id]
                assert (
                    redis_client.hget(f"cluster/backup/{index + 1}", "instances")
                    == added["module_id"]
                )
                compare(new, added["module_id"], before[module_id], tmp_path)
        with subtests.test("the UI label comes back"):
            assert redis_client.get(f"module/{restored[1]}/ui_name") == "Second wiki"
        # The new cluster backs up again, with the same passphrase, to the same place.
        new.api_ok("run-backup", {"id": 2})
        assert (stores[1] / name).read_bytes() != sealed
    finally:
        old.stop()
        new.stop()
