"""redis-dump / redis-restore entry points, run as real subprocesses against Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
BINARY = b"\x00head\nline\r\n\xff\xfe\x00tail\x00" * 100


def _run(
    entry: str, args: list[str], url: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    # Same as the console scripts: argv[1:] are the arguments, REDIS_URL from env.
    code = f"from agent.adapters.redisdump import {entry}; {entry}()"
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=30,
        check=False,
    )


def dump(key: str, url: str) -> subprocess.CompletedProcess[bytes]:
    return _run("dump_main", [key], url)


def restore(args: list[str], payload: bytes, url: str) -> subprocess.CompletedProcess[bytes]:
    return _run("restore_main", args, url, payload)


def assert_one_line_error(proc: subprocess.CompletedProcess[bytes], *needles: str) -> None:
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    # Unique keys: the tests never depend on a flushed database.
    return f"test-redisdump/{uuid.uuid4().hex}"


def test_binary_string_survives(r: redis.Redis, redis_url: str, prefix: str) -> None:
    r.set(f"{prefix}/src", BINARY)
    out = dump(f"{prefix}/src", redis_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == r.dump(f"{prefix}/src")

    back = restore([f"{prefix}/dst"], out.stdout, redis_url)
    assert back.returncode == 0, back.stderr
    assert r.get(f"{prefix}/dst") == BINARY
    assert r.ttl(f"{prefix}/dst") == -1  # default TTL 0: persistent


def test_hash_and_other_types_survive(r: redis.Redis, redis_url: str, prefix: str) -> None:
    r.hset(f"{prefix}/hash", mapping={b"title": b"Wiki\n", b"bin\x00field": BINARY})
    r.rpush(f"{prefix}/list", b"a", b"\x00", BINARY)
    r.sadd(f"{prefix}/set", b"x", b"y\n")
    r.zadd(f"{prefix}/zset", {b"m1": 1.5, b"m\x002": -3})
    for kind in ("hash", "list", "set", "zset"):
        out = dump(f"{prefix}/{kind}", redis_url)
        assert out.returncode == 0, out.stderr
        back = restore([f"{prefix}/{kind}-copy"], out.stdout, redis_url)
        assert back.returncode == 0, back.stderr
    assert r.hgetall(f"{prefix}/hash-copy") == {b"title": b"Wiki\n", b"bin\x00field": BINARY}
    assert r.lrange(f"{prefix}/list-copy", 0, -1) == [b"a", b"\x00", BINARY]
    assert r.smembers(f"{prefix}/set-copy") == {b"x", b"y\n"}
    assert r.zrange(f"{prefix}/zset-copy", 0, -1, withscores=True) == [
        (b"m\x002", -3.0),
        (b"m1", 1.5),
    ]


def test_ttl_argument(r: redis.Redis, redis_url: str, prefix: str) -> None:
    r.set(f"{prefix}/src", b"v")
    payload = dump(f"{prefix}/src", redis_url).stdout
    back = restore([f"{prefix}/dst", "600000"], payload, redis_url)
    assert back.returncode == 0, back.stderr
    pttl = r.pttl(f"{prefix}/dst")
    assert isinstance(pttl, int) and 0 < pttl <= 600000


def test_missing_key_dumps_nothing(r: redis.Redis, redis_url: str, prefix: str) -> None:
    out = dump(f"{prefix}/absent", redis_url)
    assert out.returncode == 0
    assert out.stdout == b""
    assert out.stderr == b""
    # ...and restoring that empty dump is a no-op, not an error.
    back = restore([f"{prefix}/absent-copy"], out.stdout, redis_url)
    assert back.returncode == 0, back.stderr
    assert r.exists(f"{prefix}/absent-copy") == 0


def test_existing_key_needs_replace(r: redis.Redis, redis_url: str, prefix: str) -> None:
    r.hset(f"{prefix}/src", mapping={b"title": b"new"})
    r.hset(f"{prefix}/dst", mapping={b"title": b"old"})
    payload = dump(f"{prefix}/src", redis_url).stdout

    refused = restore([f"{prefix}/dst"], payload, redis_url)
    assert_one_line_error(refused, "redis-restore", "BUSYKEY")
    assert r.hgetall(f"{prefix}/dst") == {b"title": b"old"}

    replaced = restore([f"{prefix}/dst", "--replace"], payload, redis_url)
    assert replaced.returncode == 0, replaced.stderr
    assert r.hgetall(f"{prefix}/dst") == {b"title": b"new"}


def test_bad_payload_fails_cleanly(r: redis.Redis, redis_url: str, prefix: str) -> None:
    bad = restore([f"{prefix}/dst"], b"not a dump payload\n", redis_url)
    assert_one_line_error(bad, "redis-restore")
    assert r.exists(f"{prefix}/dst") == 0


def test_redis_down_fails_cleanly(prefix: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    assert_one_line_error(dump(f"{prefix}/k", url), "redis-dump")
    assert_one_line_error(restore([f"{prefix}/k"], b"x", url), "redis-restore")


def test_credentials_and_database_from_the_url(r: redis.Redis, redis_url: str, prefix: str) -> None:
    """Private clusters give modules redis://:password@…/N URLs; ACL users work too."""
    user, password = f"dumper-{uuid.uuid4().hex[:8]}", "p@ss:w/rd"
    r.acl_setuser(user, enabled=True, passwords=[f"+{password}"], commands=["+@all"], keys=["*"])
    try:
        other_db = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
        other_db.set(f"{prefix}/k", BINARY)
        host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
        url = f"redis://{user}:{quote(password, safe='')}@{host_port}/3"
        out = dump(f"{prefix}/k", url)
        assert out.returncode == 0, out.stderr
        back = restore([f"{prefix}/copy"], out.stdout, url)
        assert back.returncode == 0, back.stderr
        assert other_db.get(f"{prefix}/copy") == BINARY
        assert r.exists(f"{prefix}/copy") == 0  # database 0 untouched

        wrong = f"redis://{user}:nope@{host_port}/3"
        assert_one_line_error(dump(f"{prefix}/k", wrong), "redis-dump", "WRONGPASS")
    finally:
        r.acl_deluser(user)
