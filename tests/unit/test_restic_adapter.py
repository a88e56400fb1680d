"""The restic and rclone adapter's pure parts: argument builders, the JSON message
parser, the exit code table and the failure texts built from them."""

from __future__ import annotations

import json

import pytest

from agent.adapters import rclone
from agent.adapters.restic_errors import (
    EXITS,
    Exit,
    explain_restic_failure,
    is_snapshot_missing,
    may_leave_lock,
)
from agent.core import restic_args
from agent.core.restic_messages import (
    ExitError,
    Initialized,
    ItemError,
    Other,
    Status,
    Summary,
    VerboseStatus,
    parse_forget,
    parse_message,
    parse_messages,
    parse_snapshot_ids,
)
from agent.operations.backup_retention import SnapshotCount

# --- argument builders ----------------------------------------------------------------


def test_backup_and_forget_arguments() -> None:
    assert restic_args.backup_args(
        tags=["module=a1", "backup=3"], host="a1", exclude_file="/srv/x"
    ) == [
        *("backup", "--json", "--tag", "module=a1", "--tag", "backup=3"),
        *("--host", "a1", "--files-from", "-", "--exclude-file", "/srv/x"),
    ]
    assert restic_args.backup_args() == ["backup", "--json", "--files-from", "-"]
    assert restic_args.forget_args(
        3, tags=["backup=3"], keep_daily=7, keep_weekly=0, keep_within="1y"
    ) == [
        *("forget", "--json", "--group-by=", "--keep-last=3", "--keep-daily=7"),
        *("--keep-within=1y", "--tag", "backup=3", "--prune"),
    ]


def test_repository_arguments() -> None:
    assert restic_args.init_args() == ["init", "--json"]
    assert restic_args.unlock_args() == ["unlock", "--remove-all"]
    assert restic_args.snapshots_args() == ["snapshots", "--no-lock", "--json"]
    assert restic_args.snapshots_args(tags=["backup=1"]) == [
        *("snapshots", "--no-lock", "--json", "--tag", "backup=1"),
    ]
    assert restic_args.ls_args("") == ["ls", "--json", "--no-lock", "latest"]
    assert restic_args.dump_args("ab12", "/", archive="tar") == [
        *("dump", "--no-lock", "--archive", "tar", "ab12", "/"),
    ]


def test_restore_takes_includes_or_excludes_never_both() -> None:
    whole = restic_args.restore_args("", "/restore", excludes=["/state/x"])
    assert whole == [
        *("restore", "--json", "latest", "--target", "/restore"),
        *("--exclude-xattr", "security.*", "--exclude", "/state/x"),
    ]
    with pytest.raises(ValueError):
        restic_args.restore_args("", "/restore", includes=["/a"], excludes=["/b"])


def test_rclone_arguments() -> None:
    assert rclone.rcat_args("dest:bucket/a.json") == ["rcat", "dest:bucket/a.json"]
    assert rclone.copy_args("dest:b", "/srv/l", ["--max-depth=3"]) == [
        "copy",
        *rclone.PROBE_FLAGS,
        "--max-depth=3",
        "dest:b",
        "/srv/l",
    ]


# --- messages ---------------------------------------------------------------------------


def test_messages_are_told_apart_by_message_type_whatever_the_key_order() -> None:
    lines = [
        {"percent_done": 0.5, "message_type": "status", "total_files": 4},
        {"item": "/srv/volumes/x", "error": {"message": "permission denied"}, "during": "scan"},
        {"message_type": "verbose_status", "item": "/state/a", "action": "restored"},
        {"message_type": "exit_error", "code": 1, "message": "Fatal: no matching ID found"},
        {"message_type": "initialized", "id": "1f5a"},
        {"message_type": "summary", "snapshot_id": "ab", "data_added": 12},
        {"message_type": "node", "struct_type": "node", "path": "/x"},
    ]
    lines[1] = {"message_type": "error", **lines[1]}
    text = "".join(json.dumps(line, separators=(", ", ": ")) + "\n" for line in lines)
    parsed = list(parse_messages("restic warning, not JSON\n" + text))
    status, error, verbose, exit_error, initialized, summary, other = parsed
    assert isinstance(status, Status) and status.percent == 50
    assert error == ItemError("/srv/volumes/x", "permission denied", "scan")
    assert verbose == VerboseStatus("restored", "/state/a")
    assert exit_error == ExitError(1, "Fatal: no matching ID found")
    assert initialized == Initialized("1f5a")
    assert isinstance(summary, Summary)
    assert (summary.text("snapshot_id"), summary.count("data_added")) == ("ab", 12)
    assert isinstance(other, Other) and other.message_type == "node"


