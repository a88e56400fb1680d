"""The backup engine with real restic in the real image, real volumes, the sample module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from agent.core import redis_keys
from tests.support import backups
from tests.support.cluster import ClusterHarness, podman_runs

pytestmark = pytest.mark.podman


def repo_of(client: redis.Redis, base: Path, module_id: str) -> Path:
    module_uuid = client.hget("cluster/module_uuid", module_id)
    return base / "minwiki" / str(module_uuid)


def test_backup_holds_state_dumps_and_included_volumes_only(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    """Each part of the outcome reports on its own (subtests)."""
    target = tmp_path / "backups"
    target.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{target}")
    backups.add_backup(redis_client, 1, destination, [wiki])
    result = cluster.api("run", "run-backup", "--data", json.dumps({"id": 1}))
    assert result.returncode == 0, result.stderr + result.stdout
    output = json.loads(result.stdout)
    assert output["outcome"] == "ok"

    repo = repo_of(redis_client, target, wiki)
    with subtests.test("the snapshot holds the dumps and included volumes only"):
        paths = backups.listing(repo)
        assert "srv/state/environment" in paths or "state/environment" in paths
        joined = "\n".join(paths)
        assert "state/wiki-dump.sqlite" in joined and "state/wiki_settings.dump" in joined
        assert "volumes/pages/" in joined and "volumes/db/wiki.db" in joined
        assert "volumes/cache" not in joined, "cache is not in state-include.conf"
        assert ".tmp" not in joined, "excluded by state-exclude.conf"
        assert backups.restic(repo, "check").returncode == 0

    with subtests.test("the backup status"):
        status = backups.status(redis_client, 1, 1, wiki)
        assert status["outcome"] == "ok" and status["errors"] == 0
        assert status["total_file_count"] > 200 and status["total_size"] > 2_000_000
        assert status["snapshots_count"] == 1 and status["snapshot_id"]
    with subtests.test("the module's cleanup ran"):
        state = cluster.nodes[1].settings.state_dir(f"module/{wiki}")
        assert (state / "cleanup-ran").read_text().strip() == "1"
        assert not (state / "wiki-dump.sqlite").exists(), "cleanup removed the dump"
    with subtests.test("the repository's metadata file"):
        meta = json.loads((repo.parent / f"{repo.name}.json").read_text())
        assert meta["module_id"] == wiki and meta["outcome"] == "ok" and meta["success"] is True
    with subtests.test("the node_exporter metrics"):
        prom = cluster.nodes[1].settings.state_dir("node/1") / "node_exporter" / "backup1.prom"
        text = prom.read_text()
        assert 'node_backup_status{id="1",name="Backup 1"} 1' in text
        assert f'node_backup_files{{id="1",name="Backup 1",module="{wiki}"}}' in text


def test_perf_contract_container_starts_per_module_are_as_few_as_the_flow_allows(
    cluster: ClusterHarness, redis_client: redis.Redis, wiki: str, tmp_path: Path
) -> None:
    """NS8 starts four per module (snapshots, backup, stats, forget). Here: the backup,
    plus forget --prune only when the snapshots could exceed keep-last; the first run also
    creates the repository (a failed first attempt, init). A run with no count to trust
    lists the snapshots beside the backup, unless the local repository has none at all."""
    import os
    import subprocess
    import sys

    target = tmp_path / "backups"
    target.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{target}")
    backups.add_backup(redis_client, 1, destination, [wiki], retention=2)
    node = cluster.nodes[1]
    argv_log = tmp_path / "argv.log"
    runagent = str(Path(sys.executable).parent / "runagent")

    def containers_of_one_run() -> list[list[str]]:
        argv_log.unlink(missing_ok=True)
        env = {**node.env(), "AGENT_ARGV_LOG": str(argv_log)}
        done = subprocess.run(
            [runagent, "-m", "node", "run-backup", "--backup=1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return podman_runs(argv_log)

    first = containers_of_one_run()
    kinds = ("snapshots", "backup", "init", "forget")
    # No count from an earlier run, but no repository either: nothing to list.
    assert [next(a for a in kinds if a in argv) for argv in first] == ["backup", "init", "backup"]
    assert [("forget" in argv) for argv in containers_of_one_run()] == [False]  # 2 of 2 kept
    assert [("forget" in argv) for argv in containers_of_one_run()] == [False, True]  # 3 > 2
    assert (
        len(
            backups.snapshots(
                target / "minwiki" / str(redis_client.hget("cluster/module_uuid", wiki))
            )
        )
        == 2
    )
    assert backups.status(redis_client, 1, 1, wiki)["snapshots_count"] == 2

    # No status to trust (a restored module, say): the listing (threads: it may start
    # before or after the backup) finds the 2 already there, so forget runs and the count
    # stays the repository's own.
    redis_client.hdel(redis_keys.backup_status(1, 1), wiki)
    again = containers_of_one_run()
    assert sorted(next(a for a in kinds if a in argv) for argv in again) == [
        "backup",
        "forget",
        "snapshots",
    ]
    assert backups.status(redis_client, 1, 1, wiki)["snapshots_count"] == 2
    assert os.path.exists(
        target / "minwiki" / f"{redis_client.hget('cluster/module_uuid', wiki)}.json"
    )
