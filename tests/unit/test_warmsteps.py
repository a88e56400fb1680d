"""Which steps the warm helper may fork: only those of the agent's own interpreter."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent.runtime.warmsteps import runs_warm

VENV_BIN = str(Path(sys.executable).parent)


def _step(tmp_path: Path, first_line: str) -> Path:
    path = tmp_path / "10step"
    path.write_text(f"{first_line}\nprint('hi')\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("first_line", "path", "warm"),
    [
        ("#!/usr/bin/env python3", f"{VENV_BIN}:/usr/bin:/bin", True),
        (f"#!{sys.executable}", "/usr/bin:/bin", True),
        ("#!/usr/bin/env python3", "/usr/bin:/bin", False),  # the machine's python3
        ("#!/bin/sh", f"{VENV_BIN}:/usr/bin:/bin", False),
        ("#!/usr/bin/env -S python3 -u", f"{VENV_BIN}:/usr/bin:/bin", False),
        ("print('no shebang')", f"{VENV_BIN}:/usr/bin:/bin", False),
    ],
)
def test_only_the_agents_own_interpreter_runs_warm(
    tmp_path: Path, first_line: str, path: str, warm: bool
) -> None:
    assert runs_warm(_step(tmp_path, first_line), {"PATH": path}) is warm


def test_the_base_interpreter_of_the_venv_is_not_the_agents(tmp_path: Path) -> None:
    # Same binary, but without the venv's packages: it could not import the agent.
    base = Path(os.path.realpath(sys.executable))
    if base.parent == Path(sys.executable).parent:
        pytest.skip("not running from a virtualenv")
    assert not runs_warm(_step(tmp_path, f"#!{base}"), {"PATH": "/usr/bin:/bin"})


def test_a_missing_step_is_not_warm(tmp_path: Path) -> None:
    assert not runs_warm(tmp_path / "gone", {"PATH": VENV_BIN})
