"""A systemd test node: the containers/node image booted with podman --systemd=always.

The agent inside runs this working tree: the repo, its venv and the Python the venv points
to are bind-mounted at the same paths. Node data dirs live under `SystemdNode.base`,
bind-mounted at the same path too, so the volume paths the agent gives podman mean the same
on both sides. podman inside the node is a remote client of this worker's podman service
(its socket is mounted at /run/host-podman/podman.sock; the image sets CONTAINER_HOST for
every unit), so restic containers run next to the node, not nested in it; the volume
directory of the session's podman store is mounted at its own path so module hooks reach
a volume's mountpoint.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.adapters import podman_store
from tests.conftest import REPO_ROOT, build_image, xdist_worker_id
from tests.integration.conftest import minwiki_image  # noqa: F401  (shared fixture)

UNIT_DIR_IN_NODE = "/usr/local/lib/systemd/system"  # on systemd's search path, empty


@dataclass(frozen=True)
class SystemdNode:
    name: str
    base: Path  # same path inside and outside: node data dirs go here
    unit_dir: Path  # host dir mounted at UNIT_DIR_IN_NODE

    @property
    def systemctl(self) -> str:
        return f"podman exec {self.name} systemctl"

    def exec(
        self, *argv: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", "exec", "-i", self.name, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} exited {done.returncode}:\n{done.stderr}")
        return done

    def show(self, unit: str, *props: str) -> dict[str, str]:
        args = [arg for prop in props for arg in ("-p", prop)]
        text = self.exec("systemctl", "show", *args, unit).stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def wait_for(self, what: str, predicate: object, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                journal = self.exec("journalctl", "--no-pager", "-n", "60", check=False).stdout
                raise AssertionError(f"timed out waiting for {what}; journal:\n{journal}")
            time.sleep(0.25)


@pytest.fixture(scope="session")
def node_image() -> str:
    """The systemd node image, built on first use (~40 s, cached as an image)."""
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        pytest.skip("the systemd node needs podman and debootstrap")
    return build_image("node")


@pytest.fixture(scope="session")
def systemd_node(
    node_image: str, podman_service: str, session_podman_store: podman_store.Store | None
) -> Iterator[SystemdNode]:
    """One booted systemd node per xdist worker."""
    assert session_podman_store is not None  # node_image has skipped without podman
    volumes = session_podman_store.volumes
    volumes.mkdir(parents=True, exist_ok=True)  # podman makes it on first use: maybe later
    python = Path(sys.executable).resolve()
    base_prefix = Path(sys.base_prefix)
    base = Path(tempfile.mkdtemp(prefix=f"backup-agent-node-{xdist_worker_id()}-"))
    unit_dir = base / "units"
    unit_dir.mkdir()
    socket_dir = Path(podman_service.removeprefix("unix://")).parent
    name = f"backup-agent-node-{xdist_worker_id()}-{base.name.rsplit('-', 1)[-1]}"
    mounts = [
        f"{REPO_ROOT}:{REPO_ROOT}",
        f"{base_prefix}:{base_prefix}:ro",
        f"{base}:{base}",
        f"{unit_dir}:{UNIT_DIR_IN_NODE}",
        f"{socket_dir}:/run/host-podman",
        # Volumes live in the session's podman store; their mountpoints must resolve in the
        # node.
        f"{volumes}:{volumes}",
    ]
    if not str(python).startswith((str(REPO_ROOT), str(base_prefix))):
        pytest.skip(f"cannot mount this Python ({python}) into the node")
    argv = ["podman", "run", "-d", "--name", name, "--systemd=always", "--network=host"]
    argv += [arg for mount in mounts for arg in ("-v", mount)]
    node = SystemdNode(name, base, unit_dir)
    try:
        started = subprocess.run([*argv, node_image], capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            pytest.fail(f"the systemd node did not start:\n{started.stderr}", pytrace=False)
        node.wait_for(
            "systemd to boot",
            lambda: (
                node.exec("systemctl", "is-system-running", check=False).stdout.strip()
                in ("running", "degraded")
            ),
        )
        yield node
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "2", name], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
