"""Backup destinations against real storage: add, probe, refuse, and leave Redis alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from agent.core import redis_keys
from tests.support import backends, backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


def snapshot(client: redis.Redis) -> dict[str, bytes]:
    """DUMP of every key but task records (each task, refused or not, leaves its own)."""
    raw = redis.Redis(
        connection_pool=redis.ConnectionPool(
            **client.connection_pool.connection_kwargs | {"decode_responses": False}
        )
    )
    return {
        key.decode(): raw.dump(key)
        for key in raw.keys("*")
        if not key.startswith(b"task/") and b"/tasks" not in key
    }


@pytest.fixture
def node(audited: tuple[ClusterHarness, Path]) -> ClusterHarness:
    """The one-node cluster, its daemon restarted to log every argv it runs."""
    return audited[0]


def assert_no_leak(client: redis.Redis, cluster: ClusterHarness, *secrets: str) -> None:
    """No secret in a key outside private/* (task records included), the log or any argv."""
    from tests.integration.test_backup_definitions import public_text

    texts = list(public_text(client).values())
    texts.append((cluster.nodes[1].root / "log" / "agent.log").read_text())
    argv_log = Path(cluster.nodes[1].extra_env["AGENT_ARGV_LOG"])
    texts.append(argv_log.read_text())
    assert argv_log.stat().st_size > 0
    for secret in secrets:
        assert not [text for text in texts if secret in text], secret


add = backups.api_add_destination


def refused(
    cluster: ClusterHarness,
    client: redis.Redis,
    provider: str,
    url: str,
    error: str,
    **parameters: str,
) -> None:
    before = snapshot(client)
    code, output = add(cluster, provider, url, **parameters)
    assert code == 2, output
    assert [row["error"] for row in output] == [error]
    assert snapshot(client) == before


def test_local_destination(node: ClusterHarness, redis_client: redis.Redis, tmp_path: Path) -> None:
    refused(
        node, redis_client, "local", f"local:{tmp_path}/repo", "backup_repository_not_accessible"
    )
    assert not (tmp_path / "repo").exists(), "the probe never creates the directory"
    (tmp_path / "repo").mkdir()
    code, output = add(node, "local", f"local:{tmp_path}/repo")
    assert code == 0, output
    assert len(output["password"]) == 64 and int(output["password"], 16) >= 0
    public = redis_client.hgetall(redis_keys.backup_repository(output["id"]))
    assert public == {
        "name": f"local {output['id'][:4]}",
        "provider": "local",
        "url": f"local:{tmp_path}/repo",
        "basepath": "",
    }
    assert (
        redis_client.hget(redis_keys.backup_repository_private(output["id"]), "password")
        == output["password"]
    )
    assert os.listdir(tmp_path / "repo") == [], "the probe cleans up after itself"
    refused(node, redis_client, "local", f"local:{tmp_path}/repo", "backup_repository_exists")
    with backends.read_only(tmp_path / "ro"):
        refused(node, redis_client, "local", f"local:{tmp_path}/ro", "no_write_permission")


def test_rest_destination(node: ClusterHarness, redis_client: redis.Redis, tmp_path: Path) -> None:
    (tmp_path / "rest").mkdir()
    with backends.rclone_serve("restic", tmp_path / "rest") as rest:
        user = {"rest_user": backends.USER}
        code, output = add(
            node, "rest", f"rest:{rest.url}/base", **user, rest_password=backends.PASSWORD
        )
        assert code == 0, output
        refused(
            node,
            redis_client,
            "rest",
            f"rest:{rest.url}/other",
            "no_read_permission",
            **user,
            rest_password="wrong",
        )
    port = backends.dead_port()
    refused(
        node,
        redis_client,
        "rest",
        f"rest:http://127.0.0.1:{port}/x",
        "backup_repository_not_accessible",
    )
    with (
        backends.read_only(tmp_path / "ro"),
        backends.rclone_serve("restic", tmp_path / "ro") as rest,
    ):
        refused(
            node,
            redis_client,
            "rest",
            f"rest:{rest.url}/base",
            "no_write_permission",
            **user,
            rest_password=backends.PASSWORD,
        )
    assert_no_leak(redis_client, node, backends.PASSWORD)


def webdav_conf(url: str, password: str) -> str:
    from agent.adapters import rclone

    options = f"type = webdav\nurl = {url}\nvendor = other\nuser = {backends.USER}\n"
    return f"[mydav]\n{options}pass = {rclone.obscure(password)}\n"


def test_rclone_webdav_destination(
    node: ClusterHarness, redis_client: redis.Redis, tmp_path: Path
) -> None:
    (tmp_path / "dav").mkdir()
    with backends.rclone_serve("webdav", tmp_path / "dav") as dav:
        conf = webdav_conf(dav.url, backends.PASSWORD)
        code, output = add(node, "rclone", "", rclone_conf_secret=conf, basepath="backups")
        assert code == 0, output
        saved_pass = conf.rsplit("pass = ", 1)[1].strip()
        assert (
            redis_client.hget(redis_keys.backup_repository(output["id"]), "url")
            == "rclone:webdav:127.0.0.1:backups"
        )
        assert os.listdir(tmp_path / "dav" / "backups") == []
        refused(
            node,
            redis_client,
            "rclone",
            "",
            "no_read_permission",
            rclone_conf_secret=webdav_conf(dav.url, "wrong"),
            basepath="b",
        )
    with backends.rclone_serve("webdav", tmp_path / "dav", "--read-only") as dav:
        conf = webdav_conf(dav.url, backends.PASSWORD)
        refused(
            node,
            redis_client,
            "rclone",
            "",
            "no_write_permission",
            rclone_conf_secret=conf,
            basepath="other",
        )
    conf = webdav_conf(f"http://127.0.0.1:{backends.dead_port()}", backends.PASSWORD)
    refused(
        node,
        redis_client,
        "rclone",
        "",
        "backup_repository_not_accessible",
        rclone_conf_secret=conf,
        basepath="b",
    )
    assert_no_leak(redis_client, node, saved_pass, backends.PASSWORD)


def test_generic_s3_destination(
    node: ClusterHarness, redis_client: redis.Redis, tmp_path: Path
) -> None:
    keys = {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "s3-Secret-Key-Value"}
    with backends.moto_s3(tmp_path) as s3:
        code, output = add(
            node, "generic-s3", f"s3:{s3.url}/bucket1/base", **keys, aws_default_region="us-east-1"
        )
        assert code == 0, output
    refused(
        node,
        redis_client,
        "generic-s3",
        f"s3:http://127.0.0.1:{backends.dead_port()}/bucket1",
        "backup_repository_not_accessible",
        **keys,
    )
    assert_no_leak(redis_client, node, keys["aws_secret_access_key"])


def test_generic_s3_wrong_credentials_and_read_only_user(
    node: ClusterHarness, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with backends.moto_s3_with_users(tmp_path) as (s3, writer, reader):
        url = f"s3:{s3.url}/bucket1/base"
        region = {"aws_default_region": "us-east-1"}
        wrong = {"aws_access_key_id": "AKIAWRONGKEY", "aws_secret_access_key": "wrong-Secret"}
        refused(node, redis_client, "generic-s3", url, "no_read_permission", **wrong, **region)
        refused(node, redis_client, "generic-s3", url, "no_write_permission", **reader, **region)
        code, output = add(node, "generic-s3", url, **writer, **region)
        assert code == 0, output
    assert_no_leak(redis_client, node, writer["aws_secret_access_key"])