def test_malformed_messages_read_as_empty_fields() -> None:
    # Item names come from snapshots: a field of the wrong type never raises.
    assert parse_message({"message_type": "error", "item": 7, "error": "x"}) == ItemError(
        "", "", ""
    )
    status = parse_message({"message_type": "status", "percent_done": "lots"})
    assert isinstance(status, Status) and status.percent == 0
    summary = parse_message({"message_type": "summary", "data_added": True, "snapshot_id": 3})
    assert isinstance(summary, Summary)
    assert (summary.count("data_added"), summary.text("snapshot_id")) == (0, "")
    assert parse_message({"message_type": 5}) == Other("", {"message_type": 5})


def test_forget_and_snapshot_listings() -> None:
    forget = (
        "loading indexes...\n"
        + json.dumps([{"keep": [{"id": "a"}, {"id": "b"}], "remove": [{"id": "c"}, {}]}, 3])
        + "\n"
    )
    assert parse_forget(forget) == (2, ["c"])
    assert parse_forget("no JSON here\n") == (0, [])
    assert parse_snapshot_ids('[{"id": "a1"}, {"id": "b2"}, 4]') == ["a1", "b2"]
    assert parse_snapshot_ids("{}") is None and parse_snapshot_ids("oops") is None


def test_snapshot_count_before_the_new_snapshot() -> None:
    count = SnapshotCount()
    count.record(Exit.FATAL, '[{"id": "a1"}]')
    assert count.before("a1") is None  # a failed listing counts nothing
    count.record(Exit.OK, '[{"id": "a1ff"}, {"id": "b2"}]')
    assert count.before("a1") == 1 and count.before("") == 2
    count.record(Exit.NO_REPOSITORY, "")
    assert count.before("x") == 0


# --- exit codes -------------------------------------------------------------------------


def test_every_documented_restic_exit_code_is_in_the_table() -> None:
    assert {0, 1, 3, 10, 11, 12, 130} <= set(EXITS)
    assert {code for code, meaning in EXITS.items() if meaning.ended_cleanly} == {
        0,
        1,
        3,
        10,
        11,
        12,
    }
    for abnormal in (130, 137, 143, -9, Exit.STOPPED, Exit.PODMAN_FAILED, 2):
        assert may_leave_lock(abnormal)


def test_failures_in_words() -> None:
    stderr = "some progress\nFatal: unable to create lock: held by 1\n"
    assert explain_restic_failure(12, stderr) == "wrong repository password (restic exit 12)"
    assert explain_restic_failure(11, stderr) == (
        "repository is locked by another process: Fatal: unable to create lock: held by 1"
    )
    assert explain_restic_failure(10, "") == (
        "the repository does not exist and could not be created"
    )
    assert explain_restic_failure(Exit.STOPPED, "the storage kept failing\n") == (
        "the storage kept failing"
    )
    assert explain_restic_failure(1, "") == "restic failed (exit 1): no error output"
    assert explain_restic_failure(137, "x\n") == "restic failed (exit 137): x"


def test_a_missing_snapshot_is_told_from_other_failures() -> None:
    assert is_snapshot_missing('Fatal: no matching ID found for prefix "deadbeef"')
    assert is_snapshot_missing("Fatal: snapshot not found")
    assert is_snapshot_missing("no snapshot found")
    assert not is_snapshot_missing("Fatal: wrong password or no key found")
