"""Two test nodes on one filesystem where node 2 may not read node 1's disk (it is outside
node 2's local roots, as a disk attached to node 1 only is): what node 2 reads there goes
through node 1's storage gateway."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from agent.adapters import gateway
from agent.core import redis_keys
from agent.core.settings import write_settings
from tests.support import backups
from tests.support.cluster import ClusterHarness, NodeHarness


def restart_with(node: NodeHarness, **changes: object) -> None:
    """Restart node with its settings changed, once its gateway answers again."""
    node.stop()
    node.settings = dataclasses.replace(node.settings, **changes)  # type: ignore[arg-type]
    write_settings(node.settings)
    node.start()
    deadline = time.monotonic() + 60
    while not gateway.answers(node.settings.gateway_listen[0]):
        assert time.monotonic() < deadline, f"node {node.node_id}'s gateway did not start"
        time.sleep(0.1)


@dataclass(frozen=True)
class WikiOnNode1:
    node2: NodeHarness
    wiki: str  # the module on node 1
    destination: str  # local: node 1's disk, outside node 2's local roots
    path: str  # the module's repository path there


def wiki_backed_up_on_node_1(
    cluster: ClusterHarness, redis_client: redis.Redis, image: str, tmp_path: Path
) -> WikiOnNode1:
    """Node 1 reachable by its gateway's cluster address, node 2 with a local root of its
    own, and a module of image on node 1 backed up to a disk of node 1's."""
    node1 = cluster.nodes[1]
    # Other nodes reach node 1's gateway at its (here: loopback) cluster address.
    restart_with(node1, gateway_address=node1.settings.gateway_listen[0])
    node2_disk = tmp_path / "node2-disk"
    node2_disk.mkdir()
    node2 = cluster.add_node(2, start=False)
    restart_with(node2, local_roots=(str(node2_disk),))

    wiki = cluster.api_ok("add-module", {"image": image, "node": 1})["module_id"]
    disk = tmp_path / "node1-disk"
    disk.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{disk}")
    backups.add_backup(redis_client, 1, destination, [wiki])
    cluster.api_ok("run-backup", {"id": 1})
    path = f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, wiki)}"
    return WikiOnNode1(node2, wiki, destination, path)
