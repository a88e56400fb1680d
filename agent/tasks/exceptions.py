"""NS8's `agent.tasks.exceptions`: what agent.tasks raises (or returns, from runp)."""

from __future__ import annotations


class TaskError(Exception):
    """A task could not be run or followed to its end."""


class TaskRetryError(TaskError):
    """Following the task failed in a way NS8 retries (and gave up on)."""


class TaskRetryAbort(TaskRetryError):
    """The retries ran out."""


class TaskRetryWsDisconnect(TaskRetryError):
    """NS8's websocket went away (the HTTP route; kept for modules that catch it)."""


class TaskRetryPubSubDisconnect(TaskRetryError):
    """Redis went away while the task's progress was followed."""


class TaskStatusNotFound(TaskError):
    """The task's result is not (or no longer) stored."""


class TaskSubmissionCheckFailed(TaskError):
    """No agent serves the task's agent id, or it does not exist."""
