"""Compare a restored module with its original: volumes, state, Redis keys, identity.

usage: python -m agent.operations.verify_restore --source minwiki1 --restored minwiki2 [--root DIR]…

`--root` names the data directory of each node involved (default: AGENT_ROOT, the
embedded default). Prints a JSON report; exit 0 when they match, 1 when they differ.
Compared: every file, directory and symlink of the volumes named in the module's
state-include.conf and of its included state files, with content (SHA-256), mode, owner,
mtime (ns), symlink target, hard-link groups, empty directories and xattrs; the module's
Redis keys (decoded values); IMAGE_URL and the uuid lineage. Paths of state-exclude.conf
are skipped. A SQLite file a restore step rewrote through SQLite's backup API is compared
by its logical dump (its header counters and mtime, and its directory's mtime, change by
design).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sqlite3
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.adapters import module_users, podman, proc
from agent.adapters.redis_store import Redis, connect
from agent.core import redis_keys
from agent.core.errors import AgentError
from agent.core.settings import Settings, load_settings
from agent.core.settings_file import default_root
from agent.core.volumes import ENVIRONMENT, included_volumes

SQLITE_MAGIC = b"SQLite format 3\x00"
SKIPPED_KEYS = ("environment", "backup_lock", "flags")


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A restic exclude pattern (relative to /srv) as a regex on 'volumes/x/…' paths."""
    parts = []
    for token in re.split(r"(\*\*/?|\*|\?)", pattern.strip().lstrip("/")):
        if token.startswith("**"):
            parts.append("(.*/)?" if token.endswith("/") else ".*")
        elif token == "*":
            parts.append("[^/]*")
        elif token == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(token))
    return re.compile("^" + "".join(parts) + "(/.*)?$")


def _patterns(path: Path) -> list[re.Pattern[str]]:
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [pattern_regex(line) for line in lines if line and not line.startswith("#")]


