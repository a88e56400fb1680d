"""Finding a queued task to withdraw: only the runnable entry with that exact id."""

from __future__ import annotations

import json

from agent.runtime.task_withdraw import find_queued, jumps_the_queue


def entry(task_id: str, action: str = "run-backup") -> bytes:
    return json.dumps({"id": task_id, "action": action, "data": None}).encode()


def test_find_queued_takes_the_entry_with_that_id_and_no_other() -> None:
    entries = [entry("abc-1"), entry("abc"), entry("xabc")]
    found = find_queued(entries, "abc")
    assert found is not None
    assert found.raw.encode() == entries[1] and found.task["id"] == "abc"
    assert find_queued(entries, "ab") is None


def test_find_queued_skips_hostile_entries_without_raising() -> None:
    hostile = [
        b"\xff" + entry("abc"),  # not UTF-8
        b"[" * 100_000 + b'"abc"',  # nested too deeply
        b'{"id": "abc"}',  # no action
        b'{"data": "abc", "id": "other", "action": "x"}',  # the id only in its data
    ]
    assert find_queued(hostile, "abc") is None
    assert find_queued([*hostile, entry("abc")], "abc") is not None


def test_only_cancel_task_jumps_the_queue() -> None:
    assert jumps_the_queue("cancel-task")
    assert not jumps_the_queue("run-backup") and not jumps_the_queue("list-actions")
