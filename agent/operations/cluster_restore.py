"""retrieve-cluster-backup, restore-cluster and import-backup-destinations (NS8 names).

retrieve checks the file and the passphrase and keeps the opened dump in the cluster
state dir (0600, as NS8 keeps dump.json.gz); restore-cluster writes its definitions into
this cluster, which must not have backups or modules yet, then removes the plain copy.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import redis as redis_lib

from agent.adapters.redis_api import Pipeline, Redis, watching
from agent.core import dump_crypto, redis_keys
from agent.core.errors import AgentError, validation_error
from agent.core.models import ImportBackupDestinationsRequest, NoInput, RetrieveClusterBackupRequest
from agent.operations import cluster_dump
from agent.operations.cluster_backup import backup_dir, write_passphrase
from agent.operations.destination_files import write_private
from agent.runtime.steps import Step

MAX_DOWNLOAD = 64 * 1024 * 1024
PLAIN_NAME = "dump.json"
DESTINATION_CHANGED = redis_keys.cluster_event(redis_keys.Event.BACKUP_DESTINATION_CHANGED)
SCHEDULE_CHANGED = redis_keys.cluster_event(redis_keys.Event.BACKUP_SCHEDULE_CHANGED)


def fetch(url: str, tls_verify: bool) -> bytes:
    """GET url (redirects followed), at most MAX_DOWNLOAD bytes."""
    context = ssl.create_default_context()
    if not tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as response:
            data: bytes = response.read(MAX_DOWNLOAD + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise validation_error("url", "download_failed", url) from exc
    if len(data) > MAX_DOWNLOAD:
        raise validation_error("url", "download_too_large", url)
    return data


def open_dump(
    data: bytes, passphrase: str, password_field: str, file_field: str, passphrase_exit: int = 2
) -> cluster_dump.ClusterDump:
    """The dump, or NS8's validation errors: not a backup file, or the wrong passphrase."""
    if not passphrase:
        raise validation_error(password_field, "empty_passphrase", exit_code=passphrase_exit)
    try:
        return cluster_dump.decode(data, passphrase)
    except dump_crypto.WrongPassphrase:
        raise validation_error(
            password_field, "invalid_passphrase", exit_code=passphrase_exit
        ) from None
    except dump_crypto.TamperedDump as exc:
        raise validation_error(file_field, "backup_file_damaged", str(exc)) from None
    except dump_crypto.NotADump as exc:
        # NS8's name for "not a cluster backup file" (its files are gpg), kept for its UI.
        raise validation_error(file_field, "not_valid_gpg_file", str(exc)) from None


def decode_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise validation_error(field, "invalid_base64") from None


def summary(dump: cluster_dump.ClusterDump) -> dict[str, Any]:
    """NS8's retrieve output, and what this dump holds for restore-modules."""
    return {
        "single_node_cluster": dump.cluster.node_count == 1,
        "cluster": dump.cluster.uuid,
        "vpn": "",
        "domains": 0,
        "backup_repositories": len(dump.destinations),
        "backups": len(dump.backups),
        "notification_targets": len(dump.notification_targets),
        "modules": [
            {"module_id": module_id, **entry.model_dump()}
            for module_id, entry in sorted(dump.modules.items())
        ],
    }


def retrieve_cluster_backup(step: Step, request: RetrieveClusterBackupRequest) -> dict[str, Any]:
    if request.type == "url":
        assert request.url is not None and request.tls_verify is not None
        data = fetch(request.url, request.tls_verify)
    else:
        data = decode_base64(request.file or "", "backup_file")
    dump = open_dump(data, request.password, "backup_password", "backup_file")
    directory = backup_dir(step.ctx.settings)
    write_private(directory / PLAIN_NAME, dump.model_dump_json().encode())
    write_passphrase(step.ctx.settings, request.password)  # this cluster goes on with it
    return summary(dump)


def cluster_is_empty(redis: Redis) -> bool:
    has_backup = next(redis.scan_iter(match=redis_keys.BACKUP_PATTERN, count=500), None)
    return not redis.hlen(redis_keys.MODULE_NODE) and has_backup is None


