"""SIGKILL mid-restore, of restic or of the module's restore step: the restore fails and
says so, the repository is as it was, Redis keeps no ghost of the half-made instance, the
node keeps no container, lock, volume or directory of it, and the same snapshot then
restores byte for byte.

restic is slowed where the kill must strike mid-restore: the image's restic with
`--limit-download` (through the node's restic_podman_args), on a few MB of fresh data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.operations.verify_restore import verify
from tests.faults.test_backup_faults import (
    lock_files,
    node_env,
    podman_client_parent,
    restic_containers,
    set_option,
    volume_names,
    wait_for,
)
from tests.faults.test_restore_faults import assert_settled
from tests.integration.test_restore_cases import setup_wiki
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.stalls import API_CLI

pytestmark = pytest.mark.podman
# The image's restic, reading at 64 KiB/s: 2 MB of data take half a minute to restore.
SLOW_RESTORE = ['--entrypoint=["/usr/bin/restic","--limit-download=64"]']


def kill_restic(env: dict[str, str]) -> None:
    for name in restic_containers(env):
        subprocess.run(["podman", "kill", "--signal=KILL", name], env=env, capture_output=True)


def kill_step(env: dict[str, str]) -> None:
    """SIGKILL the restore-module step that started restic (its podman client's parent)."""
    os.kill(podman_client_parent(restic_containers(env)[0]), signal.SIGKILL)


@pytest.mark.parametrize("victim", ["restic", "step"])
def test_sigkill_mid_restore_fails_cleanly_and_the_snapshot_restores_again(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
    victim: str,
) -> None:
    env = node_env(cluster)
    wiki, destination, path = setup_wiki(cluster, redis_client, minwiki_image, tmp_path / "dest")
    (cluster.volume_dir(1, wiki, "pages") / "big.bin").write_bytes(os.urandom(2 << 20))
    cluster.api_ok("run-backup", {"id": 1})
    repo = tmp_path / "dest" / path
    snapshots = backups.snapshots(repo)
    volumes_before = volume_names(env)
    set_option(cluster, restic_podman_args=SLOW_RESTORE)
    request = {"repository": destination, "path": path, "snapshot": "", "node": 1}
    client = subprocess.Popen(
        [API_CLI, "run", "cluster/restore-module", "--data", json.dumps(request)],
        env=cluster.nodes[1].env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: lock_files(repo) and restic_containers(env), "restic restore started")
        [copy] = set(redis_client.hkeys("cluster/module_node")) - {wiki}
        (kill_restic if victim == "restic" else kill_step)(env)
        out, err = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()

    # What was recorded: the restore failed and says the half-made instance went.
    assert client.returncode == 1, (out, err)
    assert f"{copy} removed" in err, err
    [task_id] = [
        key.split("/")[2]
        for key in redis_client.keys("task/cluster/*/context")
        if json.loads(redis_client.get(key))["action"] == "restore-module"
    ]
    assert redis_client.get(f"task/cluster/{task_id}/exit_code") == "1"
    # Redis and the node: no ghost, no claimed task, lease, lock, container or volume.
    assert_settled(cluster, redis_client, {wiki})
    assert not (cluster.nodes[1].root / "modules" / copy).exists()
    assert volume_names(env) == volumes_before
    assert restic_containers(env) == []
    # The repository: as it was, sound, unlocked.
    assert lock_files(repo) == []
    assert backups.snapshots(repo) == snapshots
    backups.restic(repo, "check")

    set_option(cluster, restic_podman_args=[])
    again = cluster.api_ok("cluster/restore-module", request)["module_id"]
    nodes = {n: node.settings for n, node in cluster.nodes.items()}
    report = verify(connect(cluster.redis_url), nodes, wiki, again)
    assert report["ok"], report["differences"]
    assert restic_containers(env) == [] and lock_files(repo) == []
