"""Pure mapping of destinations to restic/rclone targets, ids, names, obscuring."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.adapters import rclone
from agent.adapters.destinations import Destination, rclone_target, restic_target, s3_options
from agent.core.destination_rules import LocalPolicy, local_directory_allowed
from agent.core.models import AddBackupRepositoryRequest
from agent.operations.destination_input import default_name, prepare, stable_uuid

NO_LOCAL = LocalPolicy((), "/var/lib/backup-agent")


def destination(provider: str, url: str, **parameters: str) -> Destination:
    return Destination("id", "name", provider, url, "pw", parameters)


def test_stable_uuid_ignores_name_and_password() -> None:
    request = {"provider": "backblaze", "url": "b2:bucket", "parameters": {"b2_account_id": "a"}}
    first = stable_uuid({**request, "name": "x", "password": "y"})
    assert first == stable_uuid({**request, "name": "", "password": ""})
    assert first != stable_uuid({**request, "url": "b2:other"})


def test_default_names_follow_ns8() -> None:
    assert default_name("aws", "s3:s3.amazonaws.com/bucket/p", "abcd-") == "AWS bucket/p"
    assert default_name("backblaze", "b2:bucket", "abcd-") == "Backblaze bucket"
    assert default_name("local", "local:/x", "abcdef") == "local abcd"


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
def test_obscure_is_what_rclone_reveals() -> None:
    obscured = rclone.obscure("s3cr3t ü")
    revealed = subprocess.run(["rclone", "reveal", "--", obscured], capture_output=True, text=True)
    assert revealed.stdout.strip() == "s3cr3t ü"
    assert rclone.reveal(obscured) == "s3cr3t ü"


def test_restic_targets_keep_secrets_in_env() -> None:
    b2 = restic_target(
        destination("backblaze", "b2:bkt/base", b2_account_id="i", b2_account_key="k"), "m/u"
    )
    assert b2.repository == "b2:bkt:base/m/u" and b2.env == {
        "B2_ACCOUNT_ID": "i",
        "B2_ACCOUNT_KEY": "k",
    }
    s3 = destination(
        "generic-s3",
        "s3:http://127.0.0.1:9000/bkt",
        aws_access_key_id="a",
        aws_secret_access_key="s",
    )
    assert restic_target(s3, "m/u").repository == "s3:http://127.0.0.1:9000/bkt/m/u"
    aws = destination(
        "aws",
        "s3:s3.amazonaws.com/bkt/p",
        aws_access_key_id="a",
        aws_secret_access_key="s",
        aws_default_region="eu-west-1",
    )
    target = restic_target(aws, "m/u")
    assert (
        target.repository == "s3:s3.amazonaws.com/bkt/p/m/u"
        and target.env["AWS_DEFAULT_REGION"] == "eu-west-1"
    )
    azure = restic_target(
        destination("azure", "azure:ctr/p", azure_account_name="n", azure_account_key="k"), "m/u"
    )
    assert azure.repository == "azure:ctr:/p/m/u"
    local = restic_target(destination("local", "local:/srv/backup"), "m/u")
    assert local.repository == "/srv/destination/m/u" and local.volumes == (
        ("/srv/backup", "/srv/destination"),
    )
    rest = restic_target(
        destination("rest", "rest:http://h:8000/base/", rest_user="u", rest_password="p"), "m/u"
    )
    assert (
        rest.repository == "rest:http://h:8000/base/m/u" and rest.env["RESTIC_REST_PASSWORD"] == "p"
    )
    smb = restic_target(
        destination(
            "smb", "smb:share/dir", smb_host="h", smb_user="u", smb_pass="p", smb_domain="D"
        ),
        "m/u",
    )
    assert smb.repository == "rclone:dest:share/dir/m/u"
    assert rclone.reveal(smb.env["RCLONE_CONFIG_DEST_PASS"]) == "p"
    for found in (b2, restic_target(s3, "x"), target, azure, rest, smb):
        assert "RESTIC" not in found.repository and "=" not in found.repository


def test_rclone_targets_and_s3_quirks() -> None:
    dav = destination("cluster", "webdav:http://10.5.4.1:4694/sub")
    assert rclone_target(dav, "x") == (
        "dest:sub/x",
        {
            "RCLONE_CONFIG_DEST_TYPE": "webdav",
            "RCLONE_CONFIG_DEST_URL": "http://10.5.4.1:4694",
            "RCLONE_CONFIG_DEST_VENDOR": "other",
        },
    )
    wasabi = s3_options(
        destination(
            "generic-s3",
            "s3:s3.eu-central-2.wasabisys.com/b",
            aws_access_key_id="a",
            aws_secret_access_key="s",
        )
    )
    assert wasabi["provider"] == "Wasabi" and wasabi["region"] == "eu-central-2"
    synology = s3_options(
        destination(
            "generic-s3",
            "s3:eu-002.s3.synologyc2.net/b",
            aws_access_key_id="a",
            aws_secret_access_key="s",
        )
    )
    assert synology["no_check_bucket"] == "true" and synology["region"] == "eu-002"
    assert rclone_target(destination("local", "local:/srv/b"), "m") == ("/srv/destination/m", {})


def test_alter_keeps_stored_secrets_when_empty() -> None:
    request = AddBackupRepositoryRequest(
        provider="backblaze",
        name="",
        url="b2:bkt",
        password="",
        parameters={"b2_account_id": "i", "b2_account_key": "new"},
    )
    stored = prepare(request, "abcd", None, NO_LOCAL).destination
    again = AddBackupRepositoryRequest(
        provider="backblaze",
        name="",
        url="b2:bkt",
        password="",
        parameters={"b2_account_id": "i2", "b2_account_key": ""},
    )
    altered = prepare(again, "abcd", stored, NO_LOCAL)
    assert altered.private["b2_account_key"] == "new" and altered.private["b2_account_id"] == "i2"
    assert altered.destination.password == stored.password and len(stored.password) == 64


def test_local_snapshot_names_lists_every_snapshot_file_or_says_it_cannot(
    tmp_path: Path,
) -> None:
    from agent.adapters.destinations import local_snapshot_names

    local = destination("local", f"local:{tmp_path}")
    assert local_snapshot_names(local, "minwiki/u1") == []  # no repository yet
    snapshots = tmp_path / "minwiki" / "u1" / "snapshots"
    snapshots.mkdir(parents=True)
    assert local_snapshot_names(local, "minwiki/u1") == []
    (snapshots / "b").write_text("y")
    (snapshots / "a").write_text("x")
    (snapshots / "sub").mkdir()
    assert local_snapshot_names(local, "minwiki/u1") == ["a", "b"]
    remote = destination("generic-s3", "s3:host/bucket")
    assert local_snapshot_names(remote, "minwiki/u1") is None


def test_only_the_import_scratch_dir_inside_the_data_dir_is_reachable() -> None:
    policy = LocalPolicy((), "/var/lib/backup-agent", "/var/lib/backup-agent/imports")
    assert local_directory_allowed("/var/lib/backup-agent/imports/t0k3n/repo", policy)
    assert not local_directory_allowed("/var/lib/backup-agent/imports", policy)
    assert not local_directory_allowed("/var/lib/backup-agent/redis", policy)
    assert not local_directory_allowed("/var/lib/backup-agent", policy)
