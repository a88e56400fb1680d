"""agent.json through the one Settings dataclass: defaults once, round trip, clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agent.core.errors import ConfigError
from agent.core.settings import Settings, load_settings, write_settings


def _write(root: Path, data: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "agent.json").write_text(json.dumps(data))


def test_a_minimal_file_gets_every_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    _write(tmp_path, {"node_id": 2, "redis_url": "redis://127.0.0.1:6379/0"})
    loaded = load_settings(tmp_path)
    assert loaded == Settings(root=tmp_path, node_id=2, redis_url="redis://127.0.0.1:6379/0")
    assert loaded.concurrency == 8 and loaded.timers == "auto" and loaded.warm_steps is True
    assert loaded.web_listen == "127.0.0.1:9311" and loaded.storage_retry_seconds == 120.0


def test_settings_round_trip_through_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    settings = Settings(
        root=tmp_path,
        node_id=3,
        redis_url="redis://:secret@127.0.0.1:1/0",
        restic_podman_args=("--memory", "1g"),
        restore_files_roots=("/srv/restore",),
        local_roots=("/mnt/backups",),
        overdue_check_seconds=5,
        web_listen="",
    )
    write_settings(settings)
    assert (tmp_path / "agent.json").stat().st_mode & 0o777 == 0o600
    stored = json.loads((tmp_path / "agent.json").read_text())
    assert "root" not in stored and stored["restic_podman_args"] == ["--memory", "1g"]
    assert load_settings(tmp_path) == settings


def test_redis_url_from_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, {"node_id": 1, "redis_url": "redis://127.0.0.1:1/0"})
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:2/0")
    assert load_settings(tmp_path).redis_url == "redis://127.0.0.1:2/0"


def test_unknown_keys_are_ignored_and_the_check_interval_is_at_least_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    _write(tmp_path, {"node_id": 1, "redis_url": "r", "newer": 1, "overdue_check_seconds": 0})
    assert load_settings(tmp_path).overdue_check_seconds == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"redis_url": "r"}, "node_id"),
        ({"node_id": "one", "redis_url": "r"}, "node_id"),
        ({"node_id": 1, "redis_url": "r", "concurrency": "many"}, "concurrency"),
        ({"node_id": 1, "redis_url": "r", "restore_files_roots": ["relative"]}, "restore_files"),
        ({"node_id": 1, "redis_url": "r", "restore_files_roots": ["/"]}, "restore_files_roots"),
        ({"node_id": 1, "redis_url": "r", "local_roots": "/srv"}, "local_roots"),
        ([1, 2], "a JSON list"),
    ],
)
def test_a_malformed_file_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: object, problem: str
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    _write(tmp_path, data)
    with pytest.raises(ConfigError, match=f"malformed {tmp_path / 'agent.json'}: {problem}"):
        load_settings(tmp_path)


def test_a_missing_or_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no cluster in"):
        load_settings(tmp_path)
    (tmp_path / "agent.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path)


def test_changing_a_setting_validates_again(tmp_path: Path) -> None:
    settings = Settings(root=tmp_path, node_id=1, redis_url="r")
    assert dataclasses.replace(settings, overdue_check_seconds=-4).overdue_check_seconds == 1


def test_types_are_checked_not_coerced_into_something_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    # bool("false") was True; tuple("/srv") was ('/', 's', 'r', 'v').
    _write(tmp_path, {"node_id": 1, "redis_url": "r", "embedded_redis": "false"})
    with pytest.raises(ConfigError, match="embedded_redis: 'false' is not true or false"):
        load_settings(tmp_path)
    _write(tmp_path, {"node_id": "4", "redis_url": "r", "storage_retry_seconds": 30})
    loaded = load_settings(tmp_path)
    assert loaded.node_id == 4 and loaded.storage_retry_seconds == 30.0
