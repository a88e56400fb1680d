"""Item 4: api-cli's round trip, where its time goes, and its two Redis clients."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import VENV_BIN, Series, run
from bench.scenarios import Bench, timed


def round_trips(bench: Bench, calls: int = 50) -> None:
    """Item 4: api-cli round trip (process start included) of no-op actions and list-backups."""
    cluster = bench.cluster
    noop = cluster.root / "cluster" / "actions" / "noop"
    noop.mkdir(parents=True, exist_ok=True)
    (noop / "10noop").write_text("#!/bin/sh\nexit 0\n")
    (noop / "10noop").chmod(0o755)
    api = str(VENV_BIN / "api-cli")
    results: dict[str, Any] = {}

    def trip(name: str, argv: list[str]) -> None:
        series = Series(name)
        for _ in range(calls):
            series.samples.append(timed(lambda: run(argv, cluster.env)))
        p50, p95 = series.percentile(50), series.percentile(95)
        results[name] = series.to_json() | {"p50": p50, "p95": p95}
        bench.log(f"{name}: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")

    python = str(VENV_BIN / "python")
    # Where api-cli's time goes: the interpreter, then its imports (redis; typer, which
    # pulls in pydantic), then the task itself (in-process figures below).
    trip("python_startup_only", [python, "-c", "pass"])
    # The package's top holds NS8's module-author API and must stay light; api-cli's imports
    # are its start-up beyond the interpreter.
    trip("import_agent", [python, "-c", "import agent"])
    trip("import_apicli", [python, "-c", "import agent.apicli"])
    trip("import_redis_agent_tasks", [python, "-c", "import agent.runtime.tasks"])
    trip("import_agent_cli_typer", [python, "-c", "import agent.cli, typer.main, typer._adapters"])
    trip("import_step_models", [python, "-c", "import agent.core.models, agent.runtime.steps"])
    trip("list-actions", [api, "run", "list-actions"])
    trip("noop_step", [api, "run", "noop"])
    destination, _ = cluster.add_destination(bench.work / "listed")
    existing = len(cluster.api("list-backups")["backups"])
    for number in range(max(0, 100 - existing)):
        cluster.add_backup(destination, [bench.module], f"listed{number}")
    results["backups_defined"] = len(cluster.api("list-backups")["backups"])
    trip("list-backups", [api, "run", "list-backups"])
    results["clients"] = _client_trips(bench, calls)
    results["in_process"] = _in_process_trips(bench, calls)
    bench.results["round_trip"] = results


def _client_trips(bench: Bench, calls: int) -> dict[str, Any]:
    """api-cli on agent/resp.py beside api-cli on redis-py, call after call in turns (so
    the machine's drift lands on both): what resp.py saves, or not."""
    script = str(Path(__file__).with_name("apicli_with.py"))
    python = str(VENV_BIN / "python")
    found: dict[str, Any] = {}
    for action in ("list-actions", "noop", "list-backups"):
        series = {client: Series(f"{action} {client}") for client in ("resp", "redis-py")}
        for number in range(calls):
            order = ("resp", "redis-py") if number % 2 == 0 else ("redis-py", "resp")
            for client in order:
                argv = [python, script, client, "run", action]
                series[client].samples.append(timed(partial(run, argv, bench.cluster.env)))
        found[action] = {
            client: s.to_json() | {"p50": s.percentile(50), "p95": s.percentile(95)}
            for client, s in series.items()
        }
        bench.log(
            f"{action}: resp p50 {series['resp'].percentile(50) * 1000:.0f} ms, redis-py p50 "
            f"{series['redis-py'].percentile(50) * 1000:.0f} ms"
        )
    return found


def _in_process_trips(bench: Bench, calls: int) -> dict[str, Any]:
    """The same trips without api-cli's interpreter start: what the agent itself costs."""
    from agent.adapters.redis_store import connect
    from agent.core.settings import load_settings
    from agent.runtime import tasks

    redis = connect(load_settings(bench.cluster.root).redis_url)
    found: dict[str, Any] = {}
    for action in ("list-actions", "noop", "list-backups"):
        series = Series(action)
        for _ in range(calls):
            request = tasks.TaskRequest("cluster", action, None)
            series.samples.append(timed(partial(tasks.run, redis, request, timeout=60)))
        found[action] = {"p50": series.percentile(50), "p95": series.percentile(95)}
        bench.log(f"in-process {action}: p50 {series.percentile(50) * 1000:.0f} ms")
    return found
