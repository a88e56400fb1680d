"""A module's Redis credentials, taken from its env file, reach its own keys and queue,
the queues its image's authorizations grant, and nothing else; its include lines reach
only its own data. On the embedded node (the `default` user needs the node's password)."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.operations import cluster_setup
from agent.runtime import agent_acls, tasks
from agent.runtime.agentenv import read_env_file
from tests.conftest import podman_build
from tests.support import backups
from tests.support.embedded_node import EmbeddedNode, wait_until, wiki_with_backup

AUTHORIZED_TAG = "localhost/minwiki-authorized:latest"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EmbeddedNode]:
    embedded = EmbeddedNode(tmp_path / "node1")
    try:
        init = embedded.agent("cluster", "init", "--private-storage", "--local-root", str(tmp_path))
        assert init.returncode == 0, init.stderr
        up = embedded.agent("cluster", "up")
        assert up.returncode == 0, up.stderr
        yield embedded
    finally:
        embedded.down()


@pytest.fixture(scope="session")
def authorized_image(minwiki_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """minwiki whose authorizations label grants its node's agent (as NS8's fwadm role)."""
    context = tmp_path_factory.mktemp("authorized")
    (context / "Containerfile").write_text(
        f'FROM {minwiki_image}\nLABEL org.nethserver.authorizations="node:fwadm"\n'
    )
    podman_build(AUTHORIZED_TAG, context, "build-minwiki-authorized")
    return AUTHORIZED_TAG


def module_client(node: EmbeddedNode, module_id: str) -> redis.Redis:
    """A client as the module's own processes connect: credentials from its agent.env."""
    env_file = node.settings.state_dir(f"module/{module_id}") / "agent.env"
    credentials = read_env_file(env_file)
    base = redis.Redis.from_url(node.settings.redis_url).connection_pool.connection_kwargs
    return redis.Redis(
        host=base["host"],
        port=base["port"],
        username=credentials["REDIS_USER"],
        password=credentials["REDIS_PASSWORD"],
        decode_responses=True,
    )


