"""Whatever a destination request holds, what the node would run stays inside the rules:
local directories below local_roots only, no '..', no rclone backend or option off the
allow-list; and a refused request leaves Redis byte-identical."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.adapters import restic
from agent.adapters.destinations import LOCAL_MOUNT, restic_target
from agent.core.destination_rules import RCLONE_BACKENDS, LocalPolicy
from agent.core.errors import AgentError, ValidationFailed
from agent.core.models import AddBackupRepositoryRequest
from agent.operations.destination_input import prepare
from agent.runtime.steps import Step
from tests.integration.test_destination_inputs import answer, dump_all
from tests.integration.test_destination_inputs import step as step  # the fixture

ROOT = "/srv/backups"
POLICY = LocalPolicy((ROOT,), "/var/lib/backup-agent")
PART = st.sampled_from(["..", ".", "a", "b.c", "...", "x..y", "~", "-rf", "var", "srv", ""])
LOCAL_URL = st.builds(
    lambda base, parts: "local:" + base + "/".join(parts),
    st.sampled_from(["/srv/backups/", "/srv/", "/", "/var/lib/backup-agent/", "//", "srv/"]),
    st.lists(PART, max_size=4),
)
KNOWN_OPTIONS = sorted({o for options in RCLONE_BACKENDS.values() for o in options})
OPTION = st.sampled_from(
    [
        *KNOWN_OPTIONS,
        "ssh",
        "key_file",
        "password_command",
        "bearer_token_command",
        "remote",
        "upstreams",
        "md5sum_command",
        "service_account_file",
        "env_auth",
        "x_command",
    ]
)
BACKEND = st.sampled_from(
    [*RCLONE_BACKENDS, "local", "alias", "union", "combine", "chunker", "crypt", "hasher", "http"]
)
VALUE = st.sampled_from(["v", "/etc", "dest:", "../..", "sh -c id", "1"])
RCLONE_CONF = st.builds(
    lambda backend, options: "\n".join(
        [f"type = {backend}", *(f"{k} = {v}" for k, v in options.items() if k != "type")]
    ),
    BACKEND,
    st.dictionaries(OPTION, VALUE, max_size=4),
)
BASEPATH = st.builds("/".join, st.lists(PART, max_size=3))


def _request(provider: str, url: str, parameters: dict[str, str]) -> Any:
    return {"name": "", "provider": provider, "url": url, "password": "", "parameters": parameters}


def _accepted(data: dict[str, Any]) -> Any:
    try:
        request = AddBackupRepositoryRequest.model_validate(data)
        return prepare(request, "6891519e-512d-5088-9c90-e33707129832", None, POLICY)
    except (pydantic.ValidationError, ValidationFailed):
        return None


def _assert_within_rules(prepared: Any) -> None:
    destination = prepared.destination
    target = restic_target(destination, "minwiki/0b8f6bd8-3d47-4b21-9a0e-1f6a8d3e3f10")
    argv = restic.podman_run_argv(target, ["snapshots"])
    for host, inside in target.volumes:
        assert os.path.realpath(host).startswith(ROOT + "/") or os.path.realpath(host) == ROOT
        assert inside == LOCAL_MOUNT
    for text in [*argv, target.repository, *target.env.values()]:
        assert ".." not in text.split("/"), text
    if destination.provider == "rclone":
        backend = target.env["RCLONE_CONFIG_DEST_TYPE"]
        options = {k.removeprefix("RCLONE_CONFIG_DEST_").lower() for k in target.env}
        assert backend in RCLONE_BACKENDS
        assert options <= RCLONE_BACKENDS[backend] | {"type", "description"}
        assert not any(name.endswith("command") for name in options)


@settings(max_examples=150, deadline=None)
@given(url=LOCAL_URL)
def test_local_urls_stay_below_the_roots(url: str) -> None:
    prepared = _accepted(_request("local", url, {}))
    if prepared is not None:
        _assert_within_rules(prepared)


@settings(max_examples=150, deadline=None)
@given(conf=RCLONE_CONF, basepath=BASEPATH)
def test_rclone_configs_stay_on_the_allow_list(conf: str, basepath: str) -> None:
    prepared = _accepted(_request("rclone", "", {"rclone_conf_secret": conf, "basepath": basepath}))
    if prepared is not None:
        _assert_within_rules(prepared)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(url=LOCAL_URL, conf=RCLONE_CONF, basepath=BASEPATH, rclone=st.booleans())
def test_refused_destinations_change_nothing_in_redis(
    step: Step, redis_url: str, url: str, conf: str, basepath: str, rclone: bool
) -> None:
    parameters = {"rclone_conf_secret": conf, "basepath": basepath} if rclone else {}
    data = _request("rclone" if rclone else "local", "" if rclone else url, parameters)
    if _accepted(data) is not None:
        return  # accepted: checked above; the probe then needs live nodes
    before = dump_all(redis_url)
    result = answer(step, "cluster/add-backup-repository", data)
    assert isinstance(result, (ValidationFailed, AgentError)), (data, result)
    assert dump_all(redis_url) == before


def test_known_escapes_are_refused(tmp_path: Path) -> None:
    refused = [
        _request("local", "local:/etc", {}),
        _request("local", "local:/srv/backups/../../etc", {}),
        _request("local", "local:/var/lib/backup-agent/modules", {}),
        _request("rclone", "", {"rclone_conf_secret": "type = local"}),
        _request("rclone", "", {"rclone_conf_secret": "type = alias\nremote = /etc"}),
        _request("rclone", "", {"rclone_conf_secret": "type = sftp\nhost = h\nssh = sh -c id"}),
        _request(
            "rclone",
            "",
            {"rclone_conf_secret": "type = webdav\nurl = http://h\nbearer_token_command = id"},
        ),
        _request(
            "rclone",
            "",
            {"rclone_conf_secret": "type = webdav\nurl = http://h", "basepath": "a/../.."},
        ),
    ]
    for data in refused:
        assert _accepted(data) is None, data
    link = tmp_path / "link"
    link.symlink_to("/etc")
    policy = LocalPolicy((str(tmp_path),), "/var/lib/backup-agent")
    request = AddBackupRepositoryRequest.model_validate(_request("local", f"local:{link}", {}))
    try:
        prepare(request, "6891519e-512d-5088-9c90-e33707129832", None, policy)
    except ValidationFailed as exc:
        assert [row["error"] for row in exc.errors] == ["local_path_not_allowed"]
    else:
        raise AssertionError("a link out of the root was accepted")
    assert _accepted(_request("local", "local:/srv/backups/nightly", {})) is not None
