"""Node-side restic reaches a `local:` disk that only another node holds through that
node's storage gateway, with the node's own credentials (#16 item 5): node 2 may not read
node 1's disk (outside its local roots, as a disk attached to node 1 only is), yet its
restore-files reads the snapshot there. (Separate root filesystems, with a whole restore:
tests/e2e/test_gateway_nodes.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from agent.adapters import gateway
from agent.core import redis_keys
from tests.support.cluster import ClusterHarness
from tests.support.gateway_nodes import wiki_backed_up_on_node_1

pytestmark = pytest.mark.podman


def test_node_2_reads_a_disk_only_node_1_has_through_node_1_s_gateway(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    node1 = cluster.nodes[1]
    setup = wiki_backed_up_on_node_1(cluster, redis_client, minwiki_image, tmp_path)
    node2, wiki, destination, path = setup.node2, setup.wiki, setup.destination, setup.path

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
