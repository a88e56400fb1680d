"""Typed errors; each carries the exit code the edges (cli.py, steps.py) turn it into."""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """A failure the user can act on: one clear line, a known exit code."""

    exit_code = 1


class ConfigError(AgentError):
    """The data directory or the settings are missing or malformed."""


class RedisUnavailable(AgentError):
    """Redis cannot be reached."""


class AgentNotRunning(AgentError):
    """No daemon serves the agent a task was meant for."""


class UnknownAgent(AgentError):
    """The agent id names nothing in the cluster."""


class NoSuchAction(AgentError):
    """The agent has no action of that name."""

    exit_code = 8


class DestinationNotFound(AgentError):
    """No backup destination (repository) has that id."""


class CommandFailed(AgentError):
    """An external command exited non-zero."""

    def __init__(self, argv0: str, returncode: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        super().__init__(f"{argv0} exited with {returncode}: {tail}")
        self.returncode = returncode
        self.stderr = stderr


class ActionFailed(AgentError):
    """An action ran and failed: an exit code, a reason for stderr, and output to print."""

    def __init__(self, message: str, exit_code: int = 1, output: Any = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output


class ValidationFailed(AgentError):
    """Input rejected: carries the NS8-style list of {field, parameter, value, error}."""

    exit_code = 10

    def __init__(self, errors: list[dict[str, Any]], exit_code: int = 10) -> None:
        summary = ", ".join(str(e.get("error", "")) for e in errors) or "invalid input"
        super().__init__(f"validation failed: {summary}")
        self.errors = errors
        self.exit_code = exit_code


def validation_error(
    field: str, error: str, value: Any = "", parameter: str | None = None, exit_code: int = 2
) -> ValidationFailed:
    """One NS8-style validation error, as raised by action steps (default exit 2)."""
    return ValidationFailed(
        [
            {
                "field": field,
                "parameter": parameter if parameter is not None else field,
                "value": value,
                "error": error,
            }
        ],
        exit_code=exit_code,
    )


class StoredDataError(AgentError):
    """A Redis key holds data that does not parse: the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"malformed {key}: {problem}")
        self.key = key