def _digest(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            text = "\n".join(db.iterdump())
        finally:
            db.close()
        return "sqlite:" + hashlib.sha256(text.encode()).hexdigest()
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def host_owner(uid: int, gid: int) -> str:
    return f"{uid}:{gid}"


def describe(path: Path, owner: Callable[[int, int], str] = host_owner) -> dict[str, Any]:
    """path's entry; owner: how its uid:gid reads (inside a rootless module's namespace)."""
    info = path.lstat()
    entry: dict[str, Any] = {
        "mode": oct(info.st_mode),
        "owner": owner(info.st_uid, info.st_gid),
        "mtime_ns": info.st_mtime_ns,
        "xattrs": {
            name: os.getxattr(path, name, follow_symlinks=False).hex()
            for name in sorted(os.listxattr(path, follow_symlinks=False))
            if not name.startswith("security.")
        },
    }
    if stat.S_ISLNK(info.st_mode):
        entry["target"] = os.readlink(path)
    elif stat.S_ISREG(info.st_mode):
        entry["content"] = _digest(path)
        if entry["content"].startswith("sqlite:"):
            del entry["mtime_ns"]
        else:
            entry["size"] = info.st_size
    return entry


def snapshot_tree(
    root: Path,
    prefix: str,
    keep: list[re.Pattern[str]] | None,
    skip: list[re.Pattern[str]],
    owner: Callable[[int, int], str] = host_owner,
) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
    """{'<prefix>/rel': entry} of a tree, and its hard-link groups."""
    entries: dict[str, dict[str, Any]] = {}
    inodes: dict[int, list[str]] = {}
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in ["", *sorted(dirs), *sorted(files)]:
            if name == "" and Path(current) != root:
                continue
            path = Path(current) / name if name else root
            rel = "/".join(filter(None, (prefix, str(path.relative_to(root)).strip("."))))
            rel = rel.rstrip("/")
            if any(p.match(rel) for p in skip) or (keep and not any(p.match(rel) for p in keep)):
                continue
            entries[rel] = describe(path, owner)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                inodes.setdefault(info.st_ino, []).append(rel)
    for rel, entry in list(entries.items()):
        parent = rel.rsplit("/", 1)[0]
        if str(entry.get("content", "")).startswith("sqlite:") and parent in entries:
            # SQLite's journal, made and removed while a restore step writes, touches it.
            entries[parent].pop("mtime_ns", None)
    return entries, sorted(sorted(group) for group in inodes.values() if len(group) > 1)


def volume_dir(settings: Settings, name: str, user: proc.RunAs | None = None) -> Path:
    """The host directory of a volume (user: of that user's own store); a volume placed on
    another directory (NS8's `volumes`) is that directory."""
    argv = podman.volume_place_argv(name)
    done = proc.run(argv, env=settings.podman_env(), timeout=60, run_as=user)
    if done.returncode != 0:
        raise AgentError(f"volume {name} not found: {done.error_text.strip()}")
    mountpoint, device = podman.parse_volume_place(done.text)
    if device is None:
        return Path(mountpoint)
    # A rootless store is its user's to write: a device it names counts only when it is a
    # directory the user owns anyway (the node gives it the directory it places).
    if user is not None and not _owned_by(Path(device), user.uid):
        return Path(mountpoint)
    return Path(device)


def _owned_by(path: Path, uid: int) -> bool:
    try:
        seen = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(seen.st_mode) and seen.st_uid == uid


def module_tree(
    settings: Settings, module_id: str, volumes: list[str], include: Path, exclude: Path
) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
    """A module's included files; a rootless module's volumes are its own store's, named
    bare, and its owners are read as its containers see them."""
    skip = _patterns(exclude)
    state_keep = [p for p in _patterns(include) if p.pattern.startswith("^state")]
    agent_id = redis_keys.module_agent(module_id)
    user = module_users.module_user(settings, module_id)
    owner = host_owner if user is None else module_users.namespace_owner(user)
    entries, links = snapshot_tree(settings.state_dir(agent_id), "state", state_keep, skip, owner)
    entries = {k: v for k, v in entries.items() if k not in ("state", ENVIRONMENT)}
    for name in volumes:
        volume = name if user is not None else f"{module_id}-{name}"
        found, groups = snapshot_tree(
            volume_dir(settings, volume, user), f"volumes/{name}", None, skip, owner
        )
        entries.update(found)
        links += groups
    return entries, links


def redis_values(redis: Redis, module_id: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    prefix = redis_keys.module_key_prefix(module_id)
    for key in sorted(redis.scan_iter(match=redis_keys.module_key_pattern(module_id))):
        suffix = key[len(prefix) :]
        if suffix in SKIPPED_KEYS or "lock" in suffix:
            continue
        kind = redis.type(key)
        readers: dict[str, Callable[[str], object]] = {
            "hash": redis.hgetall,
            "string": redis.get,
            "set": lambda k: sorted(redis.smembers(k)),
            "list": lambda k: redis.lrange(k, 0, -1),
            "zset": lambda k: redis.zrange(k, 0, -1, withscores=True),
        }
        reader = readers.get(kind)
        values[suffix] = reader(key) if reader else f"<{kind}>"
    return values


def verify(redis: Redis, nodes: dict[int, Settings], source: str, restored: str) -> dict[str, Any]:
    """The comparison report of two modules (see the module docstring)."""
    located = {}
    for module_id in (source, restored):
        node = redis.hget(redis_keys.MODULE_NODE, module_id)
        if node is None or int(node) not in nodes:
            raise AgentError(f"{module_id}: not installed on a node given with --root")
        located[module_id] = nodes[int(node)]
    differences: list[str] = []
    source_env = redis.hgetall(redis_keys.module_environment(source))
    restored_env = redis.hgetall(redis_keys.module_environment(restored))
    if source_env.get("IMAGE_URL") != restored_env.get("IMAGE_URL"):
        differences.append("environment IMAGE_URL differs")
    lineage = redis.hget(redis_keys.RESTORE_UUID, restored_env.get("MODULE_UUID", ""))
    if source_env.get("MODULE_UUID") not in (restored_env.get("MODULE_UUID"), lineage):
        differences.append("restored MODULE_UUID is neither the source's nor mapped to it")
    home = located[source].agent_home(redis_keys.module_agent(source))
    include, exclude = home / "etc" / "state-include.conf", home / "etc" / "state-exclude.conf"
    volumes = included_volumes(include.read_text()) if include.is_file() else []
    left, left_links = module_tree(located[source], source, volumes, include, exclude)
    right, right_links = module_tree(located[restored], restored, volumes, include, exclude)
    for rel in sorted(left.keys() | right.keys()):
        if rel not in right:
            differences.append(f"{rel}: missing in {restored}")
        elif rel not in left:
            differences.append(f"{rel}: only in {restored}")
        else:
            for name in sorted(left[rel].keys() | right[rel].keys()):
                if left[rel].get(name) != right[rel].get(name):
                    differences.append(
                        f"{rel}: {name} {left[rel].get(name)!r} != {right[rel].get(name)!r}"
                    )
    if left_links != right_links:
        differences.append(f"hard links differ: {left_links} != {right_links}")
    left_keys, right_keys = redis_values(redis, source), redis_values(redis, restored)
    for suffix in sorted(left_keys.keys() | right_keys.keys()):
        if left_keys.get(suffix) != right_keys.get(suffix):
            differences.append(f"redis module/*/{suffix}: {left_keys.get(suffix)!r} differs")
    kinds = [entry["mode"] for entry in left.values()]
    return {
        "source": source,
        "restored": restored,
        "ok": not differences,
        "compared": {
            "volumes": volumes,
            "entries": len(left),
            "files": sum(1 for e in left.values() if "content" in e),
            "symlinks": sum(1 for e in left.values() if "target" in e),
            "directories": sum(1 for m in kinds if stat.S_ISDIR(int(m, 8))),
            "hardlink_groups": len(left_links),
            "xattrs": sum(len(e["xattrs"]) for e in left.values()),
            "redis_keys": sorted(left_keys),
        },
        "differences": differences,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="verify-restore", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="module id of the original")
    parser.add_argument("--restored", required=True, help="module id of the restored copy")
    parser.add_argument("--root", action="append", type=Path, help="a node's data directory")
    args = parser.parse_args(argv)
    try:
        nodes = {s.node_id: s for s in (load_settings(r) for r in args.root or [default_root()])}
        redis = connect(next(iter(nodes.values())).redis_url)
        report = verify(redis, nodes, args.source, args.restored)
    except AgentError as exc:
        print(f"verify-restore: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
