"""Rootless modules in tests: machine-wide unique module ids, commands as the module's
user, its volumes (bare names in its own podman store) and owners inside its namespace."""

from __future__ import annotations

import os
import pwd
import random
import subprocess
from pathlib import Path

import redis

from agent.core import redis_keys

REPO = Path(__file__).resolve().parents[2]


def unique_ids(redis_client: redis.Redis, image: str = "minwiki") -> None:
    """Module ids of image (and so user names) no other test run on this machine uses at
    once: a Unix user is the machine's, not the test cluster's."""
    redis_client.set(redis_keys.module_sequence(image), random.randrange(10_000, 90_000))


def as_user(user: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """argv as the module's user, with its podman settings (as the node runs it)."""
    entry = pwd.getpwnam(user)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": entry.pw_dir,
        "USER": user,
        "XDG_RUNTIME_DIR": f"/run/user/{entry.pw_uid}",
        "CONTAINERS_CONF": str(REPO / "containers" / "containers.conf"),
    }
    setpriv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]
    return subprocess.run(
        [*setpriv, "--", *argv],
        env=env,
        cwd=entry.pw_dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def user_volume(user: str, volume: str) -> Path:
    """Host directory of a volume (its bare name) in the module user's own podman store."""
    done = as_user(user, "podman", "volume", "inspect", "--format", "{{.Mountpoint}}", volume)
    return Path(done.stdout.strip())


def inside_owner(user: str, path: Path) -> str:
    """'uid:gid' of path (not followed) as the module's containers see it."""
    return as_user(user, "podman", "unshare", "stat", "-c", "%u:%g", str(path)).stdout.strip()


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
