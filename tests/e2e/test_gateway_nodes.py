"""Two nodes with filesystems and podman of their own, one Redis: a module backed up on
node 1 to a `local:` disk only node 1 has is restored on node 2 through node 1's storage
gateway, by the real daemons (#16 item 5).

Each node is a privileged container of the node image with its own rootfs, its own podman
(its own store; the restic and module images loaded into it) and its own tmpfs disk at
/srv/disk, so the same destination, `local:/srv/disk`, holds different data on each. The
working tree's Python and the host's rclone are bind-mounted, and the nodes share the
host's network: the test's Redis and each other's gateway. Each node runs `agent serve`,
which starts its gateway. Node 2 is the leader, so the cluster's steps (listing the
destination's repositories, reading the snapshot's environment, finding the repository)
run on node 2, as does the module's own restore step: each must reach node 1's disk
through node 1's gateway (restic REST, or WebDAV for the listing).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.adapters import gateway
from agent.core import redis_keys
from agent.core.settings import Settings, write_settings
from agent.operations import cluster_setup
from tests.conftest import (
    CONTAINERS_CONF,
    REPO_ROOT,
    build_image,
    free_port,
    host_podman_env,
    xdist_worker_id,
)
from tests.support import backups

# Three restores, two backups and two node start-ups: minutes on a loaded machine.
pytestmark = [pytest.mark.podman, pytest.mark.timeout(1500)]

VENV_BIN = Path(sys.executable).parent
LEADER = 2
# The module's restore writes wiki.db anew from its consistent dump (30restore_db): its
# rows are compared, every other file the backup holds byte for byte.
SQL_DUMP = "import sqlite3, sys; print('\\n'.join(sqlite3.connect(sys.argv[1]).iterdump()))"


@dataclass
class Node:
    name: str
    settings: Settings

    @property
    def node_id(self) -> int:
        return self.settings.node_id

    @property
    def address(self) -> str:
        return self.settings.gateway_listen[0]

    def run(self, *argv: str, check: bool = True, timeout: float = 300) -> str:
        done = subprocess.run(
            ["podman", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} on node {self.node_id}: {done.stderr}")
        return done.stdout

    def agent_env(self) -> list[str]:
        path = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return [f"AGENT_ROOT={self.settings.root}", f"PATH={path}"]

    @property
    def daemon_pid_file(self) -> Path:
        return self.settings.root / "test-daemon.pid"  # the test's: `agent serve` writes none

    def start_daemon(self) -> None:
        log = self.settings.log_dir / "agent.log"
        serve = f"echo $$ > {self.daemon_pid_file}; exec {VENV_BIN}/python -m agent.cli serve"
        serve += f" --shutdown-timeout 10 >>{log} 2>&1"
        env = [arg for pair in self.agent_env() for arg in ("--env", pair)]
        subprocess.run(
            ["podman", "exec", "--detach", *env, self.name, "sh", "-c", serve],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop_daemon(self) -> None:
        """SIGTERM the daemon (it stops its gateway) and wait until it is gone."""
        path = self.daemon_pid_file
        pid = path.read_text().strip() if path.exists() else ""
        if pid.isdigit():
            self.run("kill", "-TERM", pid, check=False, timeout=30)
            wait_until(
                f"node {self.node_id}'s daemon to stop",
                lambda: not self.alive(pid),
                timeout=90,
            )

    def alive(self, pid: str) -> bool:
        done = subprocess.run(
            ["podman", "exec", self.name, "kill", "-0", pid],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def stop_gateway(self) -> None:
        pid = (self.settings.run_dir / gateway.PID_FILE).read_text().strip()
        self.run("kill", "-TERM", pid)
        wait_until(
            f"node {self.node_id}'s gateway to stop", lambda: not gateway.answers(self.address)
        )

    def mountpoint(self, module_id: str, volume: str) -> str:
        return self.run(
            "podman", "volume", "inspect", "--format", "{{.Mountpoint}}", f"{module_id}-{volume}"
        ).strip()

    def wiki_rows(self, module_id: str) -> str:
        database = f"{self.mountpoint(module_id, 'db')}/wiki.db"
        return self.run(f"{VENV_BIN}/python", "-c", SQL_DUMP, database)

    def wiki_state(self, module_id: str) -> bytes:
        return (
            self.settings.state_dir(redis_keys.module_agent(module_id)) / "wiki.env"
        ).read_bytes()

    def volume_files(self, module_id: str, volume: str) -> dict[str, str]:
        """path → type, mode, owner and (files) sha256 or (links) target, of every entry
        in the module's volume on this node."""
        mountpoint = self.mountpoint(module_id, volume)
        script = (
            'cd "$1" && find . -mindepth 1 -printf "%P %y %m %U:%G %l\\n" | sort'
            " && find . -type f -print0 | sort -z | xargs -0 -r sha256sum"
        )
        listing = self.run("sh", "-c", script, "sh", mountpoint)
        entries: dict[str, str] = {}
        for line in listing.splitlines():
            if "  ./" in line:  # sha256sum: "<hash>  ./<path>"
                digest, path = line.split("  ./", 1)
                entries[path] += f" {digest}"
            else:
                path, rest = line.split(" ", 1)
                entries[path] = rest
        return entries


