"""What the console's pages show, gathered through the actions (list-backups and friends)."""

from __future__ import annotations

from typing import Any

from agent.adapters.destinations import load_destination
from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.errors import ActionFailed, AgentError
from agent.operations.run_backup import free_space
from agent.web import actions

# The lead's run history action; until it exists, a module's page shows the last status.
HISTORY_ACTION = "list-backup-runs"


def action_output(redis: Redis, action: str, data: Any = None) -> Any:
    """A cluster action's output; ActionFailed with its error text when it fails."""
    result = actions.run(redis, redis_keys.CLUSTER, action, data)
    if result.exit_code != 0:
        raise ActionFailed(result.error.strip() or f"{action} exited {result.exit_code}")
    return result.output


def destination_usage(redis: Redis, backups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per destination: its name, what the last snapshots of its modules hold, and the free
    space where this node can tell (a local disk)."""
    listed = action_output(redis, "list-backup-repositories")["repositories"]
    rows = []
    for repository in listed:
        stored = 0
        modules = 0
        for backup in backups:
            if backup["repository"] != repository["id"]:
                continue
            for instance in backup["instances"]:
                status = instance.get("status") or {}
                stored += int(status.get("total_size") or 0)
                modules += 1
        try:
            free = free_space(load_destination(redis, repository["id"]))
        except AgentError:
            free = None
        rows.append(
            {
                "id": repository["id"],
                "name": repository["name"],
                "provider": repository["provider"],
                "url": repository["url"],
                "modules": modules,
                "stored_bytes": stored,
                "free_bytes": free,
            }
        )
    return rows


def dashboard(redis: Redis) -> dict[str, Any]:
    listed = action_output(redis, "list-backups")
    return {
        "backups": listed["backups"],
        "unconfigured_instances": listed["unconfigured_instances"],
        "destinations": destination_usage(redis, listed["backups"]),
        "running": actions.running_tasks(redis),
    }


def module_history(redis: Redis, module_id: str) -> dict[str, Any]:
    """A module's page: each backup that names it (last status, overdue, where its
    snapshots are) and its run history with each run's log lines (list-backup-runs)."""
    listed = action_output(redis, "list-backups")
    backups = []
    for backup in listed["backups"]:
        for instance in backup["instances"]:
            if instance["module_id"] != module_id:
                continue
            backups.append(
                {
                    "backup_id": backup["id"],
                    "backup_name": backup["name"],
                    "repository": backup["repository"],
                    "repository_path": instance["repository_path"],
                    "status": instance.get("status"),
                    "overdue": instance.get("overdue"),
                    "next_run": instance.get("next_run"),
                    "last_snapshot": instance.get("last_snapshot"),
                }
            )
    runs = action_output(redis, HISTORY_ACTION, {"module_id": module_id, "limit": 50})
    return {"module_id": module_id, "backups": backups, "runs": runs}
