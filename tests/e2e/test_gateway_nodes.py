"""Two nodes with filesystems of their own, one Redis: a module's repository on a `local:`
disk only node 1 has is restored on node 2 through node 1's storage gateway (#16 item 5).

Each node is a container of the node image with its own rootfs and its own tmpfs disk at
/srv/disk (so the same destination, `local:/srv/disk`, holds different data on each), the
working tree's Python and the host's restic and rclone bind-mounted, and the host network
(the shared Redis and each other's gateway). Each node runs its real gateway (`agent
gateway`). What stands in for the daemons: node 1's backup and node 2's module-side
restore are the restic commands those steps run (with the node's secrets on node 1, with
the module's own credentials through module_restic_target on node 2), run directly in the
node rather than in a restic container, because podman inside these nodes is a remote
client of the host's podman, whose containers would see the host's disks, not the node's.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from agent.adapters import gateway
from agent.core import redis_keys
from agent.core.settings import write_settings
from agent.operations import cluster_setup
from agent.records.destinations import Destination
from tests.conftest import REPO_ROOT, build_image, free_port, xdist_worker_id

IMAGE_URL = "localhost/minwiki:latest"
MODULE_UUID = "5e0c1a2b-0000-4000-8000-000000000001"
REPO_PATH = f"minwiki/{MODULE_UUID}"
RESTIC_PASSWORD = "restic-" + "x" * 20

# Module side, run inside a node: the target module_restic_target picks, then restic
# through it with the module's credentials (all by environment, none on a command line).
MODULE_SIDE = """
import json, os, subprocess, sys
from agent.adapters import gateway
from agent.adapters.redis_store import connect
from agent.core.errors import ActionFailed
destination, node_id, path, command = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
credentials = gateway.Credentials(os.environ["REDIS_USER"], os.environ["REDIS_PASSWORD"])
try:
    found = gateway.module_restic_target(
        connect(os.environ["REDIS_URL"]), node_id, credentials, destination, path
    )
except ActionFailed as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
env = dict(os.environ, RESTIC_REPOSITORY=found.target.repository, RESTIC_PASSWORD=found.password,
           RESTIC_CACHE_DIR="/tmp/restic-cache", **found.target.env)
