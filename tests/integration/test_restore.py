"""Restore through api-cli: discover, pick a snapshot, restore on another node, compare all."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.operations.verify_restore import verify
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


def backed_up_wiki(cluster: ClusterHarness, image: str, target: Path) -> tuple[str, str, int]:
    """(module id, destination id, backup id) of a minwiki on node 1 backed up once."""
    wiki = cluster.api_ok("add-module", {"image": image, "node": 1})["module_id"]
    target.mkdir()
    repository = backups.add_destination(cluster_redis(cluster), "local", f"local:{target}")
    backup_id = 1
    backups.add_backup(cluster_redis(cluster), backup_id, repository, [wiki], retention=5)
    return wiki, repository, backup_id


def cluster_redis(cluster: ClusterHarness) -> redis.Redis:
    return redis.Redis.from_url(cluster.redis_url, decode_responses=True)


def run_backup(cluster: ClusterHarness, backup_id: int) -> None:
    cluster.api_ok("run-backup", {"id": backup_id})


def report(cluster: ClusterHarness, source: str, restored: str) -> dict[str, Any]:
    nodes = {n: node.settings for n, node in cluster.nodes.items()}
    return verify(connect(cluster.redis_url), nodes, source, restored)


def test_restore_on_another_node_brings_back_everything(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    """Each stage's checks report on their own (subtests)."""
    cluster.add_node(2)
    wiki, repository, backup_id = backed_up_wiki(cluster, minwiki_image, tmp_path / "dest")
    source_pages = cluster.volume_dir(1, wiki, "pages")
    os.setxattr(source_pages / "private-notes.md", "user.reviewed", b"by admin")
    redis_client.set(f"module/{wiki}/ui_name", "Team wiki ✓")  # the UI label travels too
    (source_pages / "draft.md.tmp").write_text("unsaved edit of the source\n")
    run_backup(cluster, backup_id)
    state = cluster.nodes[1].settings.state_dir(f"module/{wiki}")
    with subtests.test("the label dump is removed after the backup"):
        assert not (state / "ui_name.dump").exists(), "the label dump is removed after the backup"
    module_uuid = redis_client.hget("cluster/module_uuid", wiki)
    path = f"minwiki/{module_uuid}"

    found = cluster.api_ok("read-backup-repositories")
    with subtests.test("read-backup-repositories"):
        [row] = [r for r in found if r["path"] == path]
        assert row["repository_id"] == repository and row["module_id"] == wiki
        assert row["installed_instance"] == wiki and row["is_generated_locally"] is True
        assert row["node_fqdn"] and row["timestamp"] > 0 and row["repository_provider"] == "local"
    with subtests.test("read-backup-snapshots"):
        [snapshot] = cluster.api_ok(
            "read-backup-snapshots", {"repository": repository, "path": path}
        )
        assert snapshot["total_bytes"] > 2_000_000 and len(snapshot["id"]) == 64
    with subtests.test("determine-restore-eligibility"):
        eligibility = cluster.api_ok(
            "determine-restore-eligibility",
            {"repository": repository, "path": path, "snapshot": ""},
        )
        assert eligibility["image_url"] == minwiki_image
        assert [
            (d["node_id"], d["instances"], d["eligible"])
            for d in eligibility["install_destinations"]
        ] == [
            (1, 1, True),
            (2, 0, True),
        ]

    restored = cluster.api_ok(
        "cluster/restore-module",
        {"node": 2, "repository": repository, "path": path, "snapshot": ""},
    )
    new = restored["module_id"]
    with subtests.test("the copy is on node 2 under its own uuid"):
        assert restored["image_url"] == minwiki_image and restored["image_name"] == "minwiki"
        assert redis_client.hget("cluster/module_node", new) == "2"
        # The source is still installed: the copy gets its own uuid, mapped to the source's.
        assert restored["module_uuid"] != module_uuid
        assert (
            redis_client.hget("private/nodes/restore_uuid", restored["module_uuid"]) == module_uuid
        )

    with subtests.test("the copy is the source, file for file"):
        result = report(cluster, wiki, new)
        assert result["ok"], result["differences"]
        compared = result["compared"]
        assert compared["files"] > 200 and compared["symlinks"] == 1
        assert compared["hardlink_groups"] == 1 and compared["xattrs"] >= 1
        assert "wiki_settings" in compared["redis_keys"]
    with subtests.test("label, xattrs, empty dirs, excludes"):
        assert redis_client.get(f"module/{new}/ui_name") == "Team wiki ✓"
        restored_pages = cluster.volume_dir(2, new, "pages")
        assert os.getxattr(restored_pages / "private-notes.md", "user.reviewed") == b"by admin"
        assert (restored_pages / "drafts" / "empty").is_dir()
        # Excluded at backup, so absent after restore (the copy keeps the temp files its
        # own create-module made: a whole restore deletes nothing).
        assert not (restored_pages / "draft.md.tmp").exists()
    with subtests.test("the module's own state and database"):
        assert redis_client.hgetall(f"module/{new}/wiki_settings") == redis_client.hgetall(
            f"module/{wiki}/wiki_settings"
        )
        status = cluster.api_ok(f"module/{new}/get-status")
        assert status == cluster.api_ok(f"module/{wiki}/get-status")
        db_path = cluster.volume_dir(2, new, "db") / "wiki.db"
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT count(*) FROM pages").fetchone()[0] == status["pages"]
    with subtests.test("the repository checks clean"):
        backups.restic(tmp_path / "dest" / path, "check")
