"""The node's own commands, as an operator types them."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from agent.adapters import podman_store


def test_cluster_env_points_plain_podman_at_the_node_store(tmp_path: Path) -> None:
    agent = [sys.executable, "-m", "agent.cli"]
    root = tmp_path / "node"
    init = [*agent, "cluster", "init", "--private-storage", "--root", str(root)]
    subprocess.run(init, check=True, capture_output=True)
    printed = subprocess.run(
        [*agent, "cluster", "env", "--root", str(root)], check=True, capture_output=True, text=True
    ).stdout
    exports = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in printed.splitlines()
    )
    store = podman_store.Store(root)
    assert exports == {"AGENT_ROOT": str(root), **store.env()}
