"""api-cli: run an action of any agent and print its result.

An edge like cli.py, but on argparse: api-cli is started once per call, and importing
typer (with pydantic) doubled the round trip of a small action.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from agent.adapters import resp
from agent.adapters.redis_api import TaskClient, describe_url
from agent.core import redis_keys
from agent.core.errors import AgentError, RedisUnavailable
from agent.runtime import tasks


def fail(prog: str, message: str, code: int) -> NoReturn:
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(code)


def guarded(prog: str, main: Callable[[], Any]) -> None:
    """Run main; turn our errors and Redis trouble into one line and an exit code."""
    try:
        main()
    except AgentError as exc:
        fail(prog, str(exc), exc.exit_code)
    except resp.RespConnectionError as exc:
        fail(prog, f"Redis connection failed: {exc}", 1)
    except resp.RespError as exc:
        fail(prog, f"Redis refused a command: {exc}", 1)
    except KeyboardInterrupt:
        fail(prog, "interrupted", 130)


Connect = Callable[[str], TaskClient]


def client_redis(connect: Connect = resp.client) -> TaskClient:
    """api-cli's own small client (agent/resp.py) unless told otherwise: redis-py's import
    alone costs more than the rest of a small round trip (bench/README.md, item 4)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        from agent.core import settings_file  # only without REDIS_URL

        url = settings_file.redis_url(settings_file.default_root())
    try:
        return connect(url)
    except resp.RespConnectionError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {describe_url(url)}: {exc}") from None
    except resp.RespError as exc:  # NOAUTH, WRONGPASS: the URL's credentials
        raise RedisUnavailable(f"Redis at {describe_url(url)} refused: {exc}") from None


def read_data(data: str) -> Any:
    text = sys.stdin.read() if data == "-" else data
    try:
        return json.loads(text)
    except ValueError as exc:
        raise AgentError(f"--data is not valid JSON: {exc}") from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_action(args: argparse.Namespace) -> None:
    from agent.apicli_view import ProgressBar

    # SIGTERM (a service stopped, `timeout`, a supervisor) cancels the task as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    agent_id, action_name = redis_keys.split_action(args.action, args.agent)
    payload = read_data(args.data)
    redis = client_redis(args.connect)
    request = tasks.TaskRequest(agent_id, action_name, payload)
    if args.nowait:
        print(tasks.submit(redis, request))
        return
    watcher = tasks.start(redis, request)
    bar = ProgressBar(f"{agent_id}/{action_name}")
    try:
        result = watcher.wait(bar.update)
    except KeyboardInterrupt:
        bar.close()
        print(f"api-cli: cancelling task {watcher.task_id}", file=sys.stderr)
        tasks.cancel(redis, agent_id, watcher.task_id)
        retry = tasks.TaskWatcher(redis, agent_id)
        retry.subscribe(watcher.task_id)
        result = retry.wait(timeout=60)
    finally:
        bar.close()
    if args.raw:
        sys.stdout.write(result.raw_output)
    elif result.raw_output.strip():
        print(json.dumps(result.output))
    if args.verbose:
        print(f"task {agent_id}/{result.task_id} exit {result.exit_code}", file=sys.stderr)
    if result.error and (args.verbose or result.exit_code != 0):
        sys.stderr.write(result.error if result.error.endswith("\n") else result.error + "\n")
    sys.exit(result.exit_code)


def list_actions(args: argparse.Namespace) -> None:
    result = tasks.run(
        client_redis(args.connect),
        tasks.TaskRequest(args.agent, "list-actions", None),
        timeout=60,
    )
    for name in result.output if isinstance(result.output, list) else []:
        print(name)
    sys.exit(result.exit_code)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="api-cli", description="Run actions of the cluster's agents."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run ACTION (or AGENT/ACTION) and print its output",
        description="Run ACTION on an agent; exit with the task's code.",
    )
    run.add_argument("action", help="ACTION or AGENT/ACTION, e.g. node/1/run-backup")
    run.add_argument("-a", "--agent", default=redis_keys.CLUSTER, help="agent id (cluster)")
    run.add_argument("-d", "--data", default="null", help="JSON input, or - for stdin")
    run.add_argument("--nowait", action="store_true", help="print the task id and exit")
    run.add_argument("--raw", action="store_true", help="print the output as it is")
    run.add_argument("--verbose", action="store_true", help="also print the error text")
    run.set_defaults(handler=run_action)
    listing = commands.add_parser("list-actions", help="list the actions of an agent")
    listing.add_argument("agent", nargs="?", default=redis_keys.CLUSTER, help="agent id")
    listing.set_defaults(handler=list_actions)
    return top


def main(connect: Connect = resp.client) -> None:
    """connect: how to reach Redis (the bench passes redis-py's to compare the two)."""
    args = parser().parse_args()
    args.connect = connect
    guarded("api-cli", lambda: args.handler(args))
