"""list-backups {"refresh": true} (issue #18): each module's newest snapshot as its
repositories hold it, not as the last recorded run says, and whether snapshots were lost
behind the cluster's back (the newest recorded run's snapshot gone, or fewer left than
the run counted)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.adapters.redis_store import Context
from agent.core.errors import AgentError
from agent.operations.backup_retention import backup_tag
from agent.operations.repositories import list_snapshots

log = logging.getLogger("agent.freshness")
WORKERS = 4  # restic containers at once: a listing takes about a second each


def _read(ctx: Context, destination_id: str, path: str, backup_id: int) -> dict[str, Any]:
    """{"snapshots": [...]} of one repository, or {"error": why}."""
    try:
        return {"snapshots": list_snapshots(ctx, destination_id, path, [backup_tag(backup_id)])}
    except AgentError as exc:
        return {"error": str(exc)[:500]}


def judge(
    primary: dict[str, Any],
    mirrors: dict[str, dict[str, Any]],
    recorded_id: str,
    recorded_count: int,
) -> dict[str, Any]:
    """The freshness of one module from its repositories' listings (pure). A mirror holds
    the newest snapshot when it has one of the same time (restic copy keeps the time and
    gives the copy an id of its own)."""
    snapshots = primary.get("snapshots")
    if snapshots is None:
        return {
            "newest_snapshot": None,
            "snapshots": None,
            "lost_snapshots": None,
            "holding_newest": None,
            "error": primary.get("error", ""),
        }
    newest = max(snapshots, key=lambda s: s["timestamp"], default=None)
    ids = {s["id"] for s in snapshots}
    lost = (bool(recorded_id) and recorded_id not in ids) or len(snapshots) < recorded_count
    newest_time = newest["timestamp"] if newest else None
    holding = 1 if newest else 0
    errors = []
    for mirror_id, listed in sorted(mirrors.items()):
        copies = listed.get("snapshots")
        if copies is None:
            errors.append(f"mirror {mirror_id}: {listed.get('error', '')}")
        elif newest_time is not None and any(c["timestamp"] == newest_time for c in copies):
            holding += 1
    return {
        "newest_snapshot": newest_time,
        "snapshots": len(snapshots),
        "lost_snapshots": lost,
        "holding_newest": holding,
        "error": "; ".join(errors),
    }


def refresh(ctx: Context, backups: list[dict[str, Any]]) -> None:
    """Add "repository_freshness" to each instance of list-backups' items, read from the
    backup's repository and its mirrors (a few containers at once)."""
    jobs: dict[tuple[str, str, int], Any] = {}
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="freshness") as pool:
        for item in backups:
            for instance in item["instances"]:
                path = instance["repository_path"]
                if path.startswith("/"):
                    continue  # no image known: no repository to read
                for destination_id in [item["repository"], *item.get("mirrors", [])]:
                    key = (destination_id, path, int(item["id"]))
                    if key not in jobs:
                        jobs[key] = pool.submit(_read, ctx, *key)
        listings = {key: future.result() for key, future in jobs.items()}
    for item in backups:
        for instance in item["instances"]:
            path = instance["repository_path"]
            key = (item["repository"], path, int(item["id"]))
            if key not in listings:
                continue
            status = instance.get("status") or {}
            mirrors = {
                mirror_id: listings[(mirror_id, path, int(item["id"]))]
                for mirror_id in item.get("mirrors", [])
            }
            verdict = judge(
                listings[key],
                mirrors,
                str(instance.get("snapshot_id") or ""),
                int(status.get("snapshots_count") or 0),
            )
            if verdict["lost_snapshots"]:
                log.warning(
                    "backup %s of %s: the repository lost snapshots behind the cluster's back",
                    item["id"],
                    instance["module_id"],
                )
            instance["repository_freshness"] = verdict
