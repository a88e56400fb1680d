"""What the short-lived entry points import. api-cli starts once per call, and the package's
top (NS8's module-author API) is imported by every module's Python steps: each module they
pull in is start-up time paid on every call (bench/README.md, item 4)."""

from __future__ import annotations

import json
import subprocess
import sys

# Heavy for a process that lives a fraction of a second: pydantic (~0.2-1 s on a busy
# node), redis-py (asyncio, importlib.metadata), typer and jinja2.
HEAVY = ("pydantic", "redis", "typer", "jinja2", "asyncio")


def imported_by(statement: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after statement."""
    probe = f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return set(json.loads(done.stdout))


def test_the_package_top_imports_nothing_heavy() -> None:
    loaded = imported_by("import agent")
    assert not {name for name in loaded if name.split(".")[0] in HEAVY}


def test_api_cli_imports_only_the_task_client() -> None:
    loaded = imported_by("import agent.apicli")
    assert not {name for name in loaded if name.split(".")[0] in HEAVY}
    # Needed only off api-cli's path: the settings file (when REDIS_URL is not given), the
    # queue-entry parser (withdrawing a task), threads (fanning out), a lease holder's id.
    assert not loaded & {"agent.core.settings", "agent.runtime.task_input", "threading"}
    # dataclasses imports inspect (~17 ms): api-cli's records are named tuples.
    assert "dataclasses" not in loaded
