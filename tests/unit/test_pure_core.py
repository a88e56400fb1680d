"""Pure functions of the runtime: no Redis, no processes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.adapters import restic
from agent.adapters.podman import module_volumes, parse_volume_owners
from agent.core import redis_keys
from agent.core.errors import ValidationFailed
from agent.core.image_names import image_name
from agent.core.masking import MASK, mask_secrets, redact_text
from agent.core.redis_keys import split_action
from agent.core.validation import validate
from agent.core.volumes import backup_layout
from agent.runtime.actiondirs import list_actions, merge_actions
from agent.runtime.agentenv import format_env_file, read_env_file
from agent.runtime.runner import StepProgress
from agent.schemas import check_schemas


def test_task_keys_follow_ns8_names() -> None:
    assert redis_keys.task_queue("module/minwiki1") == "module/minwiki1/tasks"
    assert redis_keys.task_field("node/1", "abc", "exit_code") == "task/node/1/abc/exit_code"
    assert redis_keys.task_progress_channel("cluster", "abc") == "progress/cluster/task/abc"
    assert redis_keys.backup_status(2, 7) == "node/2/backup_status/7"
    with pytest.raises(ValueError):
        redis_keys.task_field("cluster", "abc", "secret")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cluster/restore-module", ("cluster", "restore-module")),
        ("node/1/run-backup", ("node/1", "run-backup")),
        ("module/dokuwiki1/list-actions", ("module/dokuwiki1", "list-actions")),
        ("list-backups", ("cluster", "list-backups")),
    ],
)
def test_split_action_on_the_last_slash(name: str, expected: tuple[str, str]) -> None:
    assert split_action(name) == expected


def test_masking_reaches_nested_secret_keys() -> None:
    data = {
        "name": "n",
        "password": "p",
        "parameters": {
            "b2_account_key": "k",
            "smb_pass": "s",
            "aws_access_key_id": "id",
            "token": "",
        },
        "list": [{"secret": "x"}],
    }
    masked = mask_secrets(data)
    assert masked["password"] == MASK
    assert masked["parameters"]["b2_account_key"] == MASK
    assert masked["parameters"]["smb_pass"] == MASK
    assert masked["parameters"]["aws_access_key_id"] == "id"  # an id is not a secret
    assert masked["list"][0]["secret"] == MASK
    assert data["password"] == "p"  # the input is untouched
    assert redact_text("url with hunter22 inside", ["hunter22"]) == f"url with {MASK} inside"


def test_step_progress_is_weighted() -> None:
    progress = StepProgress(["00a", "10b", "20c"])
    progress.set_weight("10b", 3)
    progress.update("00a", 100)
    assert progress.percent == 20
    progress.update("10b", 50)
    assert progress.percent == 50
    progress.set_weight("00a", 0)
    progress.set_weight("20c", 0)
    assert progress.percent == 50


def test_later_action_dir_wins_per_file(tmp_path: Path) -> None:
    base, own = tmp_path / "base", tmp_path / "own"
    for directory, steps in ((base, ("10one", "20two")), (own, ("20two", "30three"))):
        (directory / "act").mkdir(parents=True)
        for step in steps:
            path = directory / "act" / step
            path.write_text(f"#!/bin/sh\n# {directory.name}\n")
            path.chmod(0o755)
    (own / "act" / "15placeholder").write_text("not executable")
    action = merge_actions([base, own])["act"]
    assert [(name, path.parent.parent.name) for name, path in action.steps] == [
        ("10one", "base"),
        ("20two", "own"),
        ("30three", "own"),
    ]
    assert list_actions([base, own]) == ["act", "cancel-task", "list-actions"]


def test_env_files_round_trip(tmp_path: Path) -> None:
    env = {"MODULE_ID": "minwiki1", "IMAGE_URL": "ghcr.io/x/minwiki:1.0", "EMPTY": ""}
    path = tmp_path / "environment"
    path.write_text("# comment\n" + format_env_file(env) + "QUOTED='a b'\n")
    assert read_env_file(path) == {**env, "QUOTED": "a b"}
    assert read_env_file(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("ghcr.io/nethserver/samba:v1", "samba"),
        ("localhost/minwiki:latest", "minwiki"),
        ("minwiki", "minwiki"),
        ("registry:5000/a/dokuwiki@sha256:abc", "dokuwiki"),
    ],
)
def test_image_name(url: str, name: str) -> None:
    assert image_name(url) == name


def test_rootfull_volume_names_match_the_module_exactly() -> None:
    names = ["minwiki1-pages", "minwiki10-pages", "minwiki1-db", "minwiki1", "other-x"]
    assert module_volumes("minwiki1", names) == ["minwiki1-db", "minwiki1-pages"]


def test_a_module_id_never_takes_a_longer_ids_volumes() -> None:
    names = ["foo1-data", "foo1-bar1-data", "foo1-bar1-x", "foo1-cache", "foo1-labelled"]
    installed = ["foo1", "foo1-bar1", "foo12"]
    assert module_volumes("foo1", names, installed) == ["foo1-cache", "foo1-data", "foo1-labelled"]
    assert module_volumes("foo1-bar1", names, installed) == ["foo1-bar1-data", "foo1-bar1-x"]
    # A label written at creation decides even when the longer id is no longer installed.
    owners = {"foo1-bar1-data": "foo1-bar1", "foo1-labelled": "foo1", "foo1-data": ""}
    assert module_volumes("foo1", names, ["foo1"], owners) == [
        "foo1-bar1-x",  # no label, no installed foo1-bar1: nothing tells it apart
        "foo1-cache",
        "foo1-data",
        "foo1-labelled",
    ]
    assert parse_volume_owners("a\tfoo1\nb\t<no value>\nc\t\n") == {"a": "foo1", "b": "", "c": ""}


def test_backup_mounts_are_read_only(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "state-exclude.conf").write_text("state/x\n")
    copy = tmp_path / "run" / "foo1.conf"
    layout = backup_layout(
        "foo1", tmp_path, tmp_path / "state", ["foo1-data", "foo1-restic-x"], file_writer(copy)
    )
    flags = [mount.flag() for mount in layout.mounts]
    assert flags == [
        f"--volume={tmp_path / 'state'}:/srv/state:ro",
        "--volume=foo1-data:/srv/volumes/data:ro",
        f"--volume={copy}:/etc/state-exclude.conf:ro",
    ]


def test_validation_rows_name_the_parameter() -> None:
    schema = {
        "type": "object",
        "required": ["id"],
        "additionalProperties": False,
        "properties": {"id": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
    }
    with pytest.raises(ValidationFailed) as caught:
        validate({"name": 3, "extra": True}, schema)
    errors = {row["error"] for row in caught.value.errors}
    assert errors == {"id_required", "name_invalid_type", "extra_additional_property_not_allowed"}
    with pytest.raises(ValidationFailed) as caught:
        validate({"id": 0}, schema)
    assert caught.value.errors == [
        {"field": "id", "parameter": "id", "value": 0, "error": "id_number_gte"}
    ]


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=50),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_hostile_add_module_input_is_rejected_or_valid(data: object) -> None:
    schema = json.loads(
        (Path(__file__).parents[2] / "actions/cluster/add-module/validate-input.json").read_text()
    )
    try:
        validate(data, schema)
    except ValidationFailed as exc:
        assert exc.exit_code == 10 and exc.errors
        json.dumps(exc.errors)  # always serialisable


def test_committed_schemas_match_the_models() -> None:
    assert check_schemas() == [], "run 'agent schema' and commit the result"


def test_steps_are_executable_files() -> None:
    root = Path(__file__).parents[2] / "actions"
    steps = [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert steps
    assert all(os.access(p, os.X_OK) for p in steps)


def test_only_the_cache_volume_race_is_retried() -> None:
    raced = (
        'Error: creating named volume "restic-cache": volume with name restic-cache '
        "already exists: volume already exists"
    )
    assert restic.lost_cache_volume_race(125, raced)
    assert not restic.lost_cache_volume_race(1, raced)  # restic's own failure
    assert not restic.lost_cache_volume_race(125, "Error: no such image")


def test_a_step_sends_a_progress_figure_only_when_it_changes() -> None:
    from typing import cast

    from agent.adapters.redis_store import Context
    from agent.runtime.steps import Step

    read_end, write_end = os.pipe()
    try:
        step = Step(cast(Context, None), "node/1", "t1", write_end)
        for percent in (0, 5, 5, 5, 7, 130, 100):
            step.set_progress(percent)
        assert (
            os.read(read_end, 4096)
            == b"set-progress 0\nset-progress 5\nset-progress 7\nset-progress 100\n"
        )
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_url_is_masked_when_it_carries_a_scheme_and_so_may_carry_credentials() -> None:
    masked = mask_secrets(
        {
            "url": "json://hooks.example/t0k3n",
            "ping_url": "https://hc-ping.com/uuid",
            "destination": {"url": "local:/srv/backup"},
            "rest": {"url": "rest:http://user:pw@host:8000/"},
        }
    )
    assert masked["url"] == MASK and masked["ping_url"] == MASK
    assert masked["destination"]["url"] == "local:/srv/backup"
    assert masked["rest"]["url"] == MASK


def test_a_cold_step_gets_its_comfd_as_descriptor_3() -> None:
    from pathlib import Path

    from agent.runtime.runner import at_step_comfd

    argv = at_step_comfd(Path("/x/10step"), 14)
    assert argv[:2] == ["/bin/bash", "-c"] and argv[-2:] == ["14", "/x/10step"]


def file_writer(copy: Path) -> Callable[[bytes], Path]:
    """A backup_layout exclude writer that writes the copy at copy (as the node's does)."""

    def write(text: bytes) -> Path:
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(text)
        return copy

    return write
