"""Node action list-backup-timers (the timers themselves: agent/timers.py)."""

from __future__ import annotations

from typing import Any

from agent.core.models import NoInput
from agent.runtime.steps import Step
from agent.runtime.timers import timer_rows


def list_backup_timers(step: Step, request: NoInput) -> list[dict[str, Any]]:
    """This node's backups with next and last run."""
    return timer_rows(step.ctx.redis, step.ctx.settings)
