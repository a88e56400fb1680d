"""Node-side restic reaches a `local:` disk that only another node holds through that
node's storage gateway, with the node's own credentials (#16 item 5): node 2 may not read
node 1's disk (outside its local roots, as a disk attached to node 1 only is), yet its
restore-files reads the snapshot there. (Separate root filesystems, with a whole restore:
tests/e2e/test_gateway_nodes.py.)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import redis

from agent.adapters import gateway
from agent.core import redis_keys
from agent.core.settings import write_settings
from tests.support import backups
from tests.support.cluster import ClusterHarness, NodeHarness

pytestmark = pytest.mark.podman


def _restart_with(node: NodeHarness, **changes: object) -> None:
    node.stop()
    node.settings = dataclasses.replace(node.settings, **changes)  # type: ignore[arg-type]
    write_settings(node.settings)
    node.start()
    deadline = time.monotonic() + 60
    while not gateway.answers(node.settings.gateway_listen[0]):
        assert time.monotonic() < deadline, f"node {node.node_id}'s gateway did not start"
        time.sleep(0.1)


def test_node_2_reads_a_disk_only_node_1_has_through_node_1_s_gateway(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    node1 = cluster.nodes[1]
    _restart_with(node1, gateway_address=node1.settings.gateway_listen[0])
    node2_disk = tmp_path / "node2-disk"
    node2_disk.mkdir()
    node2 = cluster.add_node(2, start=False)
    _restart_with(node2, local_roots=(str(node2_disk),))

    wiki = cluster.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"]
    disk = tmp_path / "node1-disk"
    disk.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{disk}")
    backups.add_backup(redis_client, 1, destination, [wiki])
    cluster.api_ok("run-backup", {"id": 1})
    path = f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, wiki)}"

    picked = node2.root / "restored" / "picked"  # a restore-files root of node 2
    request = {
        "repository": destination,
        "path": path,
        "snapshot": "",
        "target": str(picked),
        "paths": ["state/wiki.env", "volumes/pages"],
    }
    done = cluster.api_ok("node/2/restore-files", request)
    assert done["files_restored"] > 200
    state = node1.settings.state_dir(redis_keys.module_agent(wiki)) / "wiki.env"
    assert (picked / "state" / "wiki.env").read_bytes() == state.read_bytes()
    pages = cluster.volume_dir(1, wiki, "pages")
    page = next(p for p in sorted(pages.rglob("*.md")) if p.is_file())
    assert (
        picked / "volumes" / "pages" / page.relative_to(pages)
    ).read_bytes() == page.read_bytes()

    gateway.stop_node_gateway(node1.settings)
    code, _, error = cluster.api_json(
        "node/2/restore-files", {**request, "target": str(picked.with_name("again"))}, timeout=300
    )
    assert code != 0
    assert f"node 1's gateway at {node1.settings.gateway_listen[0]} does not answer" in error
    assert not picked.with_name("again").exists()
