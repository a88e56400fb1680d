"""Helpers for action step executables: stdin JSON → model, errors → NS8 exit codes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pydantic

from agent.adapters.redis_store import Context
from agent.core import disk_space
from agent.core.errors import ActionFailed, AgentError, ValidationFailed
from agent.core.masking import MASK, is_secret, mask_secrets
from agent.core.settings import load_settings

M = TypeVar("M", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class Step:
    """What a step knows about its task."""

    ctx: Context
    agent_id: str
    task_id: str
    comfd: int | None
    _last_progress: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def send(self, command: str) -> None:
        if self.comfd is not None:
            with contextlib.suppress(OSError):
                os.write(self.comfd, f"{command}\n".encode())

    def set_progress(self, percent: int) -> None:
        value = max(0, min(100, int(percent)))
        if self._last_progress.get("sent") != value:  # the same figure again says nothing
            self._last_progress["sent"] = value
            self.send(f"set-progress {value}")

    def progress_range(self, low: int, high: int) -> Callable[[str, int], None]:
        """A progress handler mapping a sub-task's 0–100 into [low, high] of this step."""
        return lambda _status, percent: self.set_progress(low + (high - low) * percent // 100)


def cancel_on_sigterm() -> threading.Event:
    """cancel-task SIGTERMs the step's process group: the returned event is set, for a step
    that stops its work (and undoes what it must) at its next check."""
    cancelled = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancelled.set())
    return cancelled


def fail_on_sigterm(message: str) -> None:
    """cancel-task SIGTERMs the step's process group: ActionFailed(message) is raised where
    the step is, for a step whose restic (same group) stops too and that only has to unwind
    (its locks and leases released by their context managers)."""

    def cancelled(*_: object) -> NoReturn:
        raise ActionFailed(message)

    signal.signal(signal.SIGTERM, cancelled)


def pydantic_errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    rows = []
    for error in exc.errors():
        path = [str(p) for p in error["loc"]]
        parameter = path[-1] if path else "(root)"
        kind = "required" if error["type"] == "missing" else error["type"]
        value = error.get("input") if kind != "required" else None
        if any(is_secret(p, value) for p in path) and value not in ("", None):
            value = MASK  # a rejected secret must not come back in the stored output
        rows.append(
            {
                "field": ".".join(path),
                "parameter": parameter,
                "value": mask_secrets(value),
                "error": f"{parameter}_{kind}",
            }
        )
    return rows


def current_step() -> Step:
    root = os.environ.get("AGENT_ROOT")
    settings = load_settings(Path(root) if root else None)
    comfd = os.environ.get("AGENT_COMFD")
    return Step(
        ctx=Context.open(settings),
        agent_id=os.environ.get("AGENT_ID", ""),
        task_id=os.environ.get("AGENT_TASK_ID", ""),
        comfd=int(comfd) if comfd and comfd.isdigit() else None,
    )


def read_input() -> Any:
    text = sys.stdin.read()
    return json.loads(text) if text.strip() else None


def step_main(handler: Callable[[Step, M], Any], model: type[M]) -> NoReturn:
    """Run handler(step, validated input); print its result as JSON; exit with NS8 codes."""
    step: Step | None = None
    # Step stderr lands in the task's error text and the daemon log.
    level = os.environ.get("AGENT_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        data = read_input()
    except ValueError as exc:  # only malformed JSON on stdin is bad input
        print(f"bad input: {exc}", file=sys.stderr)
        sys.exit(10)
    try:
        request = model.model_validate(data)
        step = current_step()
        result = handler(step, request)
        if result is not None:
            print(json.dumps(result))
        sys.exit(0)
    except pydantic.ValidationError as exc:
        _fail_validation(step, ValidationFailed(pydantic_errors(exc)))
    except ValidationFailed as exc:
        _fail_validation(step, exc)
    except ActionFailed as exc:
        if exc.output is not None:
            print(json.dumps(exc.output))
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except AgentError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except ValueError as exc:  # a bug or a surprise inside the step: a failure, not bad input
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # the node's disk full, a file that went away: one clear line
        note = disk_space.full_disk_note(step.ctx.settings.root) if step is not None else ""
        print(f"{disk_space.describe_os_error(exc)}{note}", file=sys.stderr)
        sys.exit(1)


def _fail_validation(step: Step | None, exc: ValidationFailed) -> NoReturn:
    comfd = os.environ.get("AGENT_COMFD")
    if step is not None:
        step.send("set-status validation-failed")
    elif comfd and comfd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(comfd), b"set-status validation-failed\n")
    print(json.dumps(exc.errors))
    sys.exit(exc.exit_code)
