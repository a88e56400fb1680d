"""NS8's Redis shell helpers: `redis-exec`, `redis-get`, `redis-hgetall`.

They print what NS8's print: Python's print() of redis-py's reply (`None`, `True`,
`['a', 'b']`), `field=value` lines for a hash. A Redis error is one line on stderr and
exit 1. (`redis-dump`/`redis-restore` are agent/adapters/redisdump.py.)
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


def parse_command_lines(lines: Sequence[str]) -> list[list[str]]:
    """redis-exec's stdin: one command a line, words split at spaces, '"' quoting."""
    commands = []
    for fields in csv.reader(lines, delimiter=" ", quotechar='"', skipinitialspace=True):
        words = [field for field in fields if field != ""]
        if words:
            commands.append(words)
    return commands


def _fail(prog: str, exc: Exception) -> NoReturn:
    print(f"{prog}: {exc}", file=sys.stderr)
    sys.exit(1)


def _usage(prog: str, usage: str) -> NoReturn:
    print(f"usage: {prog} {usage}", file=sys.stderr)
    sys.exit(2)


def redis_exec(argv: Sequence[str], stdin_lines: Sequence[str]) -> list[Any]:
    """The replies of one command (argv) or, without argv, of stdin's commands run in one
    MULTI/EXEC; as the privileged module user."""
    from agent.ns8api.redisconn import redis_connect

    rdb = redis_connect(privileged=True)
    if argv:
        return [rdb.execute_command(*argv)]
    commands = parse_command_lines(stdin_lines)
    if not commands:
        return []
    with rdb.pipeline(transaction=True) as pipe:
        for words in commands:
            pipe.execute_command(*words)
        return list(pipe.execute())


def redis_exec_main(argv: Sequence[str] | None = None) -> None:
    """redis-exec [CMD ARG…]: print each reply."""
    import redis

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        _usage("redis-exec", "[COMMAND ARG…]  (no args: commands on stdin, one MULTI/EXEC)")
    try:
        replies = redis_exec(args, [] if args else sys.stdin.read().splitlines())
    except redis.RedisError as exc:
        _fail("redis-exec", exc)
    for reply in replies:
        print(reply)


def redis_get_main(argv: Sequence[str] | None = None) -> None:
    """redis-get KEY: print the value or None."""
    import redis

    from agent.ns8api.redisconn import redis_connect

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        _usage("redis-get", "KEY")
    try:
        print(redis_connect().get(args[0]))
    except redis.RedisError as exc:
        _fail("redis-get", exc)


def redis_hgetall_main(argv: Sequence[str] | None = None) -> None:
    """redis-hgetall KEY: print field=value lines."""
    import redis

    from agent.ns8api.redisconn import redis_connect

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        _usage("redis-hgetall", "KEY")
    try:
        values = redis_connect().hgetall(args[0])
    except redis.RedisError as exc:
        _fail("redis-hgetall", exc)
    for field, value in values.items():
        print(f"{field}={value}")
