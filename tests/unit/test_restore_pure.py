"""Pure parts of restore: repository paths, snapshot paths, restic argv, verify patterns."""

from __future__ import annotations

from pathlib import PurePosixPath

import pydantic
import pytest

from agent.adapters.podman import parse_volume_place, volume_bind_argv
from agent.core.errors import ValidationFailed
from agent.core.models import RestoreModuleRequest
from agent.operations.repositories import epoch, snapshot_row
from agent.operations.restore_data import restore_args
from agent.operations.restore_source import parse_repo_path, snapshot_paths
from agent.operations.verify_restore import pattern_regex
from agent.operations.volume_placement import refused_reason
from agent.runtime.agentenv import parse_env_text

UUID = "48ce000a-79b7-5fe6-8558-177fd70c27b4"


def test_repository_paths_new_and_legacy() -> None:
    assert parse_repo_path(f"dokuwiki/{UUID}") == parse_repo_path(f"/dokuwiki/{UUID}/")
    current = parse_repo_path(f"dokuwiki/{UUID}")
    assert (current.image, current.uuid, current.legacy_module_id) == ("dokuwiki", UUID, "")
    legacy = parse_repo_path(f"dokuwiki/dokuwiki1@{UUID}")
    assert (legacy.uuid, legacy.legacy_module_id, legacy.path) == (
        UUID,
        "dokuwiki1",
        f"dokuwiki/dokuwiki1@{UUID}",
    )


def test_snapshot_paths_are_absolute_and_never_climb() -> None:
    assert snapshot_paths(["volumes/pages/a.md", "/state/x/"]) == [
        "/volumes/pages/a.md",
        "/state/x",
    ]
    for bad in ("volumes/../state/environment", "volumes//x", "volumes/./x"):
        with pytest.raises(ValidationFailed):
            snapshot_paths([bad])


def test_restore_argv_whole_and_partial() -> None:
    assert restore_args("", [], whole=True) == [
        *("restore", "--json", "latest", "--target", "/restore"),
        *("--exclude-xattr", "security.*", "--exclude", "/state/environment"),
        *("--exclude", "/state/agent.env", "--exclude", "/state/apitoken.cache"),
    ]
    whole = restore_args("", [], whole=True)
    assert "--delete" not in whole, "a whole restore adds to the new instance, never deletes"
    partial = restore_args("abc123", ["/volumes/pages/a.md"], whole=False)
    assert partial == [
        *("restore", "--json", "abc123", "--target", "/restore"),
        *("--exclude-xattr", "security.*", "--include", "/volumes/pages/a.md"),
    ]
    dry_run = restore_args("abc123", ["/volumes/pages/a.md"], whole=False, dry_run=True)
    assert dry_run == [*partial[:2], "--no-lock", "--dry-run", "-vv", *partial[2:]]


def test_restore_request_whole_or_partial() -> None:
    base = {"repository": UUID, "path": f"minwiki/{UUID}", "snapshot": ""}
    assert RestoreModuleRequest.model_validate({**base, "node": 2}).node == 2
    partial = {**base, "module_id": "minwiki1", "paths": ["volumes/pages/a.md"]}
    assert RestoreModuleRequest.model_validate(partial).paths == ["volumes/pages/a.md"]
    placed = {**base, "node": 1, "volumes": {"db": "/mnt/disk1"}}
    assert RestoreModuleRequest.model_validate(placed).volumes == {"db": "/mnt/disk1"}
    for bad in (
        base,
        {**base, "paths": ["state/x"]},
        {**partial, "replace": True},
        {**partial, "volumes": {"db": "/mnt/disk1"}},
        {**base, "node": 1, "volumes": {"../db": "/mnt/disk1"}},
        {**base, "node": 1, "volumes": {"db*": "/mnt/disk1"}},
    ):
        with pytest.raises(ValueError):
            RestoreModuleRequest.model_validate(bad)
    with pytest.raises(ValueError):
        RestoreModuleRequest.model_validate({**base, "node": 1, "path": "minwiki/not-a-uuid"})


