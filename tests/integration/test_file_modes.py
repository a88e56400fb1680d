"""No local user reads a secret under a node's data directory, whatever the umask it was
made with: checked as the unprivileged user nobody after init, a destination, a backup."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.adapters import podman_store
from agent.adapters.redis_store import connect
from agent.core.settings import load_settings
from agent.operations import cluster_setup

BIN = Path(sys.executable).parent
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's may sit where nobody cannot reach it
PROVIDER_KEY = "provider-key-for-the-audit-7f3a9c"
# Run as nobody: every path it can reach and every file it can read, searched for secrets.
AUDIT = r"""
import json, os, sys
secrets = [s.encode() for s in json.loads(sys.argv[2])]
found = []
for directory, dirs, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as handle:
                data = handle.read(64 << 20)
        except OSError:
            continue
        found += [path for secret in secrets if secret in data][:1]
print(json.dumps(found))
"""


@pytest.fixture
def world_readable_parent() -> Iterator[Path]:
    """A directory nobody may enter, so only the data dir's own modes protect it."""
    parent = Path(tempfile.mkdtemp(prefix="backup-agent-modes-"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, umask=0)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def _readable_by_nobody(root: Path, secrets: list[str]) -> list[str]:
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-c",
            AUDIT,
            str(root),
            json.dumps(secrets),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def _loose_paths(root: Path) -> list[str]:
    """Paths under the node's own trees that a user other than root could read."""
    settings = load_settings(root)
    loose = []
    for tree in (settings.redis_dir, settings.log_dir, settings.run_dir):
        for directory, dirs, files in os.walk(tree):
            for name in (*dirs, *files):
                mode = os.lstat(Path(directory, name)).st_mode
                if not stat.S_ISLNK(mode) and mode & 0o077:
                    loose.append(f"{Path(directory, name)} {stat.filemode(mode)}")
    for path in (root, settings.config_path):
        if path.stat().st_mode & 0o077:
            loose.append(f"{path} {stat.filemode(path.stat().st_mode)}")
    return loose


@pytest.mark.podman
def test_no_secret_is_readable_by_another_user(
    world_readable_parent: Path, minwiki_image: str, restic_image: str
) -> None:
    root = world_readable_parent / "node"
    backups = world_readable_parent / "backups"
    backups.mkdir()
    env = {**os.environ, "AGENT_ROOT": str(root), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("REDIS_URL", None)
    agent = [str(BIN / "agent")]
    api = [str(BIN / "api-cli"), "run"]
    # umask 0 throughout: every file anyone creates would be world-readable by default.
    _run([*agent, "cluster", "init", "--private-storage", "--local-root", str(backups)], env)
    try:
        _run([*agent, "cluster", "up"], env)
        module = json.loads(
            _run(
                [*api, "add-module", "--data", json.dumps({"image": minwiki_image, "node": 1})], env
            )
        )["module_id"]
        added = json.loads(
            _run(
                [
                    *api,
                    "add-backup-repository",
                    "--data",
                    json.dumps(
                        {
                            "name": "",
                            "provider": "local",
                            "url": f"local:{backups}",
                            "password": "",
                            "parameters": {},
                        }
                    ),
                ],
                env,
            )
        )
        backup = _run(
            [
                *api,
                "add-backup",
                "--data",
                json.dumps(
                    {
                        "name": "b",
                        "repository": added["id"],
                        "schedule": "daily",
                        "retention": 1,
                        "instances": [module],
                        "enabled": True,
                    }
                ),
            ],
            env,
        ).strip()
        _run([*api, "run-backup", "--data", json.dumps({"id": int(backup)})], env)
        # A provider key as any Redis client stores one: it must reach the AOF.
        settings = load_settings(root)
        client = connect(settings.redis_url)
        client.hset("private/backup_repository/audit", "aws_secret_access_key", PROVIDER_KEY)
        client.bgsave()
        redis_password = settings.redis_url.split(":")[2].split("@")[0]
        secrets = [added["password"], PROVIDER_KEY, redis_password]
        assert (root / "redis").is_dir() and any((root / "redis").rglob("*.aof"))
        assert _readable_by_nobody(root, secrets) == []
        assert _loose_paths(root) == []
    finally:
        subprocess.run([*agent, "cluster", "down"], env=env, capture_output=True, timeout=120)
        store = cluster_setup.private_store(load_settings(root))
        if store is not None:
            podman_store.discard_runtime(store)
    # After shutdown (Redis saved its RDB) and for a data dir an older version left loose,
    # 'cluster up' puts the modes right before anything starts.
    assert _readable_by_nobody(root, secrets) == []
    for path in (root, root / "redis", *(root / "redis").iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    _run([*agent, "cluster", "up"], env)
    try:
        assert _loose_paths(root) == []
    finally:
        subprocess.run([*agent, "cluster", "down"], env=env, capture_output=True, timeout=120)
        store = cluster_setup.private_store(load_settings(root))
        if store is not None:
            podman_store.discard_runtime(store)
