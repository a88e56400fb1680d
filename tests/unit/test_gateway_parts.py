"""The gateway's pure parts: where it says it listens, its rclone argv, the module target."""

from __future__ import annotations

import pytest

from agent.adapters import gateway
from agent.adapters.rclone import is_serve_argv, serve_restic_argv, serve_webdav_argv
from agent.core.errors import ActionFailed, ConfigError
from agent.gateway.backends import child_spec
from agent.gateway.warm import changed_ids
from agent.records.destinations import Destination


def test_published_addresses() -> None:
    assert gateway.published(["127.0.0.1:4694", "10.5.4.1:4694"], "") == {
        "loopback": "127.0.0.1:4694",
        "cluster": "10.5.4.1:4694",
    }
    # Every address: the others need gateway_address to know where to go.
    assert gateway.published(["0.0.0.0:4694"], "") == {"loopback": "", "cluster": ""}
    assert gateway.published(["127.0.0.1:4694"], "node1.example:4694")["cluster"] == (
        "node1.example:4694"
    )
    assert gateway.parse_address("[::1]:4694") == ("::1", 4694)
    for bad in ("4694", "host:", "host:0", ":4694", "host:99999"):
        with pytest.raises(ConfigError):
            gateway.parse_address(bad)


def test_module_target_carries_credentials_by_environment_only() -> None:
    credentials = gateway.Credentials("module/minwiki1", "s3cret")
    target = gateway.gateway_target("127.0.0.1:4694", "dest-1", "/minwiki/u-1/", credentials)
    assert target.repository == "rest:http://127.0.0.1:4694/dest-1/minwiki/u-1"
    assert "s3cret" not in target.repository
    assert target.env == {
        "RESTIC_REST_USERNAME": "module/minwiki1",
        "RESTIC_REST_PASSWORD": "s3cret",
    }
    with pytest.raises(ActionFailed):
        gateway.Credentials.from_env({"REDIS_USER": "module/minwiki1"})


def test_rclone_children_get_secrets_by_environment_only() -> None:
    s3 = Destination(
        id="d1",
        name="s3",
        provider="generic-s3",
        url="s3:minio.example:9000/bucket/base",
        password="restic-password",
        parameters={"aws_access_key_id": "AKID", "aws_secret_access_key": "SECRET"},
    )
    spec = child_spec(s3)
    argv = serve_restic_argv("127.0.0.1:1234", spec.remote)
    assert argv[:3] == ["rclone", "serve", "restic"]
    assert "--addr=127.0.0.1:1234" in argv
    assert not any("SECRET" in arg or "AKID" in arg for arg in argv)
    assert "SECRET" in spec.env.values()
    local = Destination(
        id="d2", name="disk", provider="local", url="local:/srv/backup/", password="p"
    )
    assert child_spec(local).remote == "/srv/backup"
    assert child_spec(local).env == {}


def test_leftover_children_are_recognised_by_the_serve_builders_argv_only() -> None:
    restic_child = serve_restic_argv("127.0.0.1:1", "/srv/backup")
    webdav_child = serve_webdav_argv("127.0.0.1:2", "/srv/backup", "/dav/d1")
    assert "--baseurl=/dav/d1" in webdav_child
    for argv in (restic_child, webdav_child):
        assert is_serve_argv([arg.encode() for arg in argv])
    # Another rclone, or another program serving, is never taken for a child.
    for other in (["rclone", "serve", "sftp"], ["rclone", "copy"], ["rclone", "serve"], ["x"]):
        assert not is_serve_argv([arg.encode() for arg in other])


def test_destination_change_messages_name_ids_only() -> None:
    assert changed_ids('{"destination_ids": ["a1", "b2"]}') == ["a1", "b2"]
    assert changed_ids(b'{"destination_ids": ["a1"]}') == ["a1"]
    # What Redis carries is anyone's: anything but a list of names is ignored.
    for payload in (None, 7, "", "nope", "[]", '{"destination_ids": "a1"}', "{}"):
        assert changed_ids(payload) == []
    assert changed_ids('{"destination_ids": ["", 3, "a\\nb", "ok"]}') == ["ok"]
