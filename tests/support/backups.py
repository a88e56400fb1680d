"""Backup fixtures written straight into Redis in the stored (NS8) shape, and repo checks."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import redis

from agent.core import redis_keys
from agent.records.backups import BackupDefinition
from agent.records.destinations import Destination
from agent.records.statuses import StatusRecord
from tests.support.processes import run_or_explain

RESTIC_IMAGE = "localhost/backup-agent-restic:latest"
PASSWORD = "repo-password-for-tests-0123456789"


def add_destination(
    client: redis.Redis, provider: str, url: str, password: str = PASSWORD, **parameters: str
) -> str:
    destination = Destination(
        id=str(uuid.uuid4()),
        name=f"{provider} test",
        provider=provider,
        url=url,
        password=password,
        parameters=parameters,
    )
    with client.pipeline(transaction=True) as pipe:
        destination.to_redis(pipe)
        pipe.execute()
    return destination.id


def add_backup(
    client: redis.Redis,
    backup_id: int,
    repository: str,
    instances: list[str],
    retention: int = 3,
    enabled: bool = True,
    **extra: Any,
) -> None:
    """A definition stored as add-backup stores one (extra: schedule, keep_daily …)."""
    fields: dict[str, Any] = {"name": f"Backup {backup_id}", "schedule": "daily", **extra}
    definition = BackupDefinition(
        id=backup_id,
        repository=repository,
        retention=retention,
        enabled=enabled,
        instances=tuple(instances),
        **fields,
    )
    with client.pipeline(transaction=True) as pipe:
        definition.to_redis(pipe)
        pipe.execute()


def add_local_backup(
    client: redis.Redis, base: Path, instances: list[str], backup_id: int = 1, **extra: Any
) -> Path:
    """Backup backup_id of instances to a new local destination in base/backups; returns
    that directory."""
    target = base / "backups"
    target.mkdir()
    destination = add_destination(client, "local", f"local:{target}")
    add_backup(client, backup_id, destination, instances, **extra)
    return target


def restic(
    repo: Path | str, *args: str, password: str = PASSWORD, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """restic in the project's image on a local repository directory."""
    repo = Path(repo)
    env = dict(os.environ, RESTIC_PASSWORD=password)
    return run_or_explain(
        [
            "podman",
            "run",
            "--rm",
            "--env",
            "RESTIC_PASSWORD",
            "--volume",
            f"{repo}:/repo",
            RESTIC_IMAGE,
            "--repo",
            "/repo",
            "--no-cache",
            *args,
        ],
        270,
        env=env,
        capture_output=True,
        check=check,
    )


def snapshots(repo: Path | str, password: str = PASSWORD) -> list[dict[str, Any]]:
    done = restic(repo, "snapshots", "--json", password=password)
    return list(json.loads(done.stdout))


def listing(repo: Path | str, snapshot: str = "latest") -> list[str]:
    done = restic(repo, "ls", "--json", snapshot)
    paths = []
    for line in done.stdout.splitlines():
        item = json.loads(line)
        if item.get("struct_type") == "node":
            paths.append(item["path"].lstrip("/"))
    return paths


def status(client: redis.Redis, node: int, backup_id: int, module_id: str) -> dict[str, Any]:
    key = redis_keys.backup_status(node, backup_id)
    text = client.hget(key, module_id)
    assert text, f"no status for {module_id}"
    return dict(json.loads(StatusRecord.from_json(key, text).to_json()))


def set_node_option(settings_path: Path, **options: Any) -> None:
    """Change agent.json of a node; steps read it afresh, the daemon needs no restart."""
    data = json.loads(settings_path.read_text())
    data.update(options)
    settings_path.write_text(json.dumps(data))


def api_add_destination(
    cluster: Any, provider: str, url: str, **parameters: str
) -> tuple[int, Any]:
    """add-backup-repository through api-cli: (exit code, output or error text)."""
    request = {
        "name": "",
        "provider": provider,
        "url": url,
        "password": "",
        "parameters": parameters,
    }
    code, output, stderr = cluster.api_json("add-backup-repository", request)
    return code, output if output is not None else stderr
