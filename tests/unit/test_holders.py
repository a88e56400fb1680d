"""Holders (of the daemon lease, locks, restore grants): whose dead process may be taken
over at once. Only a holder whose pid names a process here (same kernel boot and PID
namespace); a hostname does not tell, as nodes started with the host's network share it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from agent.runtime.lease import Holder, new_holder, process_space


def _exited_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_holder_round_trips_with_its_process_space() -> None:
    holder = new_holder()
    assert holder.space == process_space() != ""
    assert Holder.decode(holder.encode()) == holder


def test_a_dead_process_in_this_pid_namespace_is_dead() -> None:
    holder = Holder(socket.gethostname(), _exited_pid(), "gone", process_space())
    assert Holder.decode(holder.encode()) is not None
    assert Holder.decode(holder.encode()).is_dead_local_process()  # type: ignore[union-attr]


def test_a_same_named_host_with_another_pid_namespace_is_never_judged() -> None:
    # Two node containers on the host's network: same hostname, separate pids.
    other = Holder(socket.gethostname(), _exited_pid(), "theirs", "someboot.4026530000")
    assert not Holder.decode(other.encode()).is_dead_local_process()  # type: ignore[union-attr]


def test_a_holder_written_without_a_space_waits_for_expiry() -> None:
    legacy = Holder.decode(f"{socket.gethostname()} {_exited_pid()} old")
    assert legacy is not None and legacy.space == ""
    assert not legacy.is_dead_local_process()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare missing")
def test_a_process_in_a_new_pid_namespace_has_another_space() -> None:
    code = "from agent.runtime.lease import new_holder; print(new_holder().encode())"
    out = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    ).stdout.strip()
    theirs = Holder.decode(out)
    assert theirs is not None and theirs.pid == 1
    assert theirs.space != process_space()
    assert not theirs.is_dead_local_process()