def _stored(pipe: Pipeline, public_key: str, private_key: str, record: cluster_dump.Stored) -> None:
    pipe.delete(public_key, private_key)
    if record.public:
        pipe.hset(public_key, mapping=dict(record.public))
    if record.private:
        pipe.hset(private_key, mapping=dict(record.private))


def restore_cluster(step: Step, _request: NoInput) -> dict[str, Any]:
    """The retrieved dump's definitions into this (empty) cluster, in one transaction."""
    redis = step.ctx.redis
    path = backup_dir(step.ctx.settings) / PLAIN_NAME
    try:
        dump = cluster_dump.parse(path.read_bytes())
    except FileNotFoundError:
        raise AgentError("no retrieved cluster backup: run retrieve-cluster-backup first") from None
    except dump_crypto.NotADump as exc:
        raise AgentError(f"{path}: {exc}") from None
    with redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(redis_keys.MODULE_NODE, redis_keys.BACKUP_SEQUENCE)
            watched = watching(pipe)
            if not cluster_is_empty(watched):
                raise validation_error("cluster", "cluster_not_empty", exit_code=2)
            present = {
                d for d in dump.destinations if watched.exists(redis_keys.backup_repository(d))
            }
            sequence = int(watched.get(redis_keys.BACKUP_SEQUENCE) or 0)
            pipe.multi()
            pipe.set(redis_keys.CLUSTER_UUID, dump.cluster.uuid)
            for destination_id, record in dump.destinations.items():
                if destination_id not in present:
                    _stored(
                        pipe,
                        redis_keys.backup_repository(destination_id),
                        redis_keys.backup_repository_private(destination_id),
                        record,
                    )
            for backup_key, record in dump.backups.items():
                backup_id = int(backup_key)
                _stored(
                    pipe, redis_keys.backup(backup_id), redis_keys.backup_private(backup_id), record
                )
            top = max([sequence, dump.backup_sequence, *map(int, dump.backups)])
            pipe.set(redis_keys.BACKUP_SEQUENCE, top)
            for name, record in dump.notification_targets.items():
                _stored(
                    pipe,
                    redis_keys.notification_target(name),
                    redis_keys.notification_target_private(name),
                    record,
                )
            pipe.publish(
                DESTINATION_CHANGED, json.dumps({"destination_ids": sorted(dump.destinations)})
            )
            pipe.publish(SCHEDULE_CHANGED, json.dumps({"backup_ids": sorted(dump.backups)}))
            pipe.execute()
        except redis_lib.WatchError:
            raise AgentError("the cluster changed while it was being restored: retry") from None
    path.unlink(missing_ok=True)  # the plain copy holds every secret: gone once used
    return summary(dump)


def import_backup_destinations(
    step: Step, request: ImportBackupDestinationsRequest
) -> dict[str, int]:
    """The dump's destinations this cluster does not have yet (NS8 exit codes 2 and 3)."""
    redis = step.ctx.redis
    data = decode_base64(request.backup_data, "backup_data")
    dump = open_dump(data, request.backup_password, "backup_password", "backup_data", 3)
    local_uuid = redis.get(redis_keys.CLUSTER_UUID) or ""
    imported: list[str] = []
    skipped = 0
    with redis.pipeline(transaction=True) as pipe:
        for destination_id, record in sorted(dump.destinations.items()):
            foreign_node_storage = (
                record.public.get("provider") == "cluster" and dump.cluster.uuid != local_uuid
            )
            if foreign_node_storage or redis.exists(redis_keys.backup_repository(destination_id)):
                skipped += 1
                continue
            _stored(
                pipe,
                redis_keys.backup_repository(destination_id),
                redis_keys.backup_repository_private(destination_id),
                record,
            )
            imported.append(destination_id)
        if imported:
            pipe.publish(DESTINATION_CHANGED, json.dumps({"destination_ids": imported}))
            pipe.execute()
    return {"imported_destinations": len(imported), "skipped_destinations": skipped}
