"""The leader's cluster backup: sealed with the operator's passphrase, kept on every
destination after each backup run, and handed out by download-cluster-backup.

The passphrase is the one the operator gives to download-cluster-backup (NS8's way: the
operator chose it, so the operator knows it when the cluster is gone). It is kept where
NS8 keeps it, `<root>/cluster/state/backup/passphrase` (0600), on the leader only. Without
one there is nothing to upload: the run says so in the log and goes on.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from agent.adapters.destinations import load_destination
from agent.adapters.redis_store import Context
from agent.core import redis_keys
from agent.core.errors import AgentError
from agent.core.models import DownloadClusterBackupRequest
from agent.core.settings import Settings
from agent.operations import cluster_dump
from agent.operations.destination_files import write_file, write_private
from agent.runtime.steps import Step

log = logging.getLogger("agent.cluster_backup")


def backup_dir(settings: Settings) -> Path:
    return settings.state_dir(redis_keys.CLUSTER) / "backup"


def passphrase_path(settings: Settings) -> Path:
    return backup_dir(settings) / "passphrase"


def read_passphrase(settings: Settings) -> str:
    """The cluster backup passphrase, "" when none was set."""
    try:
        return passphrase_path(settings).read_text().rstrip("\n")
    except FileNotFoundError:
        return ""


def write_passphrase(settings: Settings, passphrase: str) -> None:
    write_private(passphrase_path(settings), passphrase.encode())


def file_name(cluster_uuid: str) -> str:
    """Name of the sealed dump on a destination (NS8: cluster-backup-<uuid>.json.gz.gpg)."""
    return f"cluster-backup-{cluster_uuid}.json.gz.enc"


def is_leader(ctx: Context) -> bool:
    leader = ctx.redis.hget(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID")
    return bool(leader == str(ctx.settings.node_id))


def make_sealed(ctx: Context) -> tuple[str, bytes] | None:
    """(file name, sealed dump) of the cluster now; None without a passphrase."""
    passphrase = read_passphrase(ctx.settings)
    if not passphrase:
        return None
    dump = cluster_dump.collect(ctx.redis)
    return file_name(dump.cluster.uuid), cluster_dump.encode(dump, passphrase)


def upload_everywhere(ctx: Context) -> list[str]:
    """On the leader: the sealed dump to every destination; the ids written. Never raises:
    a backup run must not fail because its copy of the configuration could not go out."""
    try:
        if not is_leader(ctx):
            return []
        sealed = make_sealed(ctx)
        if sealed is None:
            log.warning("no cluster backup passphrase: set one with download-cluster-backup")
            return []
        name, data = sealed
        write_private(backup_dir(ctx.settings) / name, data)
        written = []
        for key in sorted(ctx.redis.scan_iter(match=redis_keys.BACKUP_REPOSITORY_PATTERN)):
            try:
                destination = load_destination(ctx.redis, redis_keys.id_in_key(key))
            except AgentError as exc:  # one malformed destination must not stop the others
                log.warning("cluster backup not written to %s: %s", key, exc)
                continue
            if write_file(destination, name, data, ctx.settings.podman_env()):
                written.append(destination.id)
        log.info("cluster backup %s written to %d destination(s)", name, len(written))
        return written
    except Exception as exc:
        log.warning("cluster backup not uploaded: %s", exc)
        return []


def download_cluster_backup(step: Step, request: DownloadClusterBackupRequest) -> dict[str, Any]:
    """NS8's download-cluster-backup: {"path": "<sha256>/<name>"} under the UI backup dir,
    plus `file`, its absolute path on the leader, for a shell user."""
    settings = step.ctx.settings
    if request.password is not None:
        write_passphrase(settings, request.password)
    sealed = make_sealed(step.ctx)
    if sealed is None:
        return {"path": ""}
    name, data = sealed
    write_private(backup_dir(settings) / name, data)
    digest = hashlib.sha256(data).hexdigest()
    ui_dir = settings.agent_home(redis_keys.CLUSTER) / "ui" / "backup"
    shutil.rmtree(ui_dir, ignore_errors=True)
    target = ui_dir / digest / name
    write_private(target, data)
    if not target.is_file():
        raise AgentError(f"cannot write {target}")
    return {"path": f"{digest}/{name}", "file": str(target), "sha256": digest}
