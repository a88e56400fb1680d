"""The NS8 action protocol against a real daemon and a real Redis."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import redis

from agent.core import redis_keys
from agent.runtime import tasks
from tests.support.cluster import ClusterHarness
from tests.support.processes import gone

THREE_STEPS = {
    "10first": "#!/bin/sh\ntouch first.ran\necho '{\"first\": 1}'\n",
    "20second": "#!/bin/sh\necho 'second step broke' >&2\nexit 5\n",
    "30third": "#!/bin/sh\ntouch third.ran\n",
}


def test_schema_violation_exits_10_with_ns8_error_list(cluster: ClusterHarness) -> None:
    code, output, _ = cluster.api_json("add-module", {"image": 5, "node": "x", "bogus": 1})
    assert code == 10
    errors = {row["error"] for row in output}
    assert {
        "image_invalid_type",
        "node_invalid_type",
        "bogus_additional_property_not_allowed",
    } <= errors
    assert all(set(row) == {"field", "parameter", "value", "error"} for row in output)

    code, output, _ = cluster.api_json("add-module", {})
    assert code == 10
    assert {row["error"] for row in output} == {"image_required", "node_required"}


def test_failing_middle_step_ends_the_task_with_its_code(cluster: ClusterHarness) -> None:
    node = cluster.nodes[1]
    node.write_action("cluster", "three-steps", THREE_STEPS)
    result = cluster.api("run", "three-steps")
    assert result.returncode == 5
    assert "second step broke" in result.stderr
    assert json.loads(result.stdout) == {"first": 1}
    state = node.settings.state_dir("cluster")
    assert (state / "first.ran").exists()
    assert not (state / "third.ran").exists()


def test_weighted_progress_reaches_a_subscriber(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    cluster.nodes[1].write_action(
        "cluster",
        "weighted",
        {
            "00weights": "#!/bin/sh\necho 'set-weight 10slow 3' >&$AGENT_COMFD\n",
            "10slow": "#!/bin/sh\nfor i in 1 2 3 4; do\n"
            "    echo 'set-progress 50' >&$AGENT_COMFD\ndone\nsleep 0.2\n",
            "20fast": "#!/bin/sh\ntrue\n",
        },
    )
    seen: list[tuple[str, int]] = []
    result = tasks.run(
        redis_client,
        tasks.TaskRequest("cluster", "weighted", None),
        lambda status, percent: seen.append((status, percent)),
        timeout=60,
    )
    assert result.exit_code == 0
    percents = [p for _, p in seen]
    distinct = [p for i, p in enumerate(percents) if i == 0 or p != percents[i - 1]]
    # weights 1 + 3 + 1: 00 done = 20 %, 10slow at half = 50 %, 10slow done = 80 %.
    assert distinct == [0, 20, 50, 80, 100]
    assert percents.count(50) == 1  # a figure the step repeats is published once
    assert seen[-1] == ("completed", 100)


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().split()
    except OSError:
        return False
    return stat[2] != "Z"


SLEEPER = {"10sleep": "#!/bin/bash\nsleep 300 &\necho $! > sleep.pid\nwait\n"}


def test_cancel_task_stops_the_whole_step_group(cluster: ClusterHarness) -> None:
    node = cluster.nodes[1]
    node.write_action("cluster", "sleeper", SLEEPER)
    pid_file = node.settings.state_dir("cluster") / "sleep.pid"
    started = cluster.api("run", "sleeper", "--nowait")
    task_id = started.stdout.strip()
    _wait_for(pid_file)
    sleep_pid = int(pid_file.read_text())
    assert _alive(sleep_pid)
    cancel = cluster.api("run", "cancel-task", "--data", json.dumps({"task": task_id}))
    assert cancel.returncode == 0, cancel.stderr
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    watcher = tasks.TaskWatcher(client, "cluster")
    watcher.subscribe(task_id)
    result = watcher.wait(timeout=120)
    assert result.exit_code != 0
    assert "cancelled" in result.error
    assert gone(sleep_pid)
    unknown = cluster.api("run", "cancel-task", "--data", json.dumps({"task": "nope"}))
    assert unknown.returncode == 2


def test_ctrl_c_in_api_cli_cancels_the_task(cluster: ClusterHarness) -> None:
    import signal
    import subprocess
    import sys

    node = cluster.nodes[1]
    node.write_action("cluster", "sleeper", SLEEPER)
    pid_file = node.settings.state_dir("cluster") / "sleep.pid"
    api = subprocess.Popen(
        [str(Path(sys.executable).parent / "api-cli"), "run", "sleeper"],
        env=node.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test run started in the background by a shell without job control inherits
        # SIGINT ignored, and Python keeps it so: give api-cli the Ctrl-C a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for(pid_file)
    sleep_pid = int(pid_file.read_text())
    api.send_signal(signal.SIGINT)
    _, stderr = api.communicate(timeout=120)
    assert api.returncode != 0
    assert "cancelling task" in stderr
    assert "Traceback" not in stderr
    assert gone(sleep_pid)


def test_own_action_file_overrides_the_base_step(cluster: ClusterHarness) -> None:
    # The base add-module keeps its validate-input.json; only 50add_module is replaced.
    cluster.nodes[1].write_action(
        "cluster",
        "add-module",
        {
            "50add_module": "#!/bin/sh\necho '{\"overridden\": true}'\n",
        },
    )
    code, output, _ = cluster.api_json("add-module", {"image": "localhost/x", "node": 1})
    assert (code, output) == (0, {"overridden": True})
    code, _, _ = cluster.api_json("add-module", {"node": 1})
    assert code == 10


def test_twenty_concurrent_api_cli_calls_are_all_answered(cluster: ClusterHarness) -> None:
    cluster.nodes[1].write_action(
        "cluster",
        "echo",
        {
            "10echo": "#!/bin/sh\nsleep 0.3\ncat\n",
        },
    )
    results: dict[int, tuple[int, str]] = {}

    def call(i: int) -> None:
        done = cluster.api("run", "echo", "--data", json.dumps({"n": i}))
        results[i] = (done.returncode, done.stdout)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(20))
    for i, (code, stdout) in results.items():
        assert code == 0
        assert json.loads(stdout) == {"n": i}


def test_secrets_are_masked_in_the_stored_context_and_log(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    cluster.nodes[1].write_action("cluster", "secretive", {"10ok": "#!/bin/sh\ntrue\n"})
    data = {"name": "x", "password": "hunter2-secret", "parameters": {"b2_account_key": "k3y-val"}}
    task_id = cluster.api("run", "secretive", "--nowait", "--data", json.dumps(data)).stdout.strip()
    watcher = tasks.TaskWatcher(redis_client, "cluster")
    watcher.subscribe(task_id)
    assert watcher.wait(timeout=120).exit_code == 0
    context = redis_client.get(redis_keys.task_field("cluster", task_id, "context"))
    assert context is not None
    assert "hunter2-secret" not in context and "k3y-val" not in context
    assert json.loads(context)["data"]["name"] == "x"
    log = (cluster.nodes[1].root / "log" / "agent.log").read_text()
    assert "hunter2-secret" not in log and "k3y-val" not in log


def test_secrets_given_to_a_task_never_come_back_in_its_output_error_or_log(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    cluster.nodes[1].write_action(
        "cluster",
        "leaky",
        {"10leak": '#!/bin/sh\ninput=$(cat)\necho "$input"\necho "$input" >&2\nexit 3\n'},
    )
    data = {"name": "x", "parameters": {"rest_password": "s3cret-rest-pass", "user": "bob"}}
    task_id = cluster.api("run", "leaky", "--nowait", "--data", json.dumps(data)).stdout.strip()
    watcher = tasks.TaskWatcher(redis_client, "cluster")
    watcher.subscribe(task_id)
    result = watcher.wait(timeout=120)
    assert result.exit_code == 3
    assert "bob" in result.raw_output and "bob" in result.error
    assert "s3cret-rest-pass" not in result.raw_output + result.error
    log = (cluster.nodes[1].root / "log" / "agent.log").read_text()
    assert "bob" in log and "s3cret-rest-pass" not in log
