"""The confidence settings of a backup definition (issue #18): integrity check, restore
drill and mirrors, as add-backup/alter-backup take them and check them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.adapters.redis_store import Redis
from agent.core import redis_keys
from agent.core.models import BackupRequest
from agent.records.backups import CheckPolicy, DrillPolicy


def _row(field: str, error: str, value: Any) -> dict[str, Any]:
    return {"field": field, "parameter": field, "value": value, "error": error}


def confidence_fields(request: BackupRequest, stored: dict[str, str]) -> dict[str, Any]:
    """check, drill, mirrors and mirror_retention for the definition: the request's when it
    names them (null or [] removes), else the stored text, parsed by the definition."""
    given = request.model_fields_set
    fields: dict[str, Any] = {}
    if "check" in given:
        check = request.check
        fields["check"] = None if check is None else CheckPolicy(**check.model_dump())
    elif stored.get("check"):
        fields["check"] = stored["check"]
    if "drill" in given:
        drill = request.drill
        fields["drill"] = None if drill is None else DrillPolicy(**drill.model_dump())
    elif stored.get("drill"):
        fields["drill"] = stored["drill"]
    if "mirrors" in given:
        fields["mirrors"] = tuple(dict.fromkeys(request.mirrors or ()))
    elif stored.get("mirrors"):
        fields["mirrors"] = stored["mirrors"]
    if "mirror_retention" in given:
        fields["mirror_retention"] = request.mirror_retention
    elif stored.get("mirror_retention"):
        fields["mirror_retention"] = stored["mirror_retention"]
    return fields


def confidence_errors(
    redis: Redis, request: BackupRequest, schedule_is_valid: Callable[[str], bool]
) -> list[dict[str, Any]]:
    """NS8-style rows: check/drill schedules systemd refuses, a drill node not in the
    cluster, mirrors that are no destination."""
    errors = []
    for name, settings in (("check", request.check), ("drill", request.drill)):
        if settings is not None and not schedule_is_valid(settings.schedule):
            errors.append(_row(f"{name}.schedule", "bad_schedule_format", settings.schedule))
    drill_node = request.drill.node if request.drill is not None else None
    if drill_node is not None and not redis.sismember(redis_keys.CLUSTER_NODES, str(drill_node)):
        errors.append(_row("drill.node", "node_not_found", drill_node))
    for mirror in request.mirrors or ():
        if not redis.exists(redis_keys.backup_repository(mirror)):
            errors.append(_row("mirrors", "backup_repository_not_found", mirror))
    return errors
