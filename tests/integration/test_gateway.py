"""The storage gateway against real Redis, real `rclone serve restic` and real restic:
what a module's own credentials can and cannot do to storage (issue #16 items 2 and 6)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from agent.adapters import gateway, sockets
from agent.core import redis_keys
from agent.core.errors import ActionFailed
from agent.core.settings import Settings
from agent.operations import cluster_setup
from agent.records.destinations import Destination
from agent.runtime import agent_acls
from agent.runtime.agentenv import read_env_file
from tests.support.backups import PASSWORD, add_local_backup
from tests.support.cluster import ClusterHarness

IMAGE_URL = "localhost/minwiki:latest"
UUID_A = "0b5d6a1e-0000-4000-8000-00000000000a"
UUID_B = "0b5d6a1e-0000-4000-8000-00000000000b"
LOCK_NAME = "ab" * 32


@dataclass
class GatewayNode:
    settings: Settings
    address: str
    disk: Path  # the local destination's directory
    remote_disk: Path  # a second local destination (stands for any other destination)
    destination: str
    other_destination: str
    passwords: dict[str, str]

    def repo(self, module_uuid: str, destination: str | None = None) -> str:
        return f"rest:http://{self.address}/{destination or self.destination}/minwiki/{module_uuid}"

    def restic(
        self, user: str, module_uuid: str, *args: str, destination: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            RESTIC_REPOSITORY=self.repo(module_uuid, destination),
            RESTIC_PASSWORD="restic-secret",
            RESTIC_REST_USERNAME=user,
            RESTIC_REST_PASSWORD=self.passwords[user],
            RESTIC_CACHE_DIR=str(self.settings.root / "restic-cache"),
        )
        return subprocess.run(
            ["restic", "--retry-lock=0", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def http(self, user: str, method: str, path: str, **kwargs: object) -> httpx.Response:
        auth = (user, self.passwords[user]) if user else None
        return httpx.request(
            method, f"http://{self.address}{path}", auth=auth, timeout=30, **kwargs
        )  # type: ignore[arg-type]


def _add_agent(client: redis.Redis, user: str, password: str) -> None:
    digest = hashlib.sha256(password.encode()).hexdigest()
    client.hset(redis_keys.CLUSTER_ACLS, user, json.dumps({"password_sha256": digest}))


def _add_destination(client: redis.Redis, destination_id: str, directory: Path) -> None:
    destination = Destination(
        id=destination_id,
        name=f"disk {destination_id[:4]}",
        provider="local",
        url=f"local:{directory}",
        password="restic-secret",
    )
    with client.pipeline(transaction=True) as pipe:
        destination.to_redis(pipe)  # type: ignore[arg-type]
        pipe.execute()


@pytest.fixture
def node(tmp_path: Path, redis_client: redis.Redis, redis_url: str) -> Iterator[GatewayNode]:
    disk, remote_disk = tmp_path / "disk", tmp_path / "other-disk"
    disk.mkdir()
    remote_disk.mkdir()
    settings = cluster_setup.init(tmp_path / "node1", 1, redis_url, local_roots=(str(tmp_path),))
    redis_client.sadd(redis_keys.CLUSTER_NODES, 1)
    passwords = {"module/minwiki1": secrets.token_hex(16), "module/minwiki2": secrets.token_hex(16)}
    for user, password in passwords.items():
        _add_agent(redis_client, user, password)
    for module_id, module_uuid in (("minwiki1", UUID_A), ("minwiki2", UUID_B)):
        redis_client.hset(redis_keys.MODULE_UUID, module_id, module_uuid)
        redis_client.hset(redis_keys.module_environment(module_id), "IMAGE_URL", IMAGE_URL)
    destination, other = secrets.token_hex(4) + "-dest", secrets.token_hex(4) + "-other"
    _add_destination(redis_client, destination, disk)
    _add_destination(redis_client, other, remote_disk)
    state = cluster_setup.start_gateway(settings)
    assert state.startswith("started"), state
    address = settings.gateway_listen[0]
    try:
        yield GatewayNode(settings, address, disk, remote_disk, destination, other, passwords)
    finally:
        stopped = cluster_setup.stop_pid(settings.run_dir / gateway.PID_FILE, 15)
        assert stopped
        _assert_no_rclone_left(tmp_path)


def _rclone_children(base: Path) -> list[int]:
    """`rclone serve` processes serving a directory under base (this test's gateway's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"rclone") and b"serve" in argv and str(base).encode() in argv[-2]:
            found.append(int(entry.name))
    return found


