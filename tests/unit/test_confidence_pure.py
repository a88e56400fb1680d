"""Issue #18's pure parts: the rolling check subset, check/copy argv, check verdicts,
the confidence settings of a backup request and of a stored definition."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agent.adapters import restic
from agent.core import restic_args
from agent.core.models import AlterBackupRequest, CheckSettings, ListBackupsRequest
from agent.core.restic_messages import parse_check
from agent.operations import freshness, mirrors
from agent.records import run_history
from agent.records.backups import BackupDefinition, CheckPolicy, DrillPolicy
from agent.records.repository_checks import CheckRecord


def test_an_n_of_t_subset_rolls_over_every_part_once_per_t_runs() -> None:
    parts = [restic_args.rolling_subset("1/3", run) for run in range(7)]
    assert parts == ["1/3", "2/3", "3/3", "1/3", "2/3", "3/3", "1/3"]
    # n only says the share's size: every "n/t" rolls over the same t parts.
    assert restic_args.rolling_subset("2/5", 4) == "5/5"
    assert restic_args.rolling_subset("10%", 3) == "10%"


def test_check_and_copy_argv() -> None:
    assert restic_args.check_args("2/3") == ["check", "--json", "--read-data-subset=2/3"]
    assert restic_args.check_args("") == ["check", "--json"]
    assert restic_args.copy_args(tags=["backup=1"]) == ["copy", "--tag", "backup=1"]
    assert restic_args.init_copy_args() == ["init", "--json", "--copy-chunker-params"]


def test_check_verdicts() -> None:
    clean = '{"message_type":"summary","num_errors":0,"broken_packs":null}\n'
    assert parse_check(clean, "").num_errors == 0 and parse_check(clean, "").summarized
    damaged = '{"message_type":"summary","num_errors":1,"broken_packs":["f921"]}\n'
    errors = (
        '{"message_type":"error","message":"pack f921 contains 2 errors"}\n'
        "warning: not JSON\n"
        '{"message_type":"exit_error","code":1,"message":"Fatal: repository contains errors"}\n'
    )
    verdict = parse_check(damaged, errors)
    assert (verdict.num_errors, verdict.broken_packs) == (1, ("f921",))
    assert verdict.errors == ("pack f921 contains 2 errors", "Fatal: repository contains errors")
    assert not parse_check("", "Fatal: wrong password\n").summarized


@pytest.mark.parametrize("share", ["0/3", "4/3", "0%", "101%", "1/0", "x", "1/2/3"])
def test_bad_read_data_subsets_are_refused(share: str) -> None:
    with pytest.raises(ValidationError):
        CheckSettings(schedule="daily", read_data_subset=share)


def test_confidence_fields_are_stored_and_read_back() -> None:
    definition = BackupDefinition(
        id=3,
        name="n",
        repository="r",
        schedule="daily",
        retention=2,
        enabled=True,
        instances=("minwiki1",),
        check=CheckPolicy(schedule="weekly", read_data_subset="1/4"),
        drill=DrillPolicy(schedule="monthly", node=2),
        mirrors=("m1", "m2"),
        mirror_retention=5,
    )
    fields = definition.to_fields()
    assert json.loads(fields["check"]) == {"schedule": "weekly", "read_data_subset": "1/4"}
    assert json.loads(fields["drill"]) == {"schedule": "monthly", "node": 2}
    assert (fields["mirrors"], fields["mirror_retention"]) == ("m1 m2", "5")
    assert BackupDefinition.from_fields(3, fields) == definition
    bare = definition.model_copy(
        update={"check": None, "drill": None, "mirrors": (), "mirror_retention": None}
    )
    assert not {"check", "drill", "mirrors", "mirror_retention"} & set(bare.to_fields())


def test_an_alter_tells_a_left_out_setting_from_a_removed_one() -> None:
    base = {"id": 1, "name": "", "instances": [], "schedule": "daily", "retention": 1}
    left_out = AlterBackupRequest(**base, enabled=True)
    removed = AlterBackupRequest(**base, enabled=True, check=None, mirrors=[])
    assert "check" not in left_out.model_fields_set
    assert {"check", "mirrors"} <= removed.model_fields_set


def test_list_backups_takes_null_or_refresh() -> None:
    assert not ListBackupsRequest.model_validate(None).refresh
    assert ListBackupsRequest.model_validate({"refresh": True}).refresh


def test_a_copy_target_holds_both_repositories_by_name_only() -> None:
    source = restic.ResticTarget(
        "/srv/destination/minwiki/u", volumes=(("/backups/a", "/srv/destination"),)
    )
    mirror = restic.ResticTarget(
        "rest:http://h:1/m/minwiki/u", env={"RESTIC_REST_PASSWORD": "secret-m"}
    )
    both = mirrors.copy_target(mirror, source)
    assert both.repository == mirror.repository
    assert both.env["RESTIC_FROM_REPOSITORY"] == "/srv/source/minwiki/u"
    assert both.volumes == (("/backups/a", "/srv/source"),)
    argv = restic.podman_run_argv(both, restic_args.copy_args(tags=["backup=1"]))
    assert "--env=RESTIC_FROM_REPOSITORY" in argv and "secret-m" not in " ".join(argv)
    clashing = restic.ResticTarget("rest:http://h:2/s", env={"RESTIC_REST_PASSWORD": "other"})
    with pytest.raises(mirrors.MirrorFailed, match="RESTIC_REST_PASSWORD"):
        mirrors.copy_target(mirror, clashing)


def _snapshot(snapshot_id: str, timestamp: int) -> dict[str, object]:
    return {"id": snapshot_id, "timestamp": timestamp}


def test_freshness_judges_lost_snapshots_and_copies_of_the_newest() -> None:
    primary = {"snapshots": [_snapshot("aa", 10), _snapshot("bb", 20)]}
    mirror_ok = {"snapshots": [_snapshot("cc", 20)]}
    mirror_behind = {"snapshots": [_snapshot("dd", 10)]}
    verdict = freshness.judge(primary, {"m1": mirror_ok, "m2": mirror_behind}, "bb", 2)
    assert (verdict["newest_snapshot"], verdict["holding_newest"]) == (20, 2)
    assert verdict["lost_snapshots"] is False
    assert freshness.judge(primary, {}, "ee", 2)["lost_snapshots"] is True  # id gone
    assert freshness.judge(primary, {}, "bb", 3)["lost_snapshots"] is True  # fewer left
    unread = freshness.judge({"error": "no repository"}, {}, "bb", 2)
    assert unread["lost_snapshots"] is None and unread["error"] == "no repository"
    down = freshness.judge(primary, {"m1": {"error": "unreachable"}}, "bb", 2)
    assert down["holding_newest"] == 1 and "m1: unreachable" in down["error"]


def test_a_check_in_the_history_is_masked_and_kind_check() -> None:
    record = CheckRecord(
        backup_id=1, node=2, start=10, end=15, reason="denied for pw-Secret-1", errors=("x",)
    )
    entry = run_history.check_record(record, ["line with pw-Secret-1"], ["pw-Secret-1"])
    listed = entry.listing()
    assert listed["kind"] == "check" and listed["duration"] == 5
    assert "pw-Secret-1" not in json.dumps(listed)
    # Entries written before checks existed have no kind: they read as backups.
    older = {k: v for k, v in json.loads(entry.to_json()).items() if k != "kind"}
    assert run_history.RunRecord(**older).kind == "backup"
