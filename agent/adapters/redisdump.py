"""`redis-dump KEY` and `redis-restore KEY [TTL]`: copy one Redis key as its DUMP payload.

Modules call these from `bin/module-dump-state` and `actions/restore-module/*` to carry a
key through a backup: the payload is Redis' own serialization (any type, binary safe),
so the bytes go through stdout/stdin untouched.  Neither typer nor redis-py here: these
run in every module's backup path and must start fast (agent/resp.py says why).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import NoReturn
from urllib.parse import quote

from agent.adapters import resp

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def client_url(env: Mapping[str, str], privileged: bool) -> str:
    """Where and as whom: in a module step (REDIS_ADDRESS or REDIS_USER set) as NS8's
    helpers connect — redis-dump as the default user to the replica, redis-restore as
    the module (agent.redis_connect's rules); elsewhere the node's REDIS_URL."""
    if "REDIS_ADDRESS" not in env and "REDIS_USER" not in env:
        return env.get("REDIS_URL") or DEFAULT_URL
    from agent.ns8api.redisconn import redis_address, redis_credentials

    host, port = redis_address(env, use_replica=not privileged)
    user, password = redis_credentials(env, privileged)
    auth = ""
    if password is not None:
        auth = f"{quote(user or 'default', safe='')}:{quote(password, safe='')}@"
    host = f"[{host}]" if ":" in host else host
    return f"redis://{auth}{host}:{port}/0"


def _client(privileged: bool) -> resp.Connection:
    return resp.connect(client_url(os.environ, privileged))


def _fail(prog: str, message: str) -> NoReturn:
    # One line, no traceback: the caller (a module script) shows stderr to the user.
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(1)


def _key(value: str) -> bytes:
    # fsencode undoes the surrogateescape decoding of argv: any byte key round-trips.
    return os.fsencode(value)


def dump_main(argv: list[str] | None = None) -> None:
    """Write the DUMP payload of KEY to stdout; print nothing if the key is missing."""
    parser = argparse.ArgumentParser(
        prog="redis-dump", description="Write the Redis DUMP payload of KEY to stdout."
    )
    parser.add_argument("key", help="the Redis key to dump")
    args = parser.parse_args(argv)
    try:
        with _client(privileged=False) as redis:
            payload = redis.command("DUMP", _key(args.key))
    except resp.RespError as exc:
        _fail(parser.prog, f"cannot dump {args.key!r}: {exc}")
    if payload is None:
        return  # missing key: empty output, which redis-restore treats as "nothing to do"
    if not isinstance(payload, bytes):
        _fail(parser.prog, f"cannot dump {args.key!r}: Redis answered {payload!r}")
    try:
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        _fail(parser.prog, "output closed before the dump was written")


def restore_main(argv: list[str] | None = None) -> None:
    """RESTORE KEY from the DUMP payload on stdin; empty stdin does nothing."""
    parser = argparse.ArgumentParser(
        prog="redis-restore", description="Restore KEY from a Redis DUMP payload read on stdin."
    )
    parser.add_argument("key", help="the Redis key to create")
    parser.add_argument(
        "ttl", nargs="?", type=int, default=0, help="time to live in ms (default 0: none)"
    )
    parser.add_argument("--replace", action="store_true", help="overwrite an existing key")
    args = parser.parse_args(argv)
    if args.ttl < 0:
        parser.error("TTL must be 0 or more")
    payload = sys.stdin.buffer.read()
    if not payload:
        return  # the key did not exist at dump time
    command: list[str | bytes | int] = ["RESTORE", _key(args.key), args.ttl, payload]
    try:
        with _client(privileged=True) as redis:
            redis.command(*command, *(["REPLACE"] if args.replace else []))
    except resp.RespError as exc:
        # e.g. "BUSYKEY Target key name already exists.", a bad checksum, Redis down
        _fail(parser.prog, f"cannot restore {args.key!r}: {exc}")
