"""A failed write said in one line; a full disk named, a roomy one not."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from agent.core.disk_space import describe_os_error, full_disk_note


def test_a_copy_error_is_told_by_its_first_file() -> None:
    why = "[Errno 28] No space left on device: 'a' -> 'b'"
    error = shutil.Error([("a", "b", why), ("c", "d", "[Errno 28] No space left on device")])
    assert describe_os_error(error) == f"2 file(s) could not be copied, the first: {why}"


def test_other_os_errors_are_their_own_first_line() -> None:
    error = OSError(errno.ENOSPC, "No space left on device", "/data/x")
    assert describe_os_error(error) == "[Errno 28] No space left on device: '/data/x'"


def test_no_note_for_a_disk_with_room_or_a_path_that_is_not_there(tmp_path: Path) -> None:
    assert full_disk_note(tmp_path) == ""  # the test machine's disk has more than 1 MiB
    assert full_disk_note(tmp_path / "missing") == ""
