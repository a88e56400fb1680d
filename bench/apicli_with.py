"""api-cli on a chosen Redis client, for item 4's side-by-side: `python bench/apicli_with.py
resp|redis-py ARGS...` is api-cli ARGS with agent/resp.py or with redis-py."""

from __future__ import annotations

import sys


def main() -> None:
    client, sys.argv[1:] = sys.argv[1], sys.argv[2:]
    from agent import apicli
    from agent.adapters import resp

    if client == "redis-py":
        from agent.adapters.redis_store import connect

        apicli.main(connect)
    elif client == "resp":
        apicli.main(resp.client)
    else:
        sys.exit(f"apicli_with: unknown client {client!r} (resp or redis-py)")


if __name__ == "__main__":
    main()