def test_environment_and_snapshot_rows() -> None:
    # As the daemon reads the live file: a snapshot's copy means the same.
    assert parse_env_text("IMAGE_URL=a/b:1\n# c\nMODULE_UUID='u'\nbroken\n") == {
        "IMAGE_URL": "a/b:1",
        "MODULE_UUID": "u",
    }
    assert epoch("1970-01-01T00:00:10.123456789Z") == 10
    assert epoch("1970-01-01T01:00:10.5+01:00") == 10
    row = snapshot_row({"time": "1970-01-01T00:01:00Z", "id": "ab" * 32})
    assert row == {
        "timestamp": 60,
        "id": "ab" * 32,
        "total_bytes": -1,
        "backup_start": "",
        "backup_end": "",
    }


def test_exclude_patterns_as_restic_reads_them() -> None:
    tmp = pattern_regex("volumes/pages/**/*.tmp")
    assert tmp.match("volumes/pages/a/b/c.md.tmp") and tmp.match("volumes/pages/c.tmp")
    assert not tmp.match("volumes/pages/c.md")
    journal = pattern_regex("volumes/db/*.db-journal")
    assert journal.match("volumes/db/wiki.db-journal")
    assert not journal.match("volumes/db/sub/wiki.db-journal")
    assert pattern_regex("state/wiki-dump.*").match("state/wiki-dump.sqlite")


# --- NS8's `volumes`: placement on another directory -------------------------------------
def test_restore_volumes_is_a_placement_object() -> None:
    base = {"repository": UUID, "path": f"dokuwiki/{UUID}", "snapshot": "", "node": 1}
    request = RestoreModuleRequest.model_validate({**base, "volumes": {"data": "/mnt/disk1/d"}})
    assert request.volumes == {"data": "/mnt/disk1/d"}
    refused = [
        ["data"],  # the old list of names
        {"data": "mnt/disk1"},
        {"data": "/mnt/../etc"},
        {"data": "/mnt/disk1/.."},
        {"data": "/mnt/a\nb"},
        {"data": "/mnt/a\n"},
        {"data": "/mnt/a\x00"},
        {"-data": "/mnt/disk1"},
        {"da/ta": "/mnt/disk1"},
        {"": "/mnt/disk1"},
    ]
    for volumes in refused:
        with pytest.raises(pydantic.ValidationError):
            RestoreModuleRequest.model_validate({**base, "volumes": volumes})
    partial = {**base, "node": None, "module_id": "dokuwiki1", "paths": ["volumes/data/x"]}
    with pytest.raises(pydantic.ValidationError):
        RestoreModuleRequest.model_validate({**partial, "volumes": {"data": "/mnt/disk1"}})


def test_placement_refuses_system_and_data_directories() -> None:
    data = PurePosixPath("/var/lib/backup-agent")
    for path in ("/", "/etc", "/etc/x", "/usr/lib/y", "/proc/1", "/tmp", "/var", "/home"):
        assert refused_reason(PurePosixPath(path), data) == "system_directory", path
    for path in ("/var/lib/backup-agent", "/var/lib/backup-agent/modules/x"):
        assert refused_reason(PurePosixPath(path), data) == "agent_data_directory", path
    assert refused_reason(PurePosixPath("/srv"), PurePosixPath("/srv/node1")) is not None
    assert refused_reason(PurePosixPath("/srv/a"), PurePosixPath("/srv/node1")) is None
    for path in ("/mnt/disk1", "/home/disk/x", "/tmp/p/disk", "/var/lib/backup-agent2"):
        assert refused_reason(PurePosixPath(path), data) is None, path


def test_bind_volume_argv_and_its_inspection() -> None:
    assert volume_bind_argv("mail1-data", "/mnt/d", "mail1") == [
        *("podman", "volume", "create", "--label", "org.nethserver.module=mail1"),
        *("--opt", "type=none", "--opt", "o=bind", "--opt", "device=/mnt/d", "mail1-data"),
    ]
    assert parse_volume_place("/v/x/_data\t/mnt/d\tbind\n") == ("/v/x/_data", "/mnt/d")
    assert parse_volume_place("/v/x/_data\t<no value>\t<no value>\n") == ("/v/x/_data", None)
    assert parse_volume_place("/v/x/_data\t/dev/sdb1\tnoatime\n") == ("/v/x/_data", None)
