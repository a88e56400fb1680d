"""step_main: only malformed JSON on stdin is bad input (exit 10); a ValueError raised
inside the step's own work is a failure (exit 1) that says what went wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.operations import cluster_setup

STEP = """
import pydantic
from agent.runtime.steps import step_main

class Request(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    nodes: list[int]

def handler(step, request):
    return [n for n, _ in zip(request.nodes, [], strict=True)]

step_main(handler, Request)
"""


StepRunner = Callable[[str], subprocess.CompletedProcess[str]]


@pytest.fixture
def run_step(tmp_path: Path, redis_url: str, redis_client: object) -> StepRunner:
    root = tmp_path / "node1"
    cluster_setup.init(root, 1, redis_url)
    script = tmp_path / "step.py"
    script.write_text(STEP)

    def run(stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script)],
            input=stdin,
            env=dict(os.environ, AGENT_ROOT=str(root)),
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def test_a_value_error_inside_the_step_is_a_failure_not_bad_input(run_step: StepRunner) -> None:
    done = run_step('{"nodes": [1, 2]}')
    assert done.returncode == 1, done.stderr
    assert "bad input" not in done.stderr
    assert "zip() argument 2 is shorter than argument 1" in done.stderr


def test_malformed_json_on_stdin_is_bad_input(run_step: StepRunner) -> None:
    done = run_step('{"nodes": [1, 2')
    assert done.returncode == 10
    assert done.stderr.startswith("bad input:")


def test_input_the_model_refuses_is_a_validation_failure(run_step: StepRunner) -> None:
    done = run_step('{"nodes": "x"}')
    assert done.returncode == 10
    assert '"error": "nodes_list_type"' in done.stdout
