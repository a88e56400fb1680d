"""Pure parts of notifications and run history: who wants what, message texts, masking."""

from __future__ import annotations

import pydantic
import pytest

from agent.adapters.healthchecks import ping_address
from agent.adapters.systemd import parse_calendar_elapses
from agent.operations.definitions import masked_url
from agent.records.backup_status import ModuleStatus, Outcome
from agent.records.notification_targets import Target
from agent.records.run_history import make_record
from agent.records.run_report import (
    ModuleReport,
    NodeFailure,
    RunReport,
    SendNotificationRequest,
    render,
)
from agent.runtime.overdue import Watch


def test_a_target_wants_its_events_and_report_wants_every_run() -> None:
    failures = Target("a", "json://h/x", ("failure",), backups=(2,))
    assert failures.wants("failure", 2) and not failures.wants("failure", 1)
    assert not failures.wants("success", 2)
    reports = Target("b", "json://h/x", ("report",))
    assert all(reports.wants(e, 7) for e in ("failure", "partial", "success"))
    assert not reports.wants("overdue", 7)


def test_the_listing_never_shows_more_than_the_scheme() -> None:
    assert Target("a", "tgram://bot:token/chat", ("failure",)).listing()["url"] == "tgram://…"


def test_a_run_message_names_each_module_its_sizes_and_the_free_space() -> None:
    report = RunReport(
        backup_id=3,
        name="nightly",
        destination="disk",
        free_bytes=5 * 1024**3,
        modules=[
            ModuleReport(module_id="wiki1", node=1, outcome="ok", total_size=2048, bytes_added=10),
            ModuleReport(module_id="mail1", node=2, outcome="failed", reason="restic exited 1"),
        ],
        node_failures=[NodeFailure(node=3, error="daemon gone")],
    )
    title, body = render(report)
    assert title == "Backup 3 'nightly': failed (2 module(s), 2 failed, 0 partial)"
    assert "wiki1 (node 1): ok, size 2.0 KiB, added 10 B, 0 snapshot(s)" in body
    assert "mail1 (node 2): failed, size 0 B, added 0 B, 0 snapshot(s) — restic exited 1" in body
    assert "node 3: failed — daemon gone" in body
    assert body.endswith("destination: disk, 5.0 GiB free")
    assert report.event == "failure"


def test_partial_is_its_own_event() -> None:
    module = ModuleReport(module_id="wiki1", node=1, outcome="partial")
    assert RunReport(backup_id=1, name="n", modules=[module]).event == "partial"


@pytest.mark.parametrize(
    ("base", "ping", "expected"),
    [
        ("https://hc/ping/abc", "start", "https://hc/ping/abc/start"),
        ("https://hc/ping/abc/", "success", "https://hc/ping/abc"),
        ("https://hc/ping/abc?rid=1", "fail", "https://hc/ping/abc/fail?rid=1"),
    ],
)
def test_ping_addresses_follow_healthchecks(base: str, ping: str, expected: str) -> None:
    assert ping_address(base, ping) == expected  # type: ignore[arg-type]


def test_a_ping_url_is_shown_by_host_only() -> None:
    assert masked_url("https://user:pw@hc.example/ping/uuid") == "https://hc.example/…"
    assert masked_url("") == ""


def test_a_send_request_needs_a_report_or_a_whole_ping() -> None:
    with pytest.raises(pydantic.ValidationError):
        SendNotificationRequest.model_validate({"event": "failure"})
    with pytest.raises(pydantic.ValidationError):
        SendNotificationRequest.model_validate({"event": "ping", "ping": "start"})


def test_calendar_output_is_read_in_utc() -> None:
    text = (
        "  Original form: daily\n"
        "Normalized form: *-*-* 00:00:00\n"
        "    Next elapse: Thu 2026-11-19 00:00:00 UTC\n"
        "       From now: 1 week 1 day ago\n"
        "       Iter. #2: Fri 2026-11-20 00:00:00 UTC\n"
    )
    assert parse_calendar_elapses(text) == [1795046400.0, 1795132800.0]
    assert parse_calendar_elapses("Next elapse: never\n") == []


def test_a_watch_survives_its_stored_form_and_junk_is_none() -> None:
    watch = Watch(since=10, last_success=0, due=20.0, next_run=None, overdue=True)
    assert Watch.from_json(watch.to_json()) == watch
    assert Watch.from_json('{"since": "x"}') is None and Watch.from_json(None) is None


def test_a_history_record_masks_every_secret_in_its_texts() -> None:
    status = ModuleStatus(
        "wiki1",
        Outcome.FAILED,
        10,
        25,
        reason="Fatal: s3 key AKIAEXAMPLE123 refused",
        unreadable=("/srv/AKIAEXAMPLE123",),
    )
    record = make_record(1, 2, status, ["x AKIAEXAMPLE123 y"], ["AKIAEXAMPLE123"])
    assert "AKIAEXAMPLE123" not in record.to_json()
    assert record.duration == 15 and record.log == ["x XXX y"]
