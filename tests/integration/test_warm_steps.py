"""Python steps forked from the daemon's warm helper behave as cold ones do."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import redis

from agent.core import redis_keys
from agent.runtime import tasks
from tests.support.cluster import ClusterHarness
from tests.support.processes import alive, gone, wait_for_pid

# Evaluated before the step imports anything: only a forked step finds the agent loaded.
PROBE = """#!/usr/bin/env python3
import sys
warm = "agent.operations.restore" in sys.modules
import json, os
data = json.load(sys.stdin)
os.write(int(os.environ["AGENT_COMFD"]), b"set-progress 50\\n")
print("a line for the log", file=sys.stderr)
print(json.dumps({
    "warm": warm,
    "cwd": os.getcwd(),
    "task": os.environ["AGENT_TASK_ID"],
    "echo": data,
    "own_session": os.getsid(0) == os.getpid(),
    "file": __file__,
}))
sys.exit(int(data.get("exit", 0)))
"""


def _run(redis_client: redis.Redis, action: str, data: object) -> tasks.TaskResult:
    return tasks.run(redis_client, tasks.TaskRequest("cluster", action, data), timeout=60)


def test_a_python_step_runs_forked_with_its_own_input_env_cwd_and_exit_code(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    node = cluster.nodes[1]
    directory = node.write_action("cluster", "probe", {"10probe": PROBE})
    result = _run(redis_client, "probe", {"exit": 0, "x": [1, 2]})
    assert result.exit_code == 0, result.error
    assert result.output["warm"] is True
    assert result.output["cwd"] == str(node.settings.state_dir("cluster"))
    assert result.output["echo"] == {"exit": 0, "x": [1, 2]}
    assert result.output["own_session"] is True
    assert result.output["file"] == str(directory / "10probe")
    assert result.output["task"] == result.task_id
    assert "a line for the log" in result.error

    failed = _run(redis_client, "probe", {"exit": 3})
    assert failed.exit_code == 3 and failed.output["warm"] is True


def test_steps_of_another_interpreter_start_cold(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    # /usr/bin/python3 is the machine's Python, not the agent's: it must run as itself.
    cluster.nodes[1].write_action(
        "cluster", "probe", {"10probe": PROBE.replace("/usr/bin/env python3", "/usr/bin/python3")}
    )
    result = _run(redis_client, "probe", {})
    assert result.exit_code == 0, result.error
    assert result.output["warm"] is False


def test_a_forked_step_is_cancelled_and_recovered_like_a_cold_one(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    node = cluster.nodes[1]
    state = node.settings.state_dir("cluster")
    slow = (
        "#!/usr/bin/env python3\nimport os, time\n"
        "open('slow.pid', 'w').write(str(os.getpid()))\ntime.sleep(300)\n"
    )
    node.write_action("cluster", "slow", {"10slow": slow})

    watcher = tasks.start(redis_client, tasks.TaskRequest("cluster", "slow", None))
    pid = wait_for_pid(state / "slow.pid")
    tasks.cancel(redis_client, "cluster", watcher.task_id)
    result = watcher.wait(timeout=120)
    assert result.exit_code != 0 and "cancelled" in result.error
    assert gone(pid)

    (state / "slow.pid").unlink()
    slow_id = cluster.api("run", "slow", "--nowait").stdout.strip()
    pid = wait_for_pid(state / "slow.pid")
    node.stop(signal.SIGKILL)
    assert alive(pid), "the orphaned step keeps running until the daemon comes back"
    node.start()
    watcher = tasks.TaskWatcher(redis_client, "cluster")
    watcher.subscribe(slow_id)
    result = watcher.wait(timeout=120)
    assert result.exit_code == 1 and "daemon" in result.error
    assert gone(pid)
    assert redis_client.llen(redis_keys.task_processing("cluster")) == 0
    left = {e.name: e.read_text() for e in (node.settings.run_dir / "warm-steps").iterdir()}
    assert not left, (left, slow_id, pid, node.log_tail(40))


def _children(pid: int) -> list[int]:
    """Children of every thread of pid: a thread's own `children` file lists only its own."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _wait_for_helpers(daemon: int, timeout: float = 30.0) -> list[int]:
    """The daemon's children that run its own command line (the warm helper forks itself)
    and still do half a second later: a child forked to exec something else (the gateway,
    a step) shows the daemon's command line too, until its exec."""
    command = Path(f"/proc/{daemon}/cmdline").read_bytes()

    def forks() -> set[int]:
        found = set()
        for child in _children(daemon):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/cmdline").read_bytes() == command:
                    found.add(child)
        return found

    deadline = time.monotonic() + timeout
    while True:
        helpers = forks()
        if helpers:
            time.sleep(0.5)
            helpers &= forks()
        if helpers or time.monotonic() > deadline:
            return sorted(helpers)
        time.sleep(0.1)


def test_steps_start_cold_when_the_helper_is_gone(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    node = cluster.nodes[1]
    node.write_action("cluster", "probe", {"10probe": PROBE})
    assert node.process is not None
    daemon = node.process.pid
    helpers = _wait_for_helpers(daemon)
    assert len(helpers) == 1, "the daemon forks one helper"
    os.kill(helpers[0], signal.SIGKILL)

    result = _run(redis_client, "probe", {"x": 1})
    assert result.exit_code == 0, result.error
    assert result.output["warm"] is False and result.output["echo"] == {"x": 1}
