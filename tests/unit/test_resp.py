"""Redis URLs as redis-dump/redis-restore read them (agent/resp.py)."""

from __future__ import annotations

import pytest

from agent.adapters.resp import Address, RespError, parse_url


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1:6379/0", Address("127.0.0.1", 6379)),
        ("redis://:s3cr%40t@10.0.0.5:16379/2", Address("10.0.0.5", 16379, password="s3cr@t", db=2)),
        ("redis://user:pw@host", Address("host", 6379, username="user", password="pw")),
        ("redis://host/?db=4", Address("host", 6379, db=4)),
        (
            "unix:///run/redis.sock?db=1&password=pw",
            Address(unix_path="/run/redis.sock", password="pw", db=1),
        ),
    ],
)
def test_parse_url(url: str, address: Address) -> None:
    assert parse_url(url) == address


@pytest.mark.parametrize(
    "url", ["rediss://host:6379/0", "redis://host/notadb", "http://x", "unix://"]
)
def test_bad_urls_are_refused_without_their_password(url: str) -> None:
    with pytest.raises(RespError) as refused:
        parse_url(url.replace("//", "//u:hunter2@", 1) if "host" in url else url)
    assert "hunter2" not in str(refused.value)
