"""A module written to NS8's conventions (tests/fixtures/nsprobe) runs unchanged: its
steps `import agent`, call agent.set_env, agent.tasks.run, the redis-* shell helpers and
run_restic, and see the variables NS8 gives a step; its image labels become ports,
image variables, flags and authorizations."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from agent.core import redis_keys
from tests.conftest import REPO_ROOT, podman_build
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.rootless import unique_ids

pytestmark = pytest.mark.podman
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "nsprobe"
TAG = "localhost/nsprobe:latest"
ROOTLESS_TAG = "localhost/nsprobe:rootless"


@pytest.fixture(scope="session")
def nsprobe_image() -> str:
    podman_build(TAG, FIXTURE, "build-nsprobe", containerfile=FIXTURE / "Containerfile")
    return TAG


@pytest.fixture(scope="session")
def nsprobe_rootless_image() -> str:
    """The same imageroot without the rootfull label: its steps run as the module's user."""
    return podman_build(
        ROOTLESS_TAG, FIXTURE, "build-nsprobe", containerfile=FIXTURE / "Containerfile.rootless"
    )


def test_a_module_written_to_ns8_conventions_gets_ns8s_api_and_environment(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    nsprobe_image: str,
    subtests: pytest.Subtests,
    tmp_path: Path,
) -> None:
    added = cluster.api_ok("add-module", {"image": nsprobe_image, "node": 1})
    module_id = added["module_id"]
    home = cluster.nodes[1].settings.agent_home(f"module/{module_id}")
    first_env = (home / "state" / "environment").read_text()

    with subtests.test("labels: ports, image variables, flags, authorizations"):
        assert "TCP_PORT=20001\n" in first_env
        assert "TCP_PORTS=20001,20002,20003\n" in first_env
        assert "TCP_PORTS_RANGE=20001-20003\n" in first_env
        assert "REDIS_IMAGE=docker.io/library/redis:7.2.4\n" in first_env
        assert (
            "I2FA_PROXY_IMAGE=ghcr.io/nethserver/2fa-proxy@sha256:0123456789abcdef\n" in first_env
        )
        assert "I9LIVES_V2_IMAGE=10.0.0.1:5000/x/9lives.v2:1\n" in first_env
        assert "IMAGE_ID=" in first_env and f"IMAGE_URL={nsprobe_image}\n" in first_env
        assert redis_client.hget(redis_keys.node_tcp_ports(1), module_id) == "20001-20003"
        assert redis_client.smembers(redis_keys.module_flags(module_id)) == {
            "probe_flag",
            "rootfull",
        }
        assert json.loads(
            redis_client.hget(redis_keys.MODULE_AUTHORIZATIONS, module_id) or "[]"
        ) == ["self:selfadm", "node:fwadm", "cluster:accountconsumer"]

    with subtests.test("create-module's set_env reaches the file and Redis"):
        assert "CREATED_BY=create-module\n" in first_env
        mirrored = redis_client.hgetall(redis_keys.module_environment(module_id))
        assert mirrored["CREATED_BY"] == "create-module"

    code, record, stderr = cluster.api_json(f"module/{module_id}/probe", {})
    assert code == 0, stderr
    env = record["env"]
    with subtests.test("set_env in step 06 reaches later steps, warm and cold"):
        assert env["FOO"] == "bar"
        assert record["selftask"]["foo_here"] == "bar"
        assert env["TEMP_ONE"] is None and env["TEMP_TWO"] == "2"
        assert record["envfile"]["FOO"] == "bar" and "TEMP_ONE" not in record["envfile"]

    with subtests.test("NS8's step variables"):
        assert env["AGENT_ID"] == f"module/{module_id}"
        assert env["AGENT_INSTALL_DIR"] == str(home)
        assert env["AGENT_STATE_DIR"] == str(home / "state") == record["cwd"]
        assert env["AGENT_TASK_ACTION"] == "probe" and env["AGENT_TASK_ID"]
        assert env["AGENT_TASK_USER"] == "" and env["AGENT_COMFD"] == "3"
        assert env["MODULE_ID"] == module_id and env["MODULE_UUID"] == added["module_uuid"]
        assert env["NODE_ID"] == "1" and env["IMAGE_URL"] == nsprobe_image
        assert env["TCP_PORT"] == "20001" and env["REDIS_IMAGE"].endswith("redis:7.2.4")
        assert env["REDIS_ADDRESS"] and env["AGENT_BASEACTIONS_DIR"].endswith("actions")
        assert all(record["helpers"].values()), record["helpers"]

    with subtests.test("agent.tasks.run on itself: NS8's result shape"):
        selftask = record["selftask"]
        assert selftask["keys"] == ["error", "exit_code", "output"]
        assert selftask["exit_code"] == 0
        assert selftask["output"] == {"module": module_id, "foo": "bar"}
        assert selftask["progress_increasing"] and selftask["agent_agent"]
        assert selftask["runp_brief_failures"] == 1
        assert selftask["ghost_raised"] == "TaskSubmissionCheckFailed"
        assert selftask["runp_shapes"] == ["dict", "TaskSubmissionCheckFailed"]
        assert re.fullmatch(rf"task/module/{module_id}/[0-9a-f-]+", selftask["nowait_path"])

    with subtests.test("redis-exec, redis-get, redis-hgetall"):
        assert record["shell"]["set"] == "True\n"
        assert record["shell"]["get"] == "hello world\nNone\n"
        assert record["shell"]["multi"] == "1\n1\n"
        assert record["shell"]["hgetall"] == "a=1\nb=two words\n"
        assert redis_client.get(f"module/{module_id}/probe") == "hello world"

    with subtests.test("volume arguments and agent id lookups"):
        assert record["state_volume_args"] == [
            f"--volume={home / 'state'}:/srv/state",
            f"--volume={module_id}-probe-data:/srv/volumes/probe-data",
        ]
        assert record["resolve"] == [
            f"module/{module_id}",
            "node/1",
            "cluster",
            "module/mail1",
            "node/3",
        ]

    with subtests.test("runagent -l, -m, -c: the agent's environment, no COMFD"):
        node_env = cluster.nodes[1].env()
        listed = subprocess.run(
            ["runagent", "-l"], env=node_env, capture_output=True, text=True, check=True
        )
        assert listed.stdout.split() == ["cluster", "node", module_id]
        script = 'echo "$PWD $MODULE_ID $FOO ${AGENT_COMFD:-none}"'
        shown = [
            subprocess.run(
                ["runagent", *options, "-m", module_id, "sh", "-c", script],
                env=node_env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            for options in ([], ["-c"])
        ]
        assert shown[0] == [str(home / "state"), module_id, "bar", "none"]
        assert shown[1][0] == str(tmp_path)

    with subtests.test("set_status('validation-failed') makes the task exit 10"):
        code, rows, _ = cluster.api_json(f"module/{module_id}/fail-validation", {})
        assert code == 10 and rows[0]["error"] == "name_bad"

    with subtests.test("a second instance gets other ports; removal gives them back"):
        other = cluster.api_ok("add-module", {"image": nsprobe_image, "node": 1})["module_id"]
        assert redis_client.hget(redis_keys.node_tcp_ports(1), other) == "20004-20006"
        for gone in (module_id, other):
            cluster.api_ok("remove-module", {"module_id": gone})
        assert not redis_client.exists(redis_keys.node_tcp_ports(1))
        assert not redis_client.exists(redis_keys.MODULE_AUTHORIZATIONS)


@pytest.mark.parametrize("image", ["nsprobe_image", "nsprobe_rootless_image"])
def test_run_restic_backs_up_in_the_modules_name(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    restic_image: str,
    tmp_path: Path,
    image: str,
    request: pytest.FixtureRequest,
) -> None:
    """NS8's agent.run_restic from a module step: init, backup --json with a progress
    callback, snapshots on the action's output; under the repository's lease; then
    prepare_restic_command's command run by the step. A rootless module's step runs as its
    user, which may not read the node's settings (agent.json)."""
    unique_ids(redis_client, "nsprobe")
    module_image = request.getfixturevalue(image)
    module_id = cluster.api_ok("add-module", {"image": module_image, "node": 1})["module_id"]
    target = tmp_path / "backup"
    target.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{target}")
    try:
        code, snapshots, stderr = cluster.api_json(
            f"module/{module_id}/restic-probe", {"repository": destination}, timeout=300
        )
        assert code == 0, stderr
        [snapshot] = snapshots
        assert snapshot["paths"] == ["/srv/state"]
        uuid = redis_client.hget(redis_keys.MODULE_UUID, module_id)
        assert (target / "nsprobe" / str(uuid) / "config").is_file()
        environment = redis_client.hgetall(redis_keys.module_environment(module_id))
        assert int(environment["BACKED_UP_FILES"]) >= 1
        assert environment["REPOSITORY_VERSION"] == "2"
        assert not list(redis_client.scan_iter(match="cluster/repository_lease/*"))
    finally:
        cluster.api_ok("remove-module", {"module_id": module_id})


def test_add_module_refuses_an_image_whose_labels_ns8_could_not_use(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    nsprobe_image: str,
    tmp_path: Path,
) -> None:
    """Labels are the module author's input: a port demand that is no number fails
    add-module with a clear error, and the instance is gone again."""
    tag = "localhost/nsprobe:bad-label"
    (tmp_path / "Containerfile").write_text(
        f'FROM {nsprobe_image}\nLABEL org.nethserver.tcp-ports-demand="lots"\n'
    )
    podman_build(tag, tmp_path, "build-nsprobe")
    code, _, stderr = cluster.api_json("add-module", {"image": tag, "node": 1})
    assert code != 0
    assert "org.nethserver.tcp-ports-demand='lots'" in stderr
    assert redis_client.hgetall(redis_keys.MODULE_NODE) == {}
    assert not redis_client.exists(redis_keys.node_tcp_ports(1), redis_keys.MODULE_AUTHORIZATIONS)
    assert not list((cluster.nodes[1].root / "modules").iterdir())


WAITER = """#!/usr/bin/env python3
import json
import os

import agent.tasks

me = os.environ["AGENT_ID"]
result = agent.tasks.run(
    me, "slow", {}, on_sigterm_tasks=[{"agent_id": me, "action": "mark", "data": {}}]
)
with open("waiter.json", "w") as handle:
    json.dump(result, handle)
"""


def test_a_step_waiting_in_agent_tasks_run_passes_a_cancel_on(
    cluster: ClusterHarness, redis_client: redis.Redis, nsprobe_image: str
) -> None:
    """NS8's SIGTERM rule: a step cancelled while agent.tasks.run waits cancels the
    sub-task, submits its on_sigterm_tasks, and goes on once the sub-task has ended."""
    from agent.runtime import tasks as client

    module_id = cluster.api_ok("add-module", {"image": nsprobe_image, "node": 1})["module_id"]
    agent_id = f"module/{module_id}"
    state = cluster.nodes[1].settings.state_dir(agent_id)
    node = cluster.nodes[1]
    node.write_action(agent_id, "slow", {"10sleep": "#!/bin/sh\ntouch slow-started\nsleep 300\n"})
    node.write_action(agent_id, "mark", {"10mark": "#!/bin/sh\ntouch marked\n"})
    node.write_action(agent_id, "waiter", {"10wait": WAITER})
    try:
        watcher = client.start(redis_client, client.TaskRequest(agent_id, "waiter", {}))
        wait_for(lambda: (state / "slow-started").exists(), "the sub-task to start")
        client.cancel(redis_client, agent_id, watcher.task_id)
        watcher.wait(timeout=120)
        sub = json.loads((state / "waiter.json").read_text())
        assert sorted(sub) == ["error", "exit_code", "output"] and sub["exit_code"] != 0
        wait_for(lambda: (state / "marked").exists(), "the on_sigterm task to run")
    finally:
        cluster.api_ok("remove-module", {"module_id": module_id})


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.1)
