"""Systemd test nodes: the containers/node image booted with podman --systemd=always.

The agent inside runs this working tree: the repo, its venv and the Python the venv points
to are bind-mounted at the same paths. Node data dirs live under `SystemdNode.base`,
bind-mounted at the same path too, so the volume paths the agent gives podman mean the same
on both sides. podman inside the node is a remote client of this worker's podman service
(its socket is mounted at /run/host-podman/podman.sock; the image sets CONTAINER_HOST for
every unit), so restic containers run next to the node, not nested in it; the volume
directory of the session's podman store is mounted at its own path so module hooks reach
a volume's mountpoint.

`own_podman_node` boots the same image privileged with podman of its own (root's store and
rootless modules' stores inside it), as a real node runs: images are loaded into it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.adapters import podman_store, systemd
from agent.core.settings import Settings, write_settings
from agent.operations.cluster_setup import init
from tests.conftest import CONTAINERS_CONF, REPO_ROOT, build_image, xdist_worker_id
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
    """One booted systemd node per xdist worker, its podman a client of this worker's."""
    assert session_podman_store is not None  # node_image has skipped without podman
    volumes = session_podman_store.volumes
    volumes.mkdir(parents=True, exist_ok=True)  # podman makes it on first use: maybe later
    socket_dir = Path(podman_service.removeprefix("unix://")).parent
    mounts = [
        f"{socket_dir}:/run/host-podman",
        # Volumes live in the session's podman store; their mountpoints must resolve in the
        # node.
        f"{volumes}:{volumes}",
    ]
    with booted_node(node_image, "node", mounts, []) as node:
        yield node


# The image's drop-in that points every unit's podman at the host's service: an empty file
# over it leaves CONTAINER_HOST unset, so podman in the node is its own.
HOST_PODMAN_DROP_IN = "/etc/systemd/system.conf.d/10-host-podman.conf"


@pytest.fixture(scope="session")
def own_podman_node(
    node_image: str, session_podman_store: podman_store.Store | None
) -> Iterator[SystemdNode]:
    """One booted systemd node per xdist worker with podman of its own (privileged): root's
    store and rootless modules' stores live inside it, as on a real node. rclone, which
    a node needs (setup-host installs it) and the image lacks, is this machine's binary."""
    assert session_podman_store is not None  # node_image has skipped without podman
    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.skip("a node serves rootless modules' repositories with rclone")
    empty = Path(tempfile.mkdtemp(prefix="backup-agent-node-conf-")) / "empty.conf"
    empty.touch()
    mounts = [
        f"{empty}:{HOST_PODMAN_DROP_IN}:ro",
        f"{CONTAINERS_CONF}:/etc/containers/containers.conf:ro",
        f"{Path(rclone).resolve()}:/usr/bin/rclone:ro",
    ]
    try:
        with booted_node(node_image, "ownpodman", mounts, ["--privileged"]) as node:
            # What scripts/setup does on a machine: module users run this Python, so the
            # node's directories above it (its /root is 0700) must let them pass.
            above = {str(parent) for parent in Path(sys.base_prefix).parents}
            above |= {str(parent) for parent in REPO_ROOT.parents}
            node.exec("chmod", "o+x", *sorted(above))
            yield node
    finally:
        shutil.rmtree(empty.parent, ignore_errors=True)


@contextlib.contextmanager
def booted_node(
    node_image: str, kind: str, mounts: list[str], options: list[str]
) -> Iterator[SystemdNode]:
    """The node image booted with this Python, the repo and a fresh base dir mounted at
    their own paths, plus mounts and podman run options; removed with its base dir."""
    python = Path(sys.executable).resolve()
    base_prefix = Path(sys.base_prefix)
    if not str(python).startswith((str(REPO_ROOT), str(base_prefix))):
        pytest.skip(f"cannot mount this Python ({python}) into the node")
    base = Path(tempfile.mkdtemp(prefix=f"backup-agent-{kind}-{xdist_worker_id()}-"))
    unit_dir = base / "units"
    unit_dir.mkdir()
    name = f"backup-agent-{kind}-{xdist_worker_id()}-{base.name.rsplit('-', 1)[-1]}"
    mounts = [
        f"{REPO_ROOT}:{REPO_ROOT}",
        f"{base_prefix}:{base_prefix}:ro",
        f"{base}:{base}",
        f"{unit_dir}:{UNIT_DIR_IN_NODE}",
        *mounts,
    ]
    argv = ["podman", "run", "-d", "--name", name, "--systemd=always", "--network=host"]
    argv += [*options, *(arg for mount in mounts for arg in ("-v", mount))]
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


BIN = Path(sys.executable).parent


def node_api(settings: Settings, action: str, data: Any, timeout: float = 600) -> Any:
    """`api-cli run action` against the node whose settings these are; its JSON output."""
    done = subprocess.run(
        [str(BIN / "api-cli"), "run", action, "--data", json.dumps(data)],
        env={"AGENT_ROOT": str(settings.root), "PATH": f"{BIN}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


@contextlib.contextmanager
def node_agent_service(
    node: SystemdNode, redis_client: redis.Redis, redis_url: str
) -> Iterator[Settings]:
    """Node 1's daemon running as agent.service inside node, its data dir under the node's
    base dir; its timers and their units are gone afterwards."""
    settings = init(
        node.base / f"node-{uuid.uuid4().hex[:8]}",
        1,
        redis_url,
        local_roots=(str(node.base),),  # the tests keep their repositories there
    )
    settings = replace(settings, timer_random_delay=0)  # fire on the second in tests
    write_settings(settings)
    unit = systemd.render_agent_service(
        str(BIN / "agent"), str(settings.root), REPO_ROOT / "systemd", shutdown_timeout=10
    )
    node.exec("sh", "-c", "cat >/etc/systemd/system/agent.service", input=unit)
    node.exec("systemctl", "daemon-reload")
    node.exec("systemctl", "start", "agent.service")
    node.wait_for("the daemon's lease", lambda: redis_client.exists("node/1/daemon"))
    try:
        yield settings
    finally:
        node.exec("systemctl", "stop", "agent.service", check=False)
        node.exec(
            "sh", "-c", "systemctl disable --now 'backup*.timer'; rm -f "
            "/etc/systemd/system/backup*.timer /etc/systemd/system/backup*.service "
            "/var/lib/systemd/timers/stamp-backup*; systemctl daemon-reload; "
            "systemctl reset-failed",
            check=False,
        )  # fmt: skip
