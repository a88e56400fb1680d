"""Watching the processes a test's steps start."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any


def wait_for_pid(path: Path, timeout: float = 60.0) -> int:
    """The pid a step writes to path, once it has."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


def alive(pid: int) -> bool:
    """Running (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether pid is gone (or a zombie) within timeout: a signalled process ends when the
    scheduler next runs it, which on a loaded machine can be after its parent reported."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_or_explain(
    argv: list[str], timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """subprocess.run (text) that fails a command still running at timeout with the
    machine's process tree, which says what it was waiting on. Keep timeout under the
    test's own (300 s): pytest's timer shows the test's stack only."""
    try:
        return subprocess.run(argv, timeout=timeout, text=True, **kwargs)
    except subprocess.TimeoutExpired as exc:
        tree = subprocess.run(
            ["ps", "-eo", "pid,ppid,stat,etime,wchan:24,args", "--forest"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        raise AssertionError(f"{argv[:6]} still ran after {timeout:.0f} s:\n{tree}") from exc
