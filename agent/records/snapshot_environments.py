"""The cluster's own record of what environment each snapshot holds.

A whole restore must know the module's image before it can install the module, and the
image is in the snapshot's state/environment. Reading it back costs a restic run (a
container and restic's key derivation, ~0.7 s). The node that wrote the snapshot already
had those bytes: it records them under the snapshot id, and a restore by that id reads
them from Redis. A file read back from a repository by a whole id (another cluster's
snapshot) is recorded the same way, without a time, on the node that read it. Snapshot
ids are hashes of what restic stored, so an id names one snapshot. `latest` is the
snapshot with the newest time in the repository: the record says which when it holds
every snapshot the repository lists, with restic's own time for each. Otherwise the
restore reads the file from the repository.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Collection, Iterable

from agent.adapters.redis_api import Redis
from agent.core import redis_keys, restic_messages

log = logging.getLogger("agent.snapshots")
MAX_RECORDS = 1000  # per node; the oldest go first
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
WHOLE_ID = re.compile(r"[0-9a-f]{64}")


def record(
    redis: Redis,
    node_id: int,
    snapshot_id: str,
    repository: str,
    path: str,
    text: str,
    snapshot_time: str = "",
) -> None:
    """snapshot_time: restic's time of the snapshot (the backup summary's backup_start)."""
    key = redis_keys.snapshot_environments(node_id)
    entry = {
        "repository": repository,
        "path": path,
        "time": time.time(),
        "snapshot_time": snapshot_time,
        "environment": text,
    }
    with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, snapshot_id, json.dumps(entry))
        pipe.hlen(key)
        _, count = pipe.execute()
    if count > MAX_RECORDS:
        _trim(redis, key)


def _trim(redis: Redis, key: str) -> None:
    def written(item: tuple[str, str]) -> float:
        try:
            return float(json.loads(item[1]).get("time", 0))
        except (ValueError, AttributeError):
            return 0.0

    entries = sorted(redis.hgetall(key).items(), key=written)
    excess = [snapshot_id for snapshot_id, _ in entries[: len(entries) - MAX_RECORDS]]
    if excess:
        redis.hdel(key, *excess)


def forget(redis: Redis, node_id: int, snapshot_ids: Iterable[str]) -> None:
    """Snapshots retention removed: a restore of them must fail on reading, not install."""
    ids = list(snapshot_ids)
    if ids:
        redis.hdel(redis_keys.snapshot_environments(node_id), *ids)


def lookup(redis: Redis, repository: str, path: str, snapshot: str) -> str | None:
    """The recorded state/environment text of the one snapshot of repository/path whose id
    is, or starts with, snapshot; None when there is no such record or more than one."""
    if not SNAPSHOT_ID.fullmatch(snapshot):
        return None  # 'latest', '' and short prefixes: only restic can tell which it is
    found: dict[str, str] = {}
    for node in redis.smembers(redis_keys.CLUSTER_NODES):
        key = redis_keys.snapshot_environments(int(node))
        if WHOLE_ID.fullmatch(snapshot):  # one read
            candidates = [(snapshot, redis.hget(key, snapshot))]
        else:  # a prefix: the hash is at most MAX_RECORDS long, so one page holds it
            candidates = list(redis.hscan_iter(key, match=f"{snapshot}*", count=2 * MAX_RECORDS))
        for snapshot_id, text in candidates:
            entry = _entry(text)
            if entry.get("repository") == repository and entry.get("path") == path:
                found[snapshot_id] = str(entry.get("environment", ""))
    if len(found) != 1:
        return None
    return next(iter(found.values()))


def newest(
    redis: Redis, repository: str, path: str, snapshot_ids: Collection[str]
) -> tuple[str, str] | None:
    """(id, environment text) of restic's `latest` among snapshot_ids, every snapshot the
    repository holds, when each of them is recorded with its time; else None."""
    ids = sorted(set(snapshot_ids))
    if not ids:
        return None
    found: dict[str, tuple[float, str]] = {}
    for node in redis.smembers(redis_keys.CLUSTER_NODES):
        texts = redis.hmget(redis_keys.snapshot_environments(int(node)), ids)
        for snapshot_id, text in zip(ids, texts, strict=True):
            entry = _entry(text)
            if entry.get("repository") != repository or entry.get("path") != path:
                continue
            try:
                when = restic_messages.parse_time(str(entry.get("snapshot_time", "")))
            except ValueError:
                continue
            found[snapshot_id] = (when, str(entry.get("environment", "")))
    if len(found) != len(ids):
        return None  # a snapshot the cluster did not write (or not with its time)
    latest = max(ids, key=lambda snapshot_id: found[snapshot_id][0])
    return latest, found[latest][1]


def _entry(text: str | None) -> dict[str, object]:
    try:
        entry = json.loads(text) if text else {}
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}
