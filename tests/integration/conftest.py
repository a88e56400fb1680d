"""Fixtures for tests that run real daemons against the shared test Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.cluster import ClusterHarness


@pytest.fixture
def cluster(tmp_path: Path, redis_client: redis.Redis, redis_url: str) -> Iterator[ClusterHarness]:
    """A one-node cluster whose daemon is running; more nodes via cluster.add_node(N)."""
    test_cluster = ClusterHarness(tmp_path, redis_url)
    test_cluster.add_node(1)
    try:
        yield test_cluster
    finally:
        test_cluster.stop()


@pytest.fixture(scope="session")
def minwiki_image() -> str:
    """The sample module's image, built on first use (a FROM scratch image, under a second)."""
    import subprocess

    from tests.conftest import REPO_ROOT, file_lock

    with file_lock("build-minwiki"):
        done = subprocess.run(
            [str(REPO_ROOT / "examples" / "minwiki" / "build")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if done.returncode != 0:
        pytest.fail(f"building the sample module failed:\n{done.stderr}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def wiki(cluster: ClusterHarness, minwiki_image: str, restic_image: str) -> str:
    """A sample module installed on node 1 of the cluster; returns its module id."""
    code, output, stderr = cluster.api_json("add-module", {"image": minwiki_image, "node": 1})
    assert code == 0, stderr
    return str(output["module_id"])


@pytest.fixture
def audited(
    cluster: ClusterHarness, tmp_path: Path, restic_image: str
) -> tuple[ClusterHarness, Path]:
    """The one-node cluster, its daemon restarted to log every argv it runs (and the log)."""
    argv_log = tmp_path / "argv.log"
    cluster.nodes[1].stop()
    cluster.nodes[1].extra_env["AGENT_ARGV_LOG"] = str(argv_log)
    cluster.nodes[1].start()
    return cluster, argv_log