def _assert_no_rclone_left(base: Path) -> None:
    deadline = time.monotonic() + 15
    while _rclone_children(base) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _rclone_children(base)


def _seed(node: GatewayNode, tmp_path: Path) -> Path:
    """minwiki1's repository with one snapshot of a small tree, made through the gateway."""
    data = tmp_path / "data"
    (data / "pages").mkdir(parents=True)
    (data / "pages" / "a.md").write_bytes(os.urandom(200_000))
    (data / "notes.txt").write_text("hello\n")
    done = node.restic("module/minwiki1", UUID_A, "init")
    assert done.returncode == 0, done.stderr
    done = node.restic("module/minwiki1", UUID_A, "backup", "--host=t", str(data))
    assert done.returncode == 0, done.stderr
    return data


def test_a_module_backs_up_and_restores_its_own_repository(
    node: GatewayNode, tmp_path: Path
) -> None:
    data = _seed(node, tmp_path)
    assert (node.disk / "minwiki" / UUID_A / "config").is_file()  # on the destination itself
    listed = node.restic("module/minwiki1", UUID_A, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1
    target = tmp_path / "restored"
    done = node.restic("module/minwiki1", UUID_A, "restore", "latest", "--target", str(target))
    assert done.returncode == 0, done.stderr
    restored = target / str(data).lstrip("/")
    assert (restored / "pages" / "a.md").read_bytes() == (data / "pages" / "a.md").read_bytes()
    assert (restored / "notes.txt").read_text() == "hello\n"


def test_another_modules_repository_is_refused(node: GatewayNode, tmp_path: Path) -> None:
    _seed(node, tmp_path)
    done = node.restic("module/minwiki2", UUID_A, "snapshots")
    assert done.returncode != 0
    assert "403" in done.stderr
    answer = node.http("module/minwiki2", "GET", f"/{node.destination}/minwiki/{UUID_A}/config")
    assert answer.status_code == 403
    assert "not this module's" in answer.text
    # Nor by a path that only looks different once decoded or normalised.
    for path in (
        f"/{node.destination}/minwiki/{UUID_B}/../{UUID_A}/config",
        f"/{node.destination}/minwiki/{UUID_A}%2Fconfig",
        f"/{node.destination}/minwiki%2F{UUID_A}/config",
    ):
        answer = node.http("module/minwiki2", "GET", path)
        assert answer.status_code in (403, 404), path
        assert b"restic" not in answer.content


def test_credentials_are_checked(node: GatewayNode, tmp_path: Path) -> None:
    _seed(node, tmp_path)
    path = f"/{node.destination}/minwiki/{UUID_A}/config"
    assert node.http("", "GET", path).status_code == 401
    wrong = httpx.get(f"http://{node.address}{path}", auth=("module/minwiki1", "nope"))
    assert wrong.status_code == 401
    unknown = httpx.get(f"http://{node.address}{path}", auth=("module/ghost1", "x"))
    assert unknown.status_code == 401
    assert node.http("module/minwiki1", "GET", path).status_code == 200


def test_modules_delete_only_locks(node: GatewayNode, tmp_path: Path) -> None:
    _seed(node, tmp_path)
    repo = f"/{node.destination}/minwiki/{UUID_A}"
    snapshot = next((node.disk / "minwiki" / UUID_A / "snapshots").iterdir()).name
    for path in (f"{repo}/snapshots/{snapshot}", f"{repo}/config", f"{repo}/"):
        answer = node.http("module/minwiki1", "DELETE", path)
        assert answer.status_code == 403, path
    assert (node.disk / "minwiki" / UUID_A / "snapshots" / snapshot).is_file()
    # forget (and so prune) is refused as a whole: the snapshot stays.
    # (restic 0.18 still exits 0 when forget could not remove a snapshot file.)
    done = node.restic("module/minwiki1", UUID_A, "forget", snapshot)
    assert "unable to remove" in done.stderr
    assert (node.disk / "minwiki" / UUID_A / "snapshots" / snapshot).is_file()
    # restic's own lock files come and go.
    lock = f"{repo}/locks/{LOCK_NAME}"
    assert node.http("module/minwiki1", "POST", lock, content=b"{}").status_code == 200
    assert node.http("module/minwiki1", "DELETE", lock).status_code == 200
    assert not (node.disk / "minwiki" / UUID_A / "locks" / LOCK_NAME).exists()


def test_the_nodes_retention_still_works(node: GatewayNode, tmp_path: Path) -> None:
    _seed(node, tmp_path)
    assert (
        node.restic(
            "module/minwiki1", UUID_A, "backup", "--host=t", str(tmp_path / "data")
        ).returncode
        == 0
    )
    # The node reaches the destination itself, with its secrets, not through the gateway.
    env = dict(
        os.environ,
        RESTIC_REPOSITORY=str(node.disk / "minwiki" / UUID_A),
        RESTIC_PASSWORD="restic-secret",
        RESTIC_CACHE_DIR=str(node.settings.root / "restic-cache"),
    )
    done = subprocess.run(
        ["restic", "forget", "--prune", "--keep-last=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = node.restic("module/minwiki1", UUID_A, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1


def test_a_restore_grant_lets_read_only_the_granted_repository(
    node: GatewayNode, tmp_path: Path, redis_client: redis.Redis
) -> None:
    data = _seed(node, tmp_path)
    with agent_acls.restore_grant(redis_client, "minwiki2", node.destination, f"minwiki/{UUID_A}"):
        target = tmp_path / "restored"
        done = node.restic("module/minwiki2", UUID_A, "restore", "latest", "--target", str(target))
        assert done.returncode == 0, done.stderr
        assert (target / str(data).lstrip("/") / "notes.txt").read_text() == "hello\n"
        # Read only: no new snapshot in the source, and not on another destination.
        done = node.restic("module/minwiki2", UUID_A, "backup", "--host=t", str(data))
        assert done.returncode != 0
        answer = node.http(
            "module/minwiki2", "GET", f"/{node.other_destination}/minwiki/{UUID_A}/config"
        )
        assert answer.status_code == 403
    assert redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, "minwiki2") is None
    done = node.restic("module/minwiki2", UUID_A, "snapshots")
    assert done.returncode != 0
    assert "403" in done.stderr


def test_a_failed_destination_fails_alone(node: GatewayNode, tmp_path: Path) -> None:
    _seed(node, tmp_path)
    other = node.restic("module/minwiki1", UUID_A, "init", destination=node.other_destination)
    assert other.returncode == 0, other.stderr
    # The disk goes away: only its destination fails, with the reason.
    node.disk.rename(tmp_path / "detached")
    answer = node.http("module/minwiki1", "GET", f"/{node.destination}/minwiki/{UUID_A}/config")
    assert answer.status_code in (404, 503)
    listed = node.restic("module/minwiki1", UUID_A, "snapshots", destination=node.other_destination)
    assert listed.returncode == 0, listed.stderr
    assert gateway.answers(node.address)
    # Its rclone child killed: the next request starts another one.
    for pid in _rclone_children(node.settings.root.parent):
        os.kill(pid, signal.SIGKILL)
    listed = node.restic("module/minwiki1", UUID_A, "snapshots", destination=node.other_destination)
    assert listed.returncode == 0, listed.stderr


def test_a_child_that_takes_no_connection_is_replaced_and_the_request_goes_through(
    node: GatewayNode, tmp_path: Path
) -> None:
    """An rclone child still running but no longer listening (a CI run's restore met one:
    "All connection attempts failed") is replaced at the request that finds it so, which
    then goes through. Its listener is closed from outside (`ss -K`)."""
    _seed(node, tmp_path)
    before = set(_rclone_children(node.disk))
    assert len(before) == 1, before
    (pid,) = before
    (port,) = sockets.listening_ports(pid)
    # Its listener and the connections the gateway keeps open to it.
    subprocess.run(
        ["ss", "-K", "-t", "-a", f"( sport = :{port} or dport = :{port} )"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert not sockets.listening_ports(pid), "the child still listens"
    listed = node.restic("module/minwiki1", UUID_A, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1
    assert pid not in _rclone_children(node.disk), "the deaf child was not stopped"
    log_text = (node.settings.log_dir / "gateway.log").read_text()
    assert f"rclone pid {pid} took no connection at {sockets.LOOPBACK}:{port}" in log_text


def test_the_daemon_starts_the_gateway_and_a_killed_daemon_leaves_none(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    node = cluster.nodes[1]
    address = node.settings.gateway_listen[0]
    deadline = time.monotonic() + 30
    while not gateway.answers(address):
        assert time.monotonic() < deadline, "the daemon did not start the gateway"
        time.sleep(0.1)
    assert redis_client.hget(redis_keys.node_gateway(1), "loopback") == address
    pid = gateway.read_pid(node.settings.run_dir / gateway.PID_FILE)
    assert pid is not None
    node.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while gateway.read_pid(node.settings.run_dir / gateway.PID_FILE) is not None:
        assert time.monotonic() < deadline, "the gateway outlived its daemon"
        time.sleep(0.2)
    assert not gateway.answers(address)


def test_a_gateway_killed_outright_takes_its_rclone_children_with_it(
    node: GatewayNode, tmp_path: Path
) -> None:
    _seed(node, tmp_path)
    children = _rclone_children(tmp_path)
    assert len(children) == 2  # one per destination, started with the gateway
    pid = gateway.read_pid(node.settings.run_dir / gateway.PID_FILE)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while gateway.read_pid(node.settings.run_dir / gateway.PID_FILE) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # No orphan keeps serving the disk (each child's parent-death signal).
    deadline = time.monotonic() + 30
    while set(children) & set(_rclone_children(tmp_path)):
        assert time.monotonic() < deadline, "an rclone child outlived its gateway"
        time.sleep(0.1)
    assert cluster_setup.start_gateway(node.settings).startswith("started")
    listed = node.restic("module/minwiki1", UUID_A, "snapshots")
    assert listed.returncode == 0, listed.stderr


def test_a_modules_credentials_from_its_env_file_reach_its_repository_only(
    cluster: ClusterHarness, minwiki_image: str, restic_image: str, redis_client: redis.Redis
) -> None:
    modules = [
        str(cluster.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"])
        for _ in range(2)
    ]
    target = add_local_backup(redis_client, cluster.base, modules)
    destination = redis_client.hget(redis_keys.backup(1), "repository")
    assert destination
    cluster.api_ok("run-backup", {"id": 1})
    settings = cluster.nodes[1].settings
    env = read_env_file(settings.state_dir(f"module/{modules[0]}") / "agent.env")
    credentials = gateway.Credentials.from_env(env)
    assert credentials.user == f"module/{modules[0]}"
    own, other = (f"minwiki/{redis_client.hget(redis_keys.MODULE_UUID, m)}" for m in modules)
    deadline = time.monotonic() + 30
    while not gateway.answers(settings.gateway_listen[0]):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    found = gateway.module_restic_target(redis_client, 1, credentials, destination, own)
    assert found.node_id == 1
    assert found.password == PASSWORD
    env = dict(
        os.environ,
        RESTIC_REPOSITORY=found.target.repository,
        RESTIC_PASSWORD=found.password,
        RESTIC_CACHE_DIR=str(cluster.base / "restic-cache"),
        **found.target.env,
    )
    listed = subprocess.run(
        ["restic", "snapshots", "--json"], env=env, capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1

    with pytest.raises(ActionFailed, match="refused"):
        gateway.module_restic_target(redis_client, 1, credentials, destination, other)
    auth = (credentials.user, credentials.password)
    base = f"http://{settings.gateway_listen[0]}/{destination}"
    assert httpx.get(f"{base}/{other}/config", auth=auth).status_code == 403
    snapshot = next((target / own / "snapshots").iterdir()).name
    assert httpx.delete(f"{base}/{own}/snapshots/{snapshot}", auth=auth).status_code == 403
    assert (target / own / "snapshots" / snapshot).is_file()


def _wait_for(condition: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_each_destination_is_served_ahead_of_its_first_request(
    node: GatewayNode, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Both destinations got their child when the gateway started, before any request.
    _wait_for(lambda: len(_rclone_children(tmp_path)) == 2, "no child per destination")
    changed = redis_keys.cluster_event(redis_keys.Event.BACKUP_DESTINATION_CHANGED)
    third = tmp_path / "third-disk"
    third.mkdir()
    _add_destination(redis_client, "third-dest", third)
    redis_client.publish(changed, json.dumps({"destination_ids": ["third-dest"]}))
    _wait_for(lambda: _rclone_children(third), "an added destination was not served ahead")
    # Removed: its child stops; the others keep theirs.
    redis_client.delete(redis_keys.backup_repository("third-dest"))
    redis_client.delete(redis_keys.backup_repository_private("third-dest"))
    redis_client.publish(changed, json.dumps({"destination_ids": ["third-dest"]}))
    _wait_for(lambda: not _rclone_children(third), "a removed destination's child still runs")
    assert len(_rclone_children(tmp_path)) == 2


def test_a_child_answers_only_the_gateway(node: GatewayNode, tmp_path: Path) -> None:
    _seed(node, tmp_path)
    [pid] = _rclone_children(node.disk)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert "--addr=127.0.0.1:0" in argv  # the kernel picks its port: nobody held it first
    [port] = sockets.listening_ports(pid)
    address = f"127.0.0.1:{port}"
    # A module's restic shares the host's network: the child's port alone must not do.
    direct = httpx.get(f"http://{address}/minwiki/{UUID_A}/config", timeout=30)
    assert direct.status_code == 401
    through = node.http("module/minwiki1", "GET", f"/{node.destination}/minwiki/{UUID_A}/config")
    assert through.status_code == 200


def test_a_module_cannot_move_its_repository_by_its_own_environment(
    node: GatewayNode, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The module's own path comes from what add-module recorded with its user, not from
    its environment's IMAGE_URL, which the module itself can write."""
    _seed(node, tmp_path)
    digest = hashlib.sha256(node.passwords["module/minwiki1"].encode()).hexdigest()
    record = {"password_sha256": digest, "image": "minwiki", "module_uuid": UUID_A}
    redis_client.hset(redis_keys.CLUSTER_ACLS, "module/minwiki1", json.dumps(record))
    redis_client.hset(
        redis_keys.module_environment("minwiki1"), "IMAGE_URL", "localhost/otherwiki:latest"
    )
    listed = node.restic("module/minwiki1", UUID_A, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    answer = node.http("module/minwiki1", "GET", f"/{node.destination}/otherwiki/{UUID_A}/config")
    assert answer.status_code == 403
