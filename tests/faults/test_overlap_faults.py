"""Runs of the same backup that overlap: two manual runs, a timer's run during a manual
one. Each module is backed up once at a time; every run ends with a truthful exit code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support import backups
from tests.support.embedded_node import (
    BIN,
    EmbeddedNode,
    containers,
    pause_dump_hook,
    settled,
    wait_until,
    wiki_with_backup,
)


def timer_run(node: EmbeddedNode) -> subprocess.Popen[str]:
    """What backup1.service executes when its timer fires."""
    client = subprocess.Popen(
        [str(BIN / "runagent"), "-m", "node", "run-backup", "--backup=1"],
        env=node.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    node.clients.append(client)
    return client


def test_two_manual_runs_and_a_timer_run_at_once(
    node: EmbeddedNode, minwiki_image: str, restic_image: str, tmp_path: Path
) -> None:
    wiki = wiki_with_backup(node, minwiki_image, tmp_path / "dest")
    marker, release = tmp_path / "dump-started", tmp_path / "release"
    pause_dump_hook(node, wiki.module_id, marker, release)
    first = node.api_background("run-backup", {"id": 1})
    wait_until("the first run's dump hook", marker.exists)
    second = node.api_background("run-backup", {"id": 1})
    timer = timer_run(node)
    # Both wait on the module's backup lock while the first run is held in its hook.
    wait_until(
        "both later runs claimed",
        lambda: len(node.redis().keys("task/node/1/*/context")) >= 2,
    )
    assert second.poll() is None and timer.poll() is None
    release.touch()

    for client in (first, second):
        out, err = client.communicate(timeout=300)
        assert client.returncode == 0, (out, err)
        assert json.loads(out)["outcome"] == "ok"
    out, err = timer.communicate(timeout=300)
    assert timer.returncode == 0, (out, err)
    # The later runs were satisfied by the snapshot the first one finished (or took their
    # own after it): never two backups of the module at once, never a broken repository.
    snapshots = backups.snapshots(wiki.repository)
    assert 1 <= len(snapshots) <= 3
    assert wiki.status(node)["snapshot_id"] in {s["id"] for s in snapshots}
    backups.restic(wiki.repository, "check")
    assert settled(node) == []
    assert containers(node) == []
