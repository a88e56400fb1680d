"""The test helper that explains a command that hangs."""

from __future__ import annotations

import pytest

from tests.support.processes import run_or_explain


def test_a_command_past_its_time_fails_with_the_process_tree() -> None:
    with pytest.raises(AssertionError, match=r"\['sleep', '30'\] still ran after 1 s") as failed:
        run_or_explain(["sleep", "30"], 1.0, capture_output=True)
    header = str(failed.value).splitlines()[1].split()
    assert header[:5] == ["PID", "PPID", "STAT", "ELAPSED", "WCHAN"], header


def test_a_command_in_time_is_run_as_subprocess_runs_it() -> None:
    done = run_or_explain(["echo", "hi"], 10, capture_output=True)
    assert (done.returncode, done.stdout) == (0, "hi\n")
