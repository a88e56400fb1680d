"""The sealed cluster dump: passphrase, tampering, truncation, hostile content."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from agent.core import dump_crypto
from agent.operations import cluster_dump

FAST = (10, 8, 1)  # the smallest cost unseal accepts: keeps these tests quick
CLUSTER_UUID = "0b6f3f6e-8a4e-4a47-9d55-6a1d2a9f3c11"
DESTINATION = "48ce000a-79b7-5fe6-8558-177fd70c27b4"


def sample() -> dict[str, Any]:
    return {
        "format": "backup-agent-cluster-dump",
        "version": 1,
        "created": 1_700_000_000,
        "cluster": {"uuid": CLUSTER_UUID, "node_count": 1, "leader": 1},
        "destinations": {
            DESTINATION: {
                "public": {"name": "disk", "provider": "local", "url": "local:/srv/b"},
                "private": {"password": "r" * 64},
            }
        },
        "backups": {
            "1": {
                "public": {"name": "nightly", "repository": DESTINATION, "instances": ""},
                "private": {"ping_url": "https://hc-ping.com/abc"},
            }
        },
        "backup_sequence": 1,
        "notification_targets": {
            "ops": {"public": {"name": "ops"}, "private": {"url": "json://h/p"}}
        },
        "modules": {
            "minwiki1": {
                "uuid": "6f1c0d7e-2b7a-4c55-8e51-0c1f6d1d2e3f",
                "image_url": "localhost/minwiki:latest",
                "node": 1,
            }
        },
    }


def sealed(document: dict[str, Any], passphrase: str = "correct horse") -> bytes:
    plain = gzip.compress(json.dumps(document).encode(), mtime=0)
    return dump_crypto.seal(plain, passphrase, cost=FAST)


def test_round_trip_keeps_every_record() -> None:
    dump = cluster_dump.decode(sealed(sample()), "correct horse")
    assert dump.destinations[DESTINATION].private["password"] == "r" * 64
    assert dump.backups["1"].private["ping_url"] == "https://hc-ping.com/abc"
    assert dump.notification_targets["ops"].private["url"] == "json://h/p"
    assert dump.modules["minwiki1"].image_url == "localhost/minwiki:latest"


def test_the_same_dump_seals_differently_each_time() -> None:
    """A fresh salt and nonce per file: two uploads never share a key stream."""
    assert sealed(sample()) != sealed(sample())


def test_a_wrong_passphrase_is_told_apart_from_damage() -> None:
    data = sealed(sample())
    with pytest.raises(dump_crypto.WrongPassphrase):
        cluster_dump.decode(data, "Correct horse")
    flipped = bytearray(data)
    flipped[-40] ^= 0x01
    with pytest.raises(dump_crypto.TamperedDump):
        cluster_dump.decode(bytes(flipped), "correct horse")
    header_changed = bytearray(data)
    header_changed[len(dump_crypto.MAGIC) + 5] ^= 0x01  # the salt: another key entirely
    with pytest.raises(dump_crypto.WrongPassphrase):
        cluster_dump.decode(bytes(header_changed), "correct horse")


@pytest.mark.parametrize("cut", [0, 10, dump_crypto.HEADER_SIZE, -1])
def test_a_truncated_file_is_refused(cut: int) -> None:
    data = sealed(sample())
    with pytest.raises((dump_crypto.NotADump, dump_crypto.TamperedDump)):
        cluster_dump.decode(data[:cut], "correct horse")


def test_other_files_and_hostile_costs_are_refused_before_any_work() -> None:
    with pytest.raises(dump_crypto.NotADump, match="not an encrypted"):
        cluster_dump.decode(b"-----BEGIN PGP MESSAGE-----" + b"x" * 200, "p")
    data = bytearray(sealed(sample()))
    data[len(dump_crypto.MAGIC)] = 40  # 2**40 scrypt rounds: refused, not attempted
    with pytest.raises(dump_crypto.NotADump, match="unsupported key parameters"):
        cluster_dump.decode(bytes(data), "correct horse")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("notification_targets",), {"../../x": {"public": {}}}),
        (("destinations",), {"not-a-uuid": {"public": {}}}),
        (("backups",), {"0": {"public": {}}}),
        (("backups",), {"1 2": {"public": {}}}),
        (("modules",), {"Evil Module": sample()["modules"]["minwiki1"]}),
        (("version",), 2),
        (("cluster", "uuid"), "x"),
    ],
)
def test_names_that_would_become_odd_redis_keys_are_refused(
    path: tuple[str, ...], value: Any
) -> None:
    document = sample()
    holder = document
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = value
    with pytest.raises(dump_crypto.NotADump, match="not valid"):
        cluster_dump.decode(sealed(document), "correct horse")


def test_a_gzip_bomb_stops_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_dump, "MAX_PLAIN_BYTES", 1000)
    plain = gzip.compress(b" " * 5000, mtime=0)
    with pytest.raises(dump_crypto.NotADump, match="larger"):
        cluster_dump.decode(dump_crypto.seal(plain, "p", cost=FAST), "p")
