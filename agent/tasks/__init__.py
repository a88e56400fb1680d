"""NS8's `agent.tasks`: run actions of any agent from a module step and wait for them.

`run`, `runp`, `runp_brief`, `run_nowait` and `runp_nowait` take NS8's arguments and keyword
parameters and return NS8's result shape (`{"output", "error", "exit_code"}`, output
JSON-decoded when it can be). They go through the project's own task client
(agent/runtime/tasks.py) over Redis with the step's credentials: this project has no
separate HTTP api-server, so `endpoint`, `tls_verify` and `auth_token` are accepted and
change nothing, and so is any other keyword NS8 would ignore.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from agent.tasks.exceptions import (
    TaskError,
    TaskRetryAbort,
    TaskRetryError,
    TaskRetryPubSubDisconnect,
    TaskRetryWsDisconnect,
    TaskStatusNotFound,
    TaskSubmissionCheckFailed,
)

if TYPE_CHECKING:
    from agent.runtime.tasks import TaskRequest, TaskResult, TaskWatcher

__all__ = [
    "TaskError",
    "TaskRetryAbort",
    "TaskRetryError",
    "TaskRetryPubSubDisconnect",
    "TaskRetryWsDisconnect",
    "TaskStatusNotFound",
    "TaskSubmissionCheckFailed",
    "run",
    "run_nowait",
    "runp",
    "runp_brief",
    "runp_nowait",
]
Task = dict[str, Any]


def run(agent_id: str, action: str, data: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Run one action of agent_id and wait: {'output', 'error', 'exit_code'}; raises
    a TaskError when it cannot be submitted or followed."""
    task = {"agent_id": agent_id, "action": action, "data": {} if data is None else data}
    result = runp([task], **kwargs)[0]
    assert isinstance(result, dict)
    return result


def runp(tasks: Sequence[Task], **kwargs: Any) -> list[dict[str, Any] | Exception]:
    """Run the tasks at once and wait for all: one result per task, in order. With more
    than one task a task's exception takes its place in the list; with one it is raised.
    SIGTERM meanwhile cancels the pending ones and submits on_sigterm_tasks."""
    redis = _connect()
    requests = [_request(task, kwargs) for task in tasks]
    check = int(kwargs.get("check_idle_time", 8) or 0) > 0
    outcomes: list[dict[str, Any] | Exception | None] = [None] * len(requests)
    watchers: list[TaskWatcher | None] = [None] * len(requests)
    for index, request in enumerate(requests):
        try:
            watchers[index] = _start(redis, request, check)
        except TaskError as exc:
            if len(requests) == 1:
                raise
            outcomes[index] = exc
    progress = _Progress(len(requests), kwargs.get("progress_callback"))
    threads = [
        threading.Thread(target=_follow, args=(watcher, index, outcomes, progress), daemon=True)
        for index, watcher in enumerate(watchers)
        if watcher is not None
    ]
    for thread in threads:
        thread.start()
    with _on_sigterm() as terminated:
        handled = False
        while any(thread.is_alive() for thread in threads):
            if terminated.is_set() and not handled:
                handled = True
                _cancel_pending(redis, watchers, outcomes)
                if kwargs.get("on_sigterm_tasks"):
                    runp_nowait(kwargs["on_sigterm_tasks"], extra=kwargs.get("extra"))
            for thread in threads:
                thread.join(timeout=0.2)
    results: list[dict[str, Any] | Exception] = []
    for outcome in outcomes:
        if outcome is None:
            outcome = TaskStatusNotFound("no result")
        if isinstance(outcome, Exception) and len(requests) == 1:
            raise outcome
        results.append(outcome)
    return results


def runp_brief(tasks: Sequence[Task], **kwargs: Any) -> int:
    """runp, then the number of tasks that failed, each reported on stderr."""
    from agent.ns8api.comfd import SD_ERR

    failures = 0
    for task, result in zip(tasks, runp(tasks, **kwargs), strict=True):
        if isinstance(result, Exception):
            print(f"{SD_ERR}Task {task['action']} run failed: {result}", file=sys.stderr)
            failures += 1
        elif result["exit_code"] != 0:
            print(
                f"{SD_ERR}Task {task['action']} failed with exit code {result['exit_code']}: "
                f"{result['error']}",
                file=sys.stderr,
            )
            failures += 1
    return failures


