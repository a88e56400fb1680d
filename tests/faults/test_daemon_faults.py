"""The node daemon SIGKILLed mid-backup: `agent cluster up` recovers; the run is reported
aborted, nothing it started is left, and the next run works on an intact repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import backups
from tests.support.embedded_node import (
    EmbeddedNode,
    containers,
    pause_dump_hook,
    settled,
    wait_until,
    wiki_with_backup,
)
from tests.support.processes import alive


def test_daemon_killed_mid_backup_then_cluster_up(
    node: EmbeddedNode,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    """Each stage's checks report on their own (subtests)."""
    wiki = wiki_with_backup(node, minwiki_image, tmp_path / "dest")
    node.api_ok("run-backup", {"id": 1})
    first = wiki.status(node)
    marker, release = tmp_path / "dump-started", tmp_path / "release"
    pause_dump_hook(node, wiki.module_id, marker, release)
    client = node.api_background("run-backup", {"id": 1})
    wait_until("the dump hook starting", marker.exists)

    killed = node.kill_daemon()
    up = node.agent("cluster", "up")
    assert up.returncode == 0, up.stderr
    assert "daemon: started" in up.stdout and "private Redis running" in up.stdout
    out, err = client.communicate(timeout=300)
    with subtests.test("the waiting api-cli is told, the killed daemon is gone"):
        assert client.returncode == 1, (out, err)
        assert "daemon stopped while it was running" in err
        assert not alive(killed)
    # Recovery stops the run's restic container; podman removes it (--rm) as it exits.
    wait_until("the aborted run's container gone", lambda: containers(node) == [], 60)
    # Stopped by recovery, the run recorded what it was: failed, no snapshot. The task
    # record and the status agree.
    with subtests.test("the aborted run is recorded failed, without a snapshot"):
        aborted = wiki.status(node)
        assert aborted["outcome"] == "failed" and aborted["snapshot_id"] == "", aborted
        assert aborted["reason"], aborted
        assert len(backups.snapshots(wiki.repository)) == 1

    release.touch()
    node.api_ok("run-backup", {"id": 1})
    with subtests.test("the next run backs up"):
        second = wiki.status(node)
        assert second["snapshot_id"] != first["snapshot_id"] and not second["errors"]
        assert len(backups.snapshots(wiki.repository)) == 2
        backups.restic(wiki.repository, "check")
    with subtests.test("nothing left claimed, every run has its exit code"):
        assert settled(node) == []
        assert containers(node) == []
        client = node.redis()
        runs = sorted(
            (k.split("/")[1], client.get(k))
            for k in client.keys("task/*/exit_code")
            if json.loads(client.get(k.replace("exit_code", "context")))["action"] == "run-backup"
        )
        # Three runs, each a cluster task and a node task: the second aborted on both.
        expected = [("cluster", "0"), ("cluster", "0"), ("cluster", "1")]
        assert runs == [*expected, ("node", "0"), ("node", "0"), ("node", "1")]
