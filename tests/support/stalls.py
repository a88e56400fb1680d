"""Holding an action at a step, and interrupting it there.

STALL is a step a test image copies in where it wants to hold an action: while Redis key
test/stall names that step, the step sets test/stalled and waits (at most 2 min).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from agent.adapters.redis_store import connect
from agent.runtime import tasks

STALL = """#!/bin/bash
# Test step: while Redis key test/stall names this step, say so and wait (at most 2 min).
# The node's credentials (agent.json): the module's own may not read test/*.
me="$AGENT_TASK_ACTION/$AGENT_TASK_STEP"
for _ in $(seq 1200); do
    now=$(ME="$me" python3 -c 'import json, os, redis
url = json.load(open(os.environ["AGENT_ROOT"] + "/agent.json"))["redis_url"]
r = redis.Redis.from_url(url, decode_responses=True)
if r.get("test/stall") == os.environ["ME"]:
    r.set("test/stalled", os.environ["ME"])
    print("stall")')
    [ "$now" = stall ] || exit 0
    sleep 0.1
done
"""
API_CLI = str(Path(sys.executable).parent / "api-cli")


def wait_for(what: str, condition: Any, timeout: float = 120.0) -> Any:
    """condition()'s first true value, polled until timeout."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.1)
    return value


@dataclass(frozen=True)
class Interrupted:
    task_id: str
    returncode: int
    out: str
    err: str


def interrupt_held_action(
    redis_client: redis.Redis,
    redis_url: str,
    env: dict[str, str],
    action: str,
    data: dict[str, Any],
    how: str,
    timeout: float = 120.0,
) -> Interrupted:
    """Run `api-cli run <action>` (a cluster action), wait until a STALL step holds it,
    then stop it: Ctrl-C to api-cli (how == "ctrl-c") or cancel the task."""
    client = subprocess.Popen(
        [API_CLI, "run", action, "--data", json.dumps(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    name = action.rsplit("/", 1)[-1]
    try:
        wait_for(
            f"{action} held by a stall step", lambda: redis_client.get("test/stalled"), timeout
        )
        [task_id] = [
            key.split("/")[2]
            for key in redis_client.keys("task/cluster/*/context")
            if json.loads(redis_client.get(key))["action"] == name
        ]
        if how == "ctrl-c":
            client.send_signal(signal.SIGINT)
        else:
            tasks.cancel(connect(redis_url), "cluster", task_id)
        out, err = client.communicate(timeout=180)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    return Interrupted(task_id, client.returncode, out, err)