def run_nowait(agent_id: str, action: str, data: Any = None, **kwargs: Any) -> str:
    """Submit one task and return its path, task/<agent_id>/<id>."""
    task = {"agent_id": agent_id, "action": action, "data": {} if data is None else data}
    return runp_nowait([task], **kwargs)[0]


def runp_nowait(tasks: Sequence[Task], **kwargs: Any) -> list[str]:
    """Submit the tasks and return their paths without waiting."""
    from agent.core import redis_keys
    from agent.runtime import tasks as client

    redis = _connect()
    check = int(kwargs.get("check_idle_time", 0) or 0) > 0
    paths = []
    for task in tasks:
        request = _request(task, kwargs)
        with _translated():
            task_id = client.submit(redis, request, check=check)
        paths.append(redis_keys.task_path(request.agent_id, task_id))
    return paths


# --- over the project's task client -------------------------------------------------------
def _connect() -> Any:
    from agent.ns8api.redisconn import redis_connect

    return redis_connect(privileged=True)


def _request(task: Task, kwargs: dict[str, Any]) -> TaskRequest:
    from agent.runtime.tasks import TaskRequest

    extra = dict(task.get("extra") or {})
    extra.update(kwargs.get("extra") or {})
    parent = task.get("parent", os.environ.get("AGENT_TASK_ID", ""))
    return TaskRequest(task["agent_id"], task["action"], task.get("data", {}), parent or "", extra)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """The task client's errors as NS8's exceptions."""
    from agent.core.errors import AgentError, AgentNotRunning, RedisUnavailable, UnknownAgent

    try:
        yield
    except (AgentNotRunning, UnknownAgent) as exc:
        raise TaskSubmissionCheckFailed(str(exc)) from exc
    except RedisUnavailable as exc:
        raise TaskRetryPubSubDisconnect(str(exc)) from exc
    except AgentError as exc:
        raise TaskError(str(exc)) from exc


def _start(redis: Any, request: TaskRequest, check: bool) -> TaskWatcher:
    from agent.runtime import tasks as client

    with _translated():
        return client.start(redis, request, check=check)


def _shape(result: TaskResult) -> dict[str, Any]:
    return {"output": result.output, "error": result.error, "exit_code": result.exit_code}


class _Progress:
    """Each task's share of 0..100; only a larger overall figure reaches the callback."""

    def __init__(self, count: int, callback: Callable[[int], None] | None) -> None:
        self.percents = [0] * count
        self.callback = callback
        self.last = -1
        self.lock = threading.Lock()

    def update(self, index: int, percent: int) -> None:
        if self.callback is None:
            return
        with self.lock:
            self.percents[index] = percent
            overall = sum(self.percents) // len(self.percents)
            if overall <= self.last:
                return
            self.last = overall
        self.callback(overall)


def _follow(
    watcher: TaskWatcher,
    index: int,
    outcomes: list[dict[str, Any] | Exception | None],
    progress: _Progress,
) -> None:
    try:
        with _translated():
            result = watcher.wait(lambda _status, percent: progress.update(index, percent))
        outcomes[index] = _shape(result)
    except Exception as exc:  # handed to the caller, never dropped
        outcomes[index] = exc


def _cancel_pending(
    redis: Any,
    watchers: Sequence[TaskWatcher | None],
    outcomes: Sequence[dict[str, Any] | Exception | None],
) -> None:
    from agent.runtime import tasks as client

    for watcher, outcome in zip(watchers, outcomes, strict=True):
        if watcher is not None and outcome is None:
            with contextlib.suppress(Exception):
                client.cancel(redis, watcher.agent_id, watcher.task_id)


@contextlib.contextmanager
def _on_sigterm() -> Iterator[threading.Event]:
    """An event set by SIGTERM while the block runs (main thread only; elsewhere never)."""
    terminated = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield terminated
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)
