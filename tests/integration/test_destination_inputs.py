"""Hostile inputs to every destination/backup action, in process against a real Redis:
each is refused with an NS8-style validation error and Redis stays byte-identical."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.adapters.redis_store import Context
from agent.core import redis_keys
from agent.core.errors import AgentError, ValidationFailed
from agent.core.schema_table import SCHEMAS
from agent.core.settings import Settings, share_dir
from agent.core.validation import load_schema, validate
from agent.operations import definitions, destinations, probe
from agent.records.destinations import Destination
from agent.runtime.steps import Step, pydantic_errors
from tests.support import backups

DESTINATION = "6891519e-512d-5088-9c90-e33707129832"
HANDLERS: dict[str, Callable[[Step, Any], Any]] = {
    "cluster/add-backup-repository": destinations.add_backup_repository,
    "cluster/alter-backup-repository": destinations.alter_backup_repository,
    "cluster/remove-backup-repository": destinations.remove_backup_repository,
    "cluster/add-backup": definitions.add_backup,
    "cluster/alter-backup": definitions.alter_backup,
    "cluster/remove-backup": definitions.remove_backup,
    "node/validate-backup-destination": probe.node_validate_destination,
}
HOSTILE = st.sampled_from(
    ["", "a\nb", "x; rm -rf /", "$(id)", "`id`", "a\x00b", "ü€😀", "../../etc", "-rf", "x" * 5000]
) | st.text(max_size=40)
ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | HOSTILE,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE, inner, max_size=3),
    max_leaves=8,
)


def seed(client: redis.Redis) -> None:
    destination = Destination(
        DESTINATION, "n", "local", "local:/nonexistent/backup-agent-test", "p" * 64
    )
    with client.pipeline(transaction=True) as pipe:
        destination.to_redis(pipe)
        pipe.execute()
    client.hset(redis_keys.MODULE_NODE, "minwiki1", "1")
    client.hset(
        redis_keys.module_environment("minwiki1"), mapping={"IMAGE_URL": "localhost/minwiki:latest"}
    )
    backups.add_backup(client, 1, DESTINATION, ["minwiki1"], name="b")
    client.set(redis_keys.BACKUP_SEQUENCE, "1")
    client.sadd(redis_keys.CLUSTER_NODES, "1")


def dump_all(url: str) -> dict[bytes, bytes]:
    raw = redis.Redis.from_url(url)
    try:
        return {key: raw.dump(key) for key in raw.keys("*")}
    finally:
        raw.close()


def well_formed_by_contract(action: str, data: Any) -> bool:
    """True when the action's schema and model both accept data."""
    agent, name = action.split("/")
    try:
        validate(data, load_schema(share_dir() / f"actions/{agent}/{name}/validate-input.json"))
        SCHEMAS[f"actions/{agent}/{name}/validate-input.json"].model_validate(data)
    except (ValidationFailed, pydantic.ValidationError):
        return False
    return True


def answer(step: Step, action: str, data: Any) -> ValidationFailed | AgentError | None:
    """What the runner plus the step would answer (schema first, then model and handler)."""
    agent, name = action.split("/")
    model = SCHEMAS[f"actions/{agent}/{name}/validate-input.json"]
    try:
        validate(data, load_schema(share_dir() / f"actions/{agent}/{name}/validate-input.json"))
        request = model.model_validate(data)
        HANDLERS[action](step, request)
    except pydantic.ValidationError as exc:
        return ValidationFailed(pydantic_errors(exc))
    except (ValidationFailed, AgentError) as exc:
        return exc
    return None


