"""A whole restore across nodes through the storage gateway, with the real daemons, podman
and restic (#16 items 3 and 5): a `local:` disk that node 2 may not read (it is outside
node 2's local roots, as a disk attached to node 1 only is) is restored on node 2 through
node 1's gateway; with node 1's gateway stopped the restore fails, naming it, and node 2's
own destination is still served. (Separate root filesystems: tests/e2e/test_gateway_nodes.py.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from agent.adapters import gateway
from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.operations.verify_restore import verify
from agent.runtime.agentenv import read_env_file
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.gateway_nodes import wiki_backed_up_on_node_1

pytestmark = pytest.mark.podman


def test_a_disk_only_node_1_reads_is_restored_on_node_2_through_its_gateway(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    node1 = cluster.nodes[1]
    setup = wiki_backed_up_on_node_1(cluster, redis_client, minwiki_image, tmp_path)
    node2, wiki, destination, path = setup.node2, setup.wiki, setup.destination, setup.path

    restored = cluster.api_ok(
        "cluster/restore-module",
        {"node": 2, "repository": destination, "path": path, "snapshot": ""},
    )
    copy = restored["module_id"]
    assert redis_client.hget(redis_keys.MODULE_NODE, copy) == "2"
    nodes = {n: node.settings for n, node in cluster.nodes.items()}
    result = verify(connect(cluster.redis_url), nodes, wiki, copy)
    assert result["ok"], result["differences"]
    assert result["compared"]["files"] > 200
    # The grant the node wrote for the restore is gone with it.
    assert redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, copy) is None

    # Node 2's own disk: a repository of the restored module there, through node 2's gateway.
    own = f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, copy)}"
    node2_disk = tmp_path / "node2-disk"  # node 2's local root (wiki_backed_up_on_node_1)
    node2_destination = backups.add_destination(redis_client, "local", f"local:{node2_disk}")
    env = dict(
        os.environ, RESTIC_PASSWORD=backups.PASSWORD, RESTIC_REPOSITORY=str(node2_disk / own)
    )
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True, timeout=60)
    credentials = gateway.Credentials.from_env(
        read_env_file(node2.settings.state_dir(f"module/{copy}") / "agent.env")
    )

    gateway.stop_node_gateway(node1.settings)
    code, _, error = cluster.api_json(
        "cluster/restore-module",
        {"node": 2, "repository": destination, "path": path, "snapshot": ""},
        timeout=300,
    )
    assert code != 0
    assert f"node 1's gateway at {node1.settings.gateway_listen[0]} does not answer" in error
    found = gateway.module_restic_target(redis_client, 2, credentials, node2_destination, own)
    assert found.node_id == 2
