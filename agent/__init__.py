"""Restic-orchestrating cluster backup agent (NethServer 8 conventions).

The package's top is NS8's module-author API: a module step's `import agent` gets the
functions NS8's own `agent` package offers, with NS8's names, arguments, results and
errors (`agent.set_env`, `agent.redis_connect`, `agent.tasks.run` …). They live in
agent/ns8api/ and agent/tasks/ and are loaded on first use (PEP 562): every api-cli,
`python -m agent.cli` and step imports this file, so it imports nothing itself.
The project's own code is in the subpackages (core, adapters, runtime, records,
operations, web) under its own names.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported: it costs more than this package
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

# journald priority prefixes for a step's stderr lines (NS8's names)
SD_EMERG = "<0>"
SD_ALERT = "<1>"
SD_CRIT = "<2>"
SD_ERR = "<3>"
SD_WARNING = "<4>"
SD_NOTICE = "<5>"
SD_INFO = "<6>"
SD_DEBUG = "<7>"

# name → the agent.ns8api module that implements it
_API = {
    # the module's environment file
    "read_envfile": "envfile",
    "write_envfile": "envfile",
    "set_env": "envfile",
    "mset_env": "envfile",
    "unset_env": "envfile",
    "munset_env": "envfile",
    "dump_env": "envfile",
    "safe_open": "envfile",
    "exclusive_file_lock": "envfile",
    "slurp_file": "envfile",
    # Redis as the module
    "redis_connect": "redisconn",
    # status and progress on AGENT_COMFD
    "set_status": "comfd",
    "set_progress": "comfd",
    "set_weight": "comfd",
    "get_progress_callback": "comfd",
    "assert_exp": "comfd",
    # subprocesses and lookups
    "run_helper": "helpers",
    "resolve_agent_id": "helpers",
    "get_image_name_from_url": "helpers",
    "get_module_seq": "helpers",
    # restic in the module's name
    "prepare_restic_command": "restic",
    "run_restic": "restic",
    "get_state_volume_args": "restic",
    "get_existing_volume_args": "restic",
}
__all__ = ["SD_ALERT", "SD_CRIT", "SD_DEBUG", "SD_EMERG", "SD_ERR", "SD_INFO", "SD_NOTICE"]
__all__ += ["SD_WARNING", "agent", "tasks", *_API]


def __getattr__(name: str) -> Any:
    """Load an API name on first use; `agent.agent` is the package (NS8 modules call
    `agent.agent.get_state_volume_args()`) and `agent.tasks` NS8's task functions."""
    import importlib

    if name == "agent":
        return importlib.import_module(__name__)
    if name == "tasks":
        return importlib.import_module(f"{__name__}.tasks")
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.ns8api.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