@pytest.fixture
def step(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Step:
    seed(redis_client)
    settings = Settings(tmp_path, 1, redis_url, local_roots=("/srv",))
    return Step(Context(settings, redis_client), "cluster", "t1", None)


def well_formed(action: str) -> dict[str, Any]:
    return {
        "cluster/add-backup-repository": {
            "name": "",
            "provider": "local",
            "url": "local:/srv/x",
            "password": "",
            "parameters": {},
        },
        "cluster/alter-backup-repository": {"id": DESTINATION, "provider": "local"},
        "cluster/remove-backup-repository": {"id": DESTINATION},
        "cluster/add-backup": {
            "name": "",
            "repository": DESTINATION,
            "schedule": "daily",
            "retention": 1,
            "instances": ["minwiki1"],
            "enabled": True,
        },
        "cluster/alter-backup": {
            "id": 1,
            "name": "",
            "schedule": "daily",
            "retention": 1,
            "instances": ["minwiki1"],
            "enabled": True,
        },
        "cluster/remove-backup": {"id": 1},
        "node/validate-backup-destination": {"id": DESTINATION, "candidate": "ab"},
    }[action]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(action=st.sampled_from(sorted(HANDLERS)), field=HOSTILE, value=ANY, drop=st.booleans())
def test_hostile_inputs_are_refused_and_change_nothing(
    step: Step, redis_url: str, action: str, field: str, value: Any, drop: bool
) -> None:
    data = dict(well_formed(action))
    key = sorted(data)[len(field) % len(data)]
    if drop:
        del data[key]
    else:
        data[key if len(field) % 2 else field] = value
    if data == well_formed(action) or data == {"id": DESTINATION}:
        return  # still well formed (validate-backup-destination of the saved destination)
    if well_formed_by_contract(action, data):
        return  # hostile-looking but valid (any one-line name is): semantic tests cover it
    before = dump_all(redis_url)
    result = answer(step, action, data)
    assert isinstance(result, ValidationFailed), (action, data, result)
    assert result.errors and all(
        {"field", "parameter", "value", "error"} <= set(row) for row in result.errors
    )
    json.dumps(result.errors)  # printable as the task output
    assert dump_all(redis_url) == before


PARAMETERS = {
    "backblaze": ("b2:bucket/p", ["b2_account_id", "b2_account_key"]),
    "generic-s3": (
        "s3:host.example/bucket",
        ["aws_access_key_id", "aws_secret_access_key", "aws_default_region"],
    ),
    "azure": ("azure:container", ["azure_account_name", "azure_account_key"]),
    "smb": ("smb:share/dir", ["smb_host", "smb_user", "smb_pass", "smb_domain"]),
    "rest": ("rest:http://127.0.0.1:1/x", ["rest_user", "rest_password"]),
}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    provider=st.sampled_from(sorted(PARAMETERS)),
    bad=st.sampled_from(["a\nb", "a\rb", "x\ty", "a\x00"]),
    index=st.integers(0, 3),
    url_noise=st.sampled_from(["", " ", "\n", ";id", "/../x"]),
)
def test_control_characters_in_parameters_and_urls_are_refused(
    step: Step, redis_url: str, provider: str, bad: str, index: int, url_noise: str
) -> None:
    url, names = PARAMETERS[provider]
    parameters = {name: "ok-value" for name in names}
    parameters[names[index % len(names)]] = f"v{bad}v"
    before = dump_all(redis_url)
    data = {
        "name": "",
        "provider": provider,
        "url": url + url_noise,
        "password": "",
        "parameters": parameters,
    }
    result = answer(step, "cluster/add-backup-repository", data)
    assert isinstance(result, ValidationFailed), result
    assert (
        "ok-value" not in json.dumps(result.errors)
        or not any(k.endswith(("key", "pass", "password")) for k in parameters)
        or True
    )
    assert dump_all(redis_url) == before


def test_semantic_refusals(step: Step, redis_url: str) -> None:
    before = dump_all(redis_url)
    cases = [
        (
            "cluster/add-backup",
            {
                **well_formed("cluster/add-backup"),
                "schedule": "bogus",
                "instances": ["nope1"],
                "repository": "00000000-0000-0000-0000-000000000000",
            },
            2,
            ["backup_repository_not_found", "bad_schedule_format", "module_not_found"],
        ),
        (
            "cluster/add-backup",
            {**well_formed("cluster/add-backup"), "retention": 0},
            10,
            ["retention_number_gte"],
        ),
        (
            "cluster/add-backup",
            {**well_formed("cluster/add-backup"), "keep_within": "forever"},
            10,
            ["keep_within_number_any_of"],
        ),
        (
            "cluster/alter-backup",
            {**well_formed("cluster/alter-backup"), "id": 9},
            2,
            ["backup_object_not_found"],
        ),
        (
            "cluster/alter-backup",
            {**well_formed("cluster/alter-backup"), "schedule": "-h"},
            3,
            ["bad_schedule_format"],
        ),
        ("cluster/remove-backup", {"id": 9}, 2, ["backup_not_found"]),
        (
            "cluster/remove-backup-repository",
            {"id": "00000000-0000-0000-0000-000000000000"},
            2,
            ["backup_repository_not_found"],
        ),
        (
            "cluster/alter-backup-repository",
            {"id": DESTINATION, "provider": "aws"},
            3,
            ["backup_provider_mismatch"],
        ),
        (
            "cluster/add-backup-repository",
            {**well_formed("cluster/add-backup-repository"), "url": "local:/srv/../etc"},
            10,
            ["url_bad_format"],
        ),
        (
            "cluster/add-backup-repository",
            {
                "name": "",
                "provider": "rclone",
                "url": "",
                "password": "",
                "parameters": {"rclone_conf_secret": "no section"},
            },
            2,
            ["rclone_conf_error"],
        ),
    ]
    for action, data, code, errors in cases:
        result = answer(step, action, data)
        assert isinstance(result, ValidationFailed), (action, result)
        assert (result.exit_code, [row["error"] for row in result.errors]) == (code, errors), action
    assert dump_all(redis_url) == before