@dataclass
class TwoNodes:
    nodes: dict[int, Node]
    redis_url: str

    def api(self, action: str, data: Any, timeout: float = 600) -> tuple[int, Any, str]:
        """api-cli on the host, as node 1's operator runs it (its agent.json, its user)."""
        done = subprocess.run(
            [str(VENV_BIN / "api-cli"), "run", action, "--data", json.dumps(data)],
            env=dict(os.environ, AGENT_ROOT=str(self.nodes[1].settings.root)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = json.loads(done.stdout) if done.stdout.strip() else None
        return done.returncode, output, done.stderr

    def api_ok(self, action: str, data: Any) -> Any:
        code, output, stderr = self.api(action, data)
        if code != 0:
            logs = {n: node.settings.log_dir / "agent.log" for n, node in self.nodes.items()}
            tails = "\n".join(
                f"--- node {n}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:])
                for n, path in logs.items()
                if path.exists()
            )
            raise AssertionError(f"{action} exited {code}: {output} {stderr}\n{tails}")
        return output


def wait_until(what: str, condition: Callable[[], object], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _start_node(node_id: int, base: Path, redis_url: str, image: str, started: list[str]) -> Node:
    """Node node_id's data dir (in base) and container; its name is in started as soon
    as the container may exist."""
    settings = cluster_setup.init(
        base / f"node{node_id}", node_id, redis_url, local_roots=("/srv",)
    )
    # Both nodes share the host's loopback: each one's gateway is the other's cluster address.
    address = f"127.0.0.1:{free_port()}"
    settings = replace(settings, gateway_listen=(address,), gateway_address=address)
    write_settings(settings)
    name = f"backup-agent-twonode{node_id}-{base.name.rsplit('-', 1)[-1]}"
    empty = base / "empty"
    empty.touch()
    mounts = [
        f"{REPO_ROOT}:{REPO_ROOT}",
        f"{sys.base_prefix}:{sys.base_prefix}:ro",
        f"{base}:{base}",
        "/usr/bin/rclone:/usr/bin/rclone:ro",
        f"{CONTAINERS_CONF}:/etc/containers/containers.conf:ro",
        # The image points its podman at the host's; these nodes have their own.
        f"{empty}:/etc/systemd/system.conf.d/10-host-podman.conf:ro",
    ]
    disks = ["--tmpfs", "/srv/disk"] + (["--tmpfs", "/srv/other"] if node_id == 2 else [])
    argv = ["podman", "run", "--detach", "--rm", "--privileged", "--network=host"]
    argv += ["--name", name, *disks, *(arg for mount in mounts for arg in ("--volume", mount))]
    argv += ["--entrypoint", "/usr/bin/sleep", image, "infinity"]
    started.append(name)
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return Node(name, settings)


@pytest.fixture
def two_nodes(
    redis_client: redis.Redis, redis_url: str, minwiki_image: str, restic_image: str
) -> Iterator[TwoNodes]:
    if shutil.which("podman") is None or shutil.which("rclone") is None:
        pytest.skip("needs podman and rclone on the host")
    image = build_image("node")
    base = Path(tempfile.mkdtemp(prefix=f"backup-agent-twonode-{xdist_worker_id()}-"))
    images = base / "images.tar"
    wanted = [restic_image, minwiki_image]
    subprocess.run(
        ["podman", "save", "--multi-image-archive", "--output", str(images), *wanted],
        env=host_podman_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Node 2 leads: cluster tasks (the restore's reading of the repository) run there.
    redis_client.hset(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID", str(LEADER))
    nodes: dict[int, Node] = {}
    started: list[str] = []
    try:
        for node_id in (1, 2):
            nodes[node_id] = _start_node(node_id, base, redis_url, image, started)
        for node in nodes.values():
            node.run("podman", "load", "--input", str(images))
            node.start_daemon()
        for node in nodes.values():
            wait_until(
                f"node {node.node_id}'s daemon and gateway",
                lambda node=node: (
                    redis_client.exists(redis_keys.node_daemon_lease(node.node_id))
                    and gateway.answers(node.address)
                ),
            )
        yield TwoNodes(nodes, redis_url)
    finally:
        for node in nodes.values():
            # Removing the node below ends what a failed stop leaves.
            with contextlib.suppress(AssertionError, OSError, subprocess.SubprocessError):
                node.stop_daemon()
        for name in started:
            subprocess.run(
                ["podman", "rm", "-f", "-t", "5", name], capture_output=True, timeout=120
            )
        # The agents' Redis users outlive FLUSHALL: drop the ones this test made.
        for user in redis_client.hkeys(redis_keys.CLUSTER_ACLS):
            redis_client.execute_command("ACL", "DELUSER", user)
        shutil.rmtree(base, ignore_errors=True)


def test_a_module_on_node_1_s_disk_is_restored_on_node_2_through_node_1_s_gateway(
    two_nodes: TwoNodes,
    redis_client: redis.Redis,
    minwiki_image: str,
    subtests: pytest.Subtests,
) -> None:
    node1, node2 = two_nodes.nodes[1], two_nodes.nodes[2]
    wiki = two_nodes.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"]
    disk = backups.add_destination(redis_client, "local", "local:/srv/disk")
    only_node2 = backups.add_destination(redis_client, "local", "local:/srv/other")
    backups.add_backup(redis_client, 1, disk, [wiki])
    two_nodes.api_ok("run-backup", {"id": 1})
    path = f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, wiki)}"
    with subtests.test("the repository is on node 1's disk only"):
        assert node1.run("test", "-f", f"/srv/disk/{path}/config", check=False) == ""
        # Node 2's /srv/disk is another filesystem: the repository is not there.
        missing = subprocess.run(
            ["podman", "exec", node2.name, "test", "-e", f"/srv/disk/{path}"], timeout=60
        )
        assert missing.returncode == 1

    with subtests.test("the leader (node 2) lists node 1's disk through its gateway"):
        listed = two_nodes.api_ok("read-backup-repositories", None)
        assert [(row["repository_id"], row["path"]) for row in listed] == [(disk, path)], listed
        assert listed[0]["installed_instance"] == wiki

    restore = {"node": 2, "repository": disk, "path": path, "snapshot": ""}
    copy = two_nodes.api_ok("cluster/restore-module", restore)["module_id"]
    pages = node1.volume_files(wiki, "pages")
    with subtests.test("restored on node 2: pages, database and settings as on node 1"):
        assert redis_client.hget(redis_keys.MODULE_NODE, copy) == "2"
        assert len(pages) > 200
        assert node2.volume_files(copy, "pages") == pages
        assert node2.wiki_rows(copy) == node1.wiki_rows(wiki)
        assert "INSERT INTO" in node1.wiki_rows(wiki)
        assert node2.wiki_state(copy) == node1.wiki_state(wiki)
        settings = redis_client.hgetall(f"module/{wiki}/wiki_settings")
        assert settings and redis_client.hgetall(f"module/{copy}/wiki_settings") == settings
        assert redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, copy) is None

    # A backup of the copy to the disk only node 2 has.
    backups.add_backup(redis_client, 2, only_node2, [copy])
    two_nodes.api_ok("run-backup", {"id": 2})
    own = f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, copy)}"

    node1.stop_gateway()
    with subtests.test("node 1's gateway stopped: a restore from its disk fails, naming it"):
        code, output, error = two_nodes.api("cluster/restore-module", restore)
        assert code != 0, output
        assert f"node 1's gateway at {node1.address} does not answer" in error, error
        assert redis_client.hget(redis_keys.MODULE_NODE, "minwiki3") is None  # nothing left
    with subtests.test("node 2's own destination carries on: a backup, and a restore"):
        two_nodes.api_ok("run-backup", {"id": 2})
        again = {"node": 2, "repository": only_node2, "path": own, "snapshot": ""}
        second = two_nodes.api_ok("cluster/restore-module", again)["module_id"]
        assert redis_client.hget(redis_keys.MODULE_NODE, second) == "2"
        assert node2.volume_files(second, "pages") == pages