def refused(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_module_credentials_reach_only_what_the_module_owns(
    node: EmbeddedNode,
    authorized_image: str,
    restic_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    wiki = node.api_ok("add-module", {"image": authorized_image, "node": 1})["module_id"]
    other = node.api_ok("add-module", {"image": authorized_image, "node": 1})["module_id"]
    admin = node.redis()
    env_file = node.settings.state_dir(f"module/{wiki}") / "agent.env"
    credentials = read_env_file(env_file)
    own_uuid = admin.hget(redis_keys.MODULE_UUID, wiki)
    with subtests.test("add-module writes the credentials 0600 and records the user"):
        assert credentials["REDIS_USER"] == f"module/{wiki}"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        recorded = json.loads(admin.hget(redis_keys.CLUSTER_ACLS, f"module/{wiki}"))
        assert credentials["REDIS_PASSWORD"] not in json.dumps(recorded)
        assert recorded["granted"] == ["node/1"]
        # Its own repository as add-module installed it: the one lease it may hold.
        assert (recorded["image"], recorded["module_uuid"]) == ("minwiki-authorized", own_uuid)

    admin.hset("private/notification_target/ops", "url", "mailto://secret")
    admin.hset("private/backup_repository/d1", "password", "gap")
    admin.set(f"module/{other}/secret", "theirs")
    admin.set("task/cluster/t1/output", '"cluster result"')
    admin.set(f"task/module/{other}/t1/output", '"other result"')
    module = module_client(node, wiki)
    lease = "return redis.call('HSET', KEYS[1], 'holder', 'x')"
    other_uuid = admin.hget(redis_keys.MODULE_UUID, other)
    other_lease = redis_keys.repository_lease("d1", f"minwiki-authorized/{other_uuid}")

    with subtests.test("refused: secrets, other modules' keys, other agents' tasks and queues"):
        probes: dict[str, Callable[[], object]] = {
            "a notification target": lambda: module.hgetall("private/notification_target/ops"),
            "the restore uuids": lambda: module.hgetall(redis_keys.RESTORE_UUID),
            "another module's key": lambda: module.get(f"module/{other}/secret"),
            "another module's environment": lambda: module.hgetall(f"module/{other}/environment"),
            "the cluster's task output": lambda: module.get("task/cluster/t1/output"),
            "another module's task output": lambda: module.get(f"task/module/{other}/t1/output"),
            "the cluster's queue": lambda: module.lpush("cluster/tasks", "{}"),
            "another module's queue": lambda: module.lpush(f"module/{other}/tasks", "{}"),
            "reading the node's queue (push only)": lambda: module.lrange("node/1/tasks", 0, -1),
            "KEYS": lambda: module.keys("*"),
            "SCAN": lambda: module.scan(0),
            "ACL LIST": lambda: module.acl_list(),
            "FLUSHALL": lambda: module.flushall(),
            "another module's lease": lambda: module.eval(lease, 1, other_lease),
            # Module-side restic goes through the storage gateway.
            "a destination's password": lambda: module.hget(
                "private/backup_repository/d1", "password"
            ),
        }
        assert [name for name, call in probes.items() if not refused(call)] == []
        assert admin.llen("cluster/tasks") == 0

    with subtests.test("allowed: its keys, its queue, the queue its label grants, its lease"):
        module.set(f"module/{wiki}/note", "mine")
        assert module.get(f"module/{wiki}/note") == "mine"
        assert module.hget(redis_keys.MODULE_UUID, wiki)
        own = tasks.run(module, tasks.TaskRequest(f"module/{wiki}", "list-actions"))  # type: ignore[arg-type]
        assert own.exit_code == 0 and "restore-module" in own.output
        granted = tasks.run(module, tasks.TaskRequest("node/1", "list-actions"))  # type: ignore[arg-type]
        assert granted.exit_code == 0 and "run-backup" in granted.output
        own_lease = redis_keys.repository_lease("d1", f"minwiki-authorized/{own_uuid}")
        assert module.eval(lease, 1, own_lease)

    with subtests.test("Redis's default user gets nothing; the node's gets everything"):
        anonymous = redis.Redis(**{**module.connection_pool.connection_kwargs, "username": None})
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        assert admin.hget("private/notification_target/ops", "url") == "mailto://secret"
        assert f"module/{wiki}" in admin.acl_users()

    with subtests.test("a step of the module runs with the module's credentials"):
        step = node.settings.agent_home(f"module/{wiki}") / "actions" / "whoami" / "10whoami"
        step.parent.mkdir(parents=True)
        step.write_text(
            "#!/usr/bin/env python3\nimport json, os, redis\n"
            "c = redis.Redis.from_url(os.environ['REDIS_URL'], decode_responses=True)\n"
            "try:\n    c.hgetall('private/notification_target/ops'); secret = 'read'\n"
            "except redis.exceptions.NoPermissionError:\n    secret = 'refused'\n"
            "print(json.dumps([c.connection_pool.connection_kwargs['username'], secret]))\n"
        )
        step.chmod(0o755)
        assert node.api_ok(f"module/{wiki}/whoami") == [f"module/{wiki}", "refused"]

    with subtests.test("a Redis restart keeps the users (applied again at cluster up)"):
        node.kill_redis()
        up = node.agent("cluster", "up")
        assert up.returncode == 0, up.stderr
        module = module_client(node, wiki)
        assert module.get(f"module/{wiki}/note") == "mine"
        assert refused(lambda: module.get(f"module/{other}/secret"))

    with subtests.test("remove-module takes its user and its record with it"):
        node.api_ok("remove-module", {"module_id": wiki, "preserve_data": False})
        with pytest.raises(redis.exceptions.AuthenticationError):
            module.ping()
        assert not admin.hexists(redis_keys.CLUSTER_ACLS, f"module/{wiki}")
        assert f"module/{wiki}" not in node.redis().acl_users()

    with subtests.test("a module installed before modules had users gets one at daemon start"):
        (node.settings.state_dir(f"module/{other}") / "agent.env").unlink()
        node.kill_daemon()
        up = node.agent("cluster", "up")
        assert up.returncode == 0, up.stderr
        other_env = node.settings.state_dir(f"module/{other}") / "agent.env"
        wait_until("the new daemon making the user", lambda: read_env_file(other_env))
        assert module_client(node, other).get(f"module/{other}/secret") == "theirs"


def test_include_lines_outside_the_module_are_ignored_and_reported(
    node: EmbeddedNode, minwiki_image: str, restic_image: str, tmp_path: Path
) -> None:
    wiki = wiki_with_backup(node, minwiki_image, tmp_path / "dest")
    include = node.settings.agent_home(f"module/{wiki.module_id}") / "etc" / "state-include.conf"
    include.write_text(include.read_text() + "/etc/shadow\nvolumes/other-module-data\n")

    output = node.api_ok("run-backup", {"id": 1})
    status = wiki.status(node)
    expected = [
        "state-include.conf: /etc/shadow",
        "state-include.conf: volumes/other-module-data",
    ]
    assert status["ignored"] == expected
    assert status["outcome"] == "ok", status
    assert json.dumps(expected)[1:-1] in json.dumps(output)  # the run's output says it too
    listing = backups.listing(wiki.repository)
    assert not any("shadow" in path or "other-module-data" in path for path in listing)
    assert "volumes/pages/" in "\n".join(listing)  # its own volume is still there


def test_a_joining_node_gets_a_redis_user_of_its_own(node: EmbeddedNode, tmp_path: Path) -> None:
    joined = cluster_setup.init(tmp_path / "node2", 2, node.settings.redis_url)
    client = redis.Redis.from_url(joined.redis_url, decode_responses=True)
    assert client.acl_whoami() == "node/2"
    assert node.settings.redis_url not in joined.redis_url  # not node 1's password
    recorded = json.loads(node.redis().hget(redis_keys.CLUSTER_ACLS, "node/2"))
    assert recorded["password_sha256"] and recorded["granted"] == []
    # Full rights, as a node has.
    client.hset("private/nodes/check", "x", "1")
    assert client.hget("private/nodes/check", "x") == "1"
    assert "node/2" in client.acl_users()


def test_apply_acls_makes_recorded_users_live_again(
    redis_client: redis.Redis, redis_url: str
) -> None:
    client = connect(redis_url)
    password = agent_acls.create_agent_user(client, "module/gone1", ("cluster",))
    redis_client.acl_deluser("module/gone1")  # as a Redis restart without an ACL file
    assert agent_acls.apply_acls(client) == 1
    module = redis.Redis.from_url(redis_url, username="module/gone1", password=password)
    module.lpush("cluster/tasks", "x")
    assert refused(lambda: module.lrange("cluster/tasks", 0, -1))
    # A malformed record is said in the log; it never stops the daemon that applies it.
    redis_client.hset(redis_keys.CLUSTER_ACLS, "module/bad1", "not json")
    assert agent_acls.apply_acls(client) == 0
    agent_acls.remove_agent_user(client, "module/gone1")
    assert "module/gone1" not in redis_client.acl_users()
