"""Daemon restarts, crashes and unreachable services, as an operator meets them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from agent.adapters import gateway
from agent.core import redis_keys
from agent.runtime import lease, tasks
from tests.support.cluster import ClusterHarness, NodeHarness, lease_holder
from tests.support.processes import alive, gone, wait_for_pid


def test_task_of_a_killed_daemon_is_aborted_visibly_and_not_rerun(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    node = cluster.nodes[1]
    node.write_action(
        "cluster",
        "slow",
        {
            "10slow": "#!/bin/bash\necho run >> runs.log\nsleep 300 &\necho $! > slow.pid\nwait\n",
        },
    )
    node.write_action("cluster", "quick", {"10quick": "#!/bin/sh\necho '\"done\"'\n"})
    state = node.settings.state_dir("cluster")
    slow_id = cluster.api("run", "slow", "--nowait").stdout.strip()
    sleep_pid = wait_for_pid(state / "slow.pid")

    node.stop(signal.SIGKILL)
    assert alive(sleep_pid), "the orphaned step keeps running until the daemon comes back"
    # Queued while no daemon runs: must wait in Redis, not be lost.
    quick_task = tasks.make_task("quick", None)
    redis_client.lpush(redis_keys.task_queue("cluster"), json.dumps(quick_task))

    node.start()
    watcher = tasks.TaskWatcher(redis_client, "cluster")
    watcher.subscribe(slow_id)
    result = watcher.wait(timeout=120)
    assert result.exit_code == 1
    assert "aborted" in result.error and "daemon" in result.error
    assert gone(sleep_pid)
    assert (state / "runs.log").read_text().count("run") == 1

    quick = tasks.TaskWatcher(redis_client, "cluster")
    quick.subscribe(quick_task["id"])
    assert quick.wait(timeout=120).output == "done"
    assert redis_client.llen(redis_keys.task_processing("cluster")) == 0


def test_second_daemon_for_the_same_node_is_refused(cluster: ClusterHarness) -> None:
    node = cluster.nodes[1]
    second = subprocess.run(
        [sys.executable, "-m", "agent.cli", "serve"],
        env=node.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    assert "already served" in second.stderr
    holder = lease_holder(cluster.redis_url, 1)
    assert holder is not None and node.process is not None
    assert holder.pid == node.process.pid


def test_sigterm_lets_the_running_task_finish(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    node = cluster.nodes[1]
    node.write_action(
        "cluster",
        "short",
        {
            "10short": "#!/bin/sh\necho started > short.started\nsleep 1\necho '\"finished\"'\n",
        },
    )
    task_id = cluster.api("run", "short", "--nowait").stdout.strip()
    started = node.settings.state_dir("cluster") / "short.started"
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    assert node.stop(signal.SIGTERM) == 0
    result = tasks.fetch_result(redis_client, "cluster", task_id)
    assert result is not None and result.exit_code == 0 and result.output == "finished"
    assert not redis_client.exists(redis_keys.node_daemon_lease(1))


def test_api_cli_says_so_when_no_daemon_runs(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    cluster.nodes[1].stop()
    result = cluster.api("run", "list-actions", timeout=30)
    assert result.returncode != 0
    assert "no agent daemon is running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert redis_client.llen(redis_keys.task_queue("cluster")) == 0


def test_api_cli_against_a_stopped_redis_prints_one_clear_line(tmp_path: Path) -> None:
    from tests.conftest import free_port

    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    for args in (
        ["run", "list-actions"],
        ["list-actions"],
        ["run", "node/1/run-backup", "-d", "{}"],
    ):
        result = subprocess.run(
            [str(Path(sys.executable).parent / "api-cli"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "cannot reach Redis" in lines[0]


def test_api_cli_withdraws_a_task_no_daemon_will_take(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    # SIGKILL leaves the daemon's lease alive for up to 15 s: api-cli queues the task, then
    # sees the lease lapse with the task still unclaimed.
    cluster.nodes[1].stop(signal.SIGKILL)
    result = cluster.api("run", "list-actions", timeout=60)
    assert result.returncode != 0
    assert "withdrawn" in result.stderr and "Traceback" not in result.stderr
    assert redis_client.llen(redis_keys.task_queue("cluster")) == 0


@contextlib.contextmanager
def _gateway_held(node: NodeHarness) -> Iterator[Callable[[], int]]:
    """node stopped; the gateway its next start spawns is SIGSTOPped as soon as its pid
    file appears (before it can answer). Yields a call that waits for that and returns the
    gateway's pid; the gateway is let go (SIGCONT) at the end."""
    pid_file = node.settings.run_dir / gateway.PID_FILE
    node.stop()
    assert not pid_file.exists()
    held: list[int] = []

    def hold() -> None:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGSTOP)
        held.append(pid)

    def held_pid() -> int:
        holder.join(timeout=60)
        assert held, "the gateway's pid file never appeared"
        return held[0]

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        yield held_pid
    finally:
        holder.join(timeout=60)
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def _gateway_held_at_start(node: NodeHarness) -> Iterator[int]:
    """node restarted with its gateway held stopped; yields the gateway's pid."""
    with _gateway_held(node) as held_pid:
        node.start(with_gateway=False)  # held stopped: it answers only once let go
        yield held_pid()


def test_a_task_queued_while_a_slow_gateway_starts_waits_for_the_daemon_and_runs(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    """The daemon waits for its gateway before serving (a saturated node's took over 15 s).
    Its lease must be renewed meanwhile: a lapsed lease reads as "no daemon", and api-cli
    withdraws the task it queued. The gateway is held stopped (SIGSTOP) for longer than
    the lease."""
    node = cluster.nodes[1]
    node.write_action("cluster", "quick", {"10quick": "#!/bin/sh\necho '\"done\"'\n"})
    with _gateway_held_at_start(node):
        api = subprocess.Popen(
            [str(Path(sys.executable).parent / "api-cli"), "run", "quick"],
            env=node.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(lease.LEASE_SECONDS + 5)
        assert api.poll() is None, api.communicate()  # not withdrawn: still waiting
        assert redis_client.exists(redis_keys.node_daemon_lease(1))
    out, err = api.communicate(timeout=120)
    assert api.returncode == 0, err
    assert json.loads(out) == "done"


def test_a_daemon_stopped_while_its_gateway_starts_stops_cleanly_with_it(
    cluster: ClusterHarness,
) -> None:
    node = cluster.nodes[1]
    with _gateway_held_at_start(node) as held:
        # Within the harness's 30 s (the wait for the gateway alone would last 60 s); a
        # daemon killed for being late would end -9.
        assert node.stop(timeout=30) == 0
        assert gone(held) and not (node.settings.run_dir / gateway.PID_FILE).exists()


def test_a_node_that_does_not_start_is_reported_with_its_stacks_and_killed(
    cluster: ClusterHarness, redis_client: redis.Redis
) -> None:
    """The harness's own failure path (a CI run lost two tests to a daemon that did not
    start in time and kept its lease into the next test): the daemon's stacks (SIGUSR1,
    which an operator can send too) say what it waits on, and it is gone afterwards."""
    node = cluster.nodes[1]
    with _gateway_held(node) as held_pid:
        with pytest.raises(RuntimeError, match="daemon did not start") as failed:
            node.start(timeout=5)
        daemon_stack = str(failed.value)
        assert "start_gateway" in daemon_stack and "Thread 0x" in daemon_stack, daemon_stack
        assert node.process is None
        assert gone(held_pid())
    node.start()  # the node's next start is not refused ("already served")
    assert redis_client.exists(redis_keys.node_daemon_lease(1))
