"""Pure parts of restic fault handling: retry watch, lock-leaving exit codes, names."""

from __future__ import annotations

from agent.adapters import restic
from agent.adapters.restic_errors import Exit, may_leave_lock
from agent.core.restic_messages import parse_init_id
from agent.operations.repository_lease import container_prefix

RETRY = (
    "Save(<lock/b4e191c465>) returned error, retrying after 43.96s: open /repo/locks/"
    "b4e1-tmp-38: read-only file system\n"
)
SUCCESS = "Save(<data/1234>) operation successful after 2 retries\n"


def test_retry_watch_expires_only_after_the_limit_of_unbroken_retries() -> None:
    watch = restic.RetryWatch(5)
    watch.see("ordinary warning\n", 0)
    assert not watch.expired(100)
    watch.see(RETRY, 10)
    assert not watch.expired(15)
    assert watch.expired(15.1)
    assert watch.reason().endswith("read-only file system")
    assert "5s" in watch.reason()


def test_retry_watch_restarts_after_a_success() -> None:
    watch = restic.RetryWatch(5)
    watch.see(RETRY, 0)
    watch.see(SUCCESS, 4)
    assert not watch.expired(20)
    watch.see(RETRY, 20)
    assert watch.expired(26)


def test_retry_watch_without_limit_never_expires() -> None:
    watch = restic.RetryWatch(None)
    watch.see(RETRY, 0)
    assert not watch.expired(10**6)


def test_runs_that_may_leave_a_lock() -> None:
    for clean in (0, 1, 3, 10, 11, 12):
        assert not may_leave_lock(clean)
    for abnormal in (130, 137, 143, -9, Exit.STOPPED, 125):
        assert may_leave_lock(abnormal)


def test_init_id_is_read_from_init_json() -> None:
    text = '{"message_type":"initialized","id":"1f5a79","repository":"/repo"}\n'
    assert parse_init_id(text) == "1f5a79"
    assert parse_init_id("created restic repository 1f5a79 at /repo\n") == ""


def test_container_names_under_a_lease_share_its_prefix() -> None:
    prefix = container_prefix("cluster/repository_lease/d1/minwiki/u1")
    assert prefix == container_prefix("cluster/repository_lease/d1/minwiki/u1")
    assert prefix != container_prefix("cluster/repository_lease/d1/minwiki/u2")
    name = restic.container_name(prefix.removesuffix("-"))
    assert name.startswith(prefix) and name.startswith("restic-")
    assert ["--filter", f"name=^{prefix}"] == restic.present_argv(prefix)[3:5]
    assert restic.remove_argv([name]) == ["podman", "rm", "--force", "--time=0", name]
