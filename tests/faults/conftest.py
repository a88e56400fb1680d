"""Fault-injection tests run on the integration fixtures: real daemons, Redis, podman."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import audited, cluster, minwiki_image, wiki  # noqa: F401
from tests.integration.test_restore_cases import hooked_image  # noqa: F401
from tests.support.embedded_node import EmbeddedNode


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EmbeddedNode]:
    """A node as `agent cluster init --private-storage` and `agent cluster up` make it."""
    embedded = EmbeddedNode(tmp_path / "node1")
    try:
        init = embedded.agent("cluster", "init", "--private-storage", "--local-root", str(tmp_path))
        assert init.returncode == 0, init.stderr
        up = embedded.agent("cluster", "up")
        assert up.returncode == 0, up.stderr
        yield embedded
    finally:
        embedded.down()
