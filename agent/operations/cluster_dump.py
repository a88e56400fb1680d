"""The cluster configuration dump: what a new cluster needs to reach and restore old backups.

Destinations with their secrets, backup definitions (instances as module uuids, NS8's
`uinstances`), notification targets with their URLs, backups' ping URLs and the module
catalogue. Hashes are copied as stored, so fields added by later versions travel too.
Read back, a dump is hostile input until it validates: every name that becomes part of a
Redis key is checked against the pattern the actions accept.
"""

from __future__ import annotations

import gzip
import io
import json
import time
from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agent.adapters.redis_api import Redis
from agent.core import dump_crypto, redis_keys
from agent.core.models import ImageUrl, ModuleId, NotificationName, Uuid

FORMAT = "backup-agent-cluster-dump"
VERSION = 1
MAX_PLAIN_BYTES = 64 * 1024 * 1024  # a gzip bomb stops here

FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
FieldValue = Annotated[str, StringConstraints(max_length=100_000)]
Hash = Annotated[dict[FieldName, FieldValue], Field(max_length=64)]
BackupKey = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,9}$")]


class DumpModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stored(DumpModel):
    """A record as kept in Redis: its public hash and its private (secret) hash."""

    public: Hash
    private: Hash = Field(default_factory=dict)


class ModuleEntry(DumpModel):
    uuid: Uuid
    image_url: ImageUrl
    node: int = Field(ge=1)
    ui_name: Annotated[str, StringConstraints(max_length=1024)] = ""


class ClusterInfo(DumpModel):
    uuid: Uuid
    node_count: int = Field(ge=1)
    leader: int = Field(ge=1)


class ClusterDump(DumpModel):
    format: Literal["backup-agent-cluster-dump"] = "backup-agent-cluster-dump"
    version: Literal[1] = 1
    created: int
    cluster: ClusterInfo
    destinations: Annotated[dict[Uuid, Stored], Field(max_length=1000)]
    backups: Annotated[dict[BackupKey, Stored], Field(max_length=10_000)]
    backup_sequence: int = Field(ge=0)
    notification_targets: Annotated[dict[NotificationName, Stored], Field(max_length=1000)]
    modules: Annotated[dict[ModuleId, ModuleEntry], Field(max_length=10_000)]


def _ids(redis: Redis, pattern: str) -> list[str]:
    return sorted(redis_keys.id_in_key(key) for key in redis.scan_iter(match=pattern, count=500))


def collect(redis: Redis) -> ClusterDump:
    """The dump of this cluster's definitions, read from Redis."""
    module_uuids: dict[str, str] = redis.hgetall(redis_keys.MODULE_UUID)
    destinations = {}
    for destination_id in _ids(redis, redis_keys.BACKUP_REPOSITORY_PATTERN):
        public = redis.hgetall(redis_keys.backup_repository(destination_id))
        private = redis.hgetall(redis_keys.backup_repository_private(destination_id))
        if public and private:  # without its secrets a destination is of no use later
            destinations[destination_id] = Stored(public=public, private=private)
    backups = {}
    for backup_id in _ids(redis, redis_keys.BACKUP_PATTERN):
        if not backup_id.isdigit():
            continue
        fields = redis.hgetall(redis_keys.backup(int(backup_id)))
        if fields.get("repository") not in destinations:
            continue  # NS8 skips a backup whose destination is gone
        uuids = {module_uuids[m] for m in fields.get("instances", "").split() if m in module_uuids}
        uuids |= set(fields.get("uinstances", "").split())
        fields = fields | {"instances": "", "uinstances": " ".join(sorted(uuids))}
        private = redis.hgetall(redis_keys.backup_private(int(backup_id)))
        backups[backup_id] = Stored(public=fields, private=private)
    targets = {
        name: Stored(
            public=redis.hgetall(redis_keys.notification_target(name)),
            private=redis.hgetall(redis_keys.notification_target_private(name)),
        )
        for name in _ids(redis, redis_keys.NOTIFICATION_TARGET_PATTERN)
    }
    nodes: dict[str, str] = redis.hgetall(redis_keys.MODULE_NODE)
    modules = {}
    for module_id, module_uuid in sorted(module_uuids.items()):
        image_url = redis.hget(redis_keys.module_environment(module_id), "IMAGE_URL")
        if image_url and module_id in nodes:
            modules[module_id] = ModuleEntry(
                uuid=module_uuid,
                image_url=image_url,
                node=int(nodes[module_id]),
                ui_name=redis.get(redis_keys.module_ui_name(module_id)) or "",
            )
    leader = redis.hget(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID") or "1"
    return ClusterDump(
        created=int(time.time()),
        cluster=ClusterInfo(
            uuid=redis.get(redis_keys.CLUSTER_UUID) or "",
            node_count=max(1, redis.scard(redis_keys.CLUSTER_NODES)),
            leader=int(leader),
        ),
        destinations=destinations,
        backups=backups,
        backup_sequence=int(redis.get(redis_keys.BACKUP_SEQUENCE) or 0),
        notification_targets=targets,
        modules=modules,
    )


def encode(dump: ClusterDump, passphrase: str) -> bytes:
    """Sorted JSON, gzip (no name, no time: the same dump gives the same plaintext), sealed."""
    text = json.dumps(dump.model_dump(mode="json"), sort_keys=True).encode()
    return dump_crypto.seal(gzip.compress(text, mtime=0), passphrase)


def decode(data: bytes, passphrase: str) -> ClusterDump:
    """The dump in data; raises dump_crypto's errors, or NotADump for a bad content."""
    compressed = dump_crypto.unseal(data, passphrase)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as unzipped:
            plain = unzipped.read(MAX_PLAIN_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise dump_crypto.NotADump(f"the cluster backup does not decompress: {exc}") from None
    if len(plain) > MAX_PLAIN_BYTES:
        raise dump_crypto.NotADump("the cluster backup is larger than any real cluster's")
    return parse(plain)


def parse(plain: bytes) -> ClusterDump:
    try:
        return ClusterDump.model_validate_json(plain)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise dump_crypto.NotADump(
            f"the cluster backup content is not valid: {where}: {first['msg']}"
        ) from None