done = subprocess.run(["restic", *command], env=env, capture_output=True, text=True)
print(json.dumps({"node": found.node_id, "code": done.returncode, "stderr": done.stderr[-500:]}))
"""


@dataclass
class Node:
    name: str
    node_id: int
    address: str
    redis_url: str

    def run(
        self, *argv: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env_args = [arg for key in env or {} for arg in ("-e", key)]
        done = subprocess.run(
            ["podman", "exec", "-i", *env_args, self.name, *argv],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} on node {self.node_id}: {done.stderr}")
        return done

    def read(self, path: str) -> bytes:
        done = subprocess.run(
            ["podman", "exec", self.name, "cat", path], capture_output=True, timeout=60, check=True
        )
        return done.stdout

    def module_side(self, destination: str, password: str, *command: str) -> dict[str, object]:
        env = {"REDIS_USER": "module/minwiki1", "REDIS_PASSWORD": password}
        env["REDIS_URL"] = self.redis_url
        done = self.run(
            f"{REPO_ROOT}/.venv/bin/python",
            "-c",
            MODULE_SIDE,
            destination,
            str(self.node_id),
            REPO_PATH,
            *command,
            env=env,
        )
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def stop_gateway(self) -> None:
        pid = self.run("cat", "/run/gateway.pid").stdout.strip()
        self.run("kill", "-TERM", pid)
        deadline = time.monotonic() + 30
        while gateway.answers(self.address):
            assert time.monotonic() < deadline, "node 1's gateway did not stop"
            time.sleep(0.2)


@dataclass
class TwoNodes:
    nodes: dict[int, Node]
    disk: str  # local:/srv/disk: on both nodes, different filesystems
    only_node2: str  # local:/srv/other: node 2 alone has it
    module_password: str


def _destination(client: redis.Redis, directory: str) -> str:
    destination_id = secrets.token_hex(4) + "-0000-4000-8000-" + secrets.token_hex(6)
    destination = Destination(
        id=destination_id,
        name=directory,
        provider="local",
        url=f"local:{directory}",
        password=RESTIC_PASSWORD,
    )
    with client.pipeline(transaction=True) as pipe:
        destination.to_redis(pipe)  # type: ignore[arg-type]
        pipe.execute()
    return destination_id


@pytest.fixture
def two_nodes(redis_client: redis.Redis, redis_url: str) -> Iterator[TwoNodes]:
    if shutil.which("podman") is None or not shutil.which("restic") or not shutil.which("rclone"):
        pytest.skip("needs podman, restic and rclone on the host")
    image = build_image("node")
    python_prefix = Path(sys.base_prefix)
    base = Path(tempfile.mkdtemp(prefix=f"backup-agent-gwnodes-{xdist_worker_id()}-"))
    names: list[str] = []
    password = secrets.token_hex(16)
    digest = hashlib.sha256(password.encode()).hexdigest()
    redis_client.hset(
        redis_keys.CLUSTER_ACLS, "module/minwiki1", json.dumps({"password_sha256": digest})
    )
    redis_client.hset(redis_keys.MODULE_UUID, "minwiki1", MODULE_UUID)
    redis_client.hset(redis_keys.module_environment("minwiki1"), "IMAGE_URL", IMAGE_URL)
    redis_client.sadd(redis_keys.CLUSTER_NODES, 1, 2)
    disk, only_node2 = (
        _destination(redis_client, "/srv/disk"),
        _destination(redis_client, "/srv/other"),
    )
    nodes = {}
    try:
        for node_id in (1, 2):
            settings = cluster_setup.init(
                base / f"node{node_id}", node_id, redis_url, local_roots=("/srv",)
            )
            address = f"127.0.0.1:{free_port()}"
            write_settings(replace(settings, gateway_listen=(address,), gateway_address=address))
            name = f"backup-agent-gw{node_id}-{base.name.rsplit('-', 1)[-1]}"
            disks = ["--tmpfs", "/srv/disk"] + (["--tmpfs", "/srv/other"] if node_id == 2 else [])
            mounts = [
                f"{REPO_ROOT}:{REPO_ROOT}",
                f"{python_prefix}:{python_prefix}:ro",
                f"{base}:{base}",
                "/usr/bin/restic:/usr/bin/restic:ro",
                "/usr/bin/rclone:/usr/bin/rclone:ro",
            ]
            argv = ["podman", "run", "-d", "--rm", "--name", name, "--network=host", *disks]
            argv += [arg for mount in mounts for arg in ("-v", mount)]
            argv += ["--entrypoint", "/usr/bin/sleep", image, "infinity"]
            subprocess.run(argv, check=True, capture_output=True, timeout=120)
            names.append(name)
            node = Node(name, node_id, address, redis_url)
            python = f"{REPO_ROOT}/.venv/bin/python"
            serve = f"echo $$ > /run/gateway.pid; exec {python} -m agent.cli gateway"
            subprocess.run(
                [
                    "podman",
                    "exec",
                    "-d",
                    "-e",
                    f"AGENT_ROOT={settings.root}",
                    name,
                    "sh",
                    "-c",
                    serve,
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            deadline = time.monotonic() + 60
            while not gateway.answers(address):
                assert time.monotonic() < deadline, f"node {node_id}'s gateway did not start"
                time.sleep(0.2)
            nodes[node_id] = node
        yield TwoNodes(nodes, disk, only_node2, password)
    finally:
        for name in names:
            subprocess.run(
                ["podman", "rm", "-f", "-t", "2", name], capture_output=True, timeout=120
            )
        shutil.rmtree(base, ignore_errors=True)


def _node_backup(node: Node, directory: str) -> None:
    """What the node's backup step does: restic on the destination itself, node secrets."""
    env = {"RESTIC_PASSWORD": RESTIC_PASSWORD, "RESTIC_REPOSITORY": f"{directory}/{REPO_PATH}"}
    env["RESTIC_CACHE_DIR"] = "/tmp/restic-cache"
    node.run("restic", "init", env=env)
    node.run("restic", "backup", "--host=node", "/data", env=env)


def test_a_local_disk_of_node_1_is_restored_on_node_2_through_its_gateway(
    two_nodes: TwoNodes,
) -> None:
    node1, node2 = two_nodes.nodes[1], two_nodes.nodes[2]
    node1.run(
        "sh",
        "-c",
        "mkdir -p /data/pages && head -c 300000 /dev/urandom > /data/pages/a.bin"
        " && echo hello > /data/b.txt",
    )
    _node_backup(node1, "/srv/disk")
    # Node 2's own /srv/disk is another filesystem: the repository is not there.
    assert node2.run("test", "-e", f"/srv/disk/{REPO_PATH}/config", check=False).returncode == 1

    restored = node2.module_side(
        two_nodes.disk, two_nodes.module_password, "restore", "latest", "--target", "/restored"
    )
    assert restored.get("code") == 0, restored
    assert restored["node"] == 1  # found through node 1's gateway
    for path in ("pages/a.bin", "b.txt"):
        original = node1.read(f"/data/{path}")
        copy = node2.read(f"/restored/data/{path}")
        assert copy == original and original

    # Node 2's own destination, and its module's repository there.
    node2.run("sh", "-c", "mkdir -p /data && echo two > /data/c.txt")
    _node_backup(node2, "/srv/other")
    listed = node2.module_side(two_nodes.only_node2, two_nodes.module_password, "snapshots")
    assert listed.get("code") == 0 and listed["node"] == 2, listed

    # Node 1's gateway stops: the disk only it serves fails with the reason, the rest works.
    node1.stop_gateway()
    failed = node2.module_side(two_nodes.disk, two_nodes.module_password, "snapshots")
    error = str(failed.get("error", ""))
    assert f"node 1's gateway at {node1.address} does not answer" in error, failed
    listed = node2.module_side(two_nodes.only_node2, two_nodes.module_password, "snapshots")
    assert listed.get("code") == 0 and listed["node"] == 2, listed
