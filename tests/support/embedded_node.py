"""The embedded default as an operator runs it: `agent cluster init/up/down` on a data dir,
with its private redis-server, driven through the real commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from agent.adapters import podman_store
from agent.core.settings import Settings, load_settings
from agent.operations import cluster_setup

BIN = Path(sys.executable).parent


@dataclass
class EmbeddedNode:
    root: Path
    clients: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return load_settings(self.root)

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            AGENT_ROOT=str(self.root),
            PATH=f"{BIN}:" + os.environ.get("PATH", "/usr/bin:/bin"),
        )

    def agent(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "agent"), *args, "--root", str(self.root)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def api(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "api-cli"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def api_ok(self, action: str, data: Any = None) -> Any:
        done = self.api("run", action, "--data", json.dumps(data))
        assert done.returncode == 0, (action, done.stdout, done.stderr)
        return json.loads(done.stdout) if done.stdout.strip() else None

    def api_background(self, action: str, data: Any = None) -> subprocess.Popen[str]:
        """api-cli started and left running; down() ends it if the test did not."""
        client = subprocess.Popen(
            [str(BIN / "api-cli"), "run", action, "--data", json.dumps(data)],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.clients.append(client)
        return client

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, decode_responses=True)

    def pid(self, name: str) -> int | None:
        return cluster_setup.read_pid(self.settings.run_dir / name)

    def kill_redis(self) -> None:
        """SIGKILL the private redis-server and wait until it is gone."""
        pid = self.pid(cluster_setup.REDIS_PID)
        assert pid is not None, "the private Redis is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while self.pid(cluster_setup.REDIS_PID) is not None:
            assert time.monotonic() < deadline, "redis-server outlived SIGKILL"
            time.sleep(0.05)

    def kill_daemon(self) -> int:
        """SIGKILL the node daemon (its steps, in their own process groups, live on)."""
        pid = self.pid(cluster_setup.DAEMON_PID)
        assert pid is not None, "the daemon is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while self.pid(cluster_setup.DAEMON_PID) is not None:
            assert time.monotonic() < deadline, "the daemon outlived SIGKILL"
            time.sleep(0.05)
        return pid

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "log" / "agent.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def down(self) -> None:
        """Daemon and Redis stopped, the private store released: nothing outlives a test."""
        for client in self.clients:
            if client.poll() is None:
                client.kill()
            client.communicate()
        if (self.root / "agent.json").exists():
            self.agent("cluster", "down", timeout=180)
            settings = self.settings
            cluster_setup.release_private_storage(settings)
            store = cluster_setup.private_store(settings)
            if store is not None:
                podman_store.discard_runtime(store)


def wait_until(what: str, condition: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    """condition()'s first truthy value; fails naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(interval)


@dataclass(frozen=True)
class WikiBackup:
    """A sample module on an embedded node with backup 1 to a local destination."""

    module_id: str
    destination: str
    repository: Path  # the restic repository directory of the module

    def status(self, node: EmbeddedNode) -> dict[str, Any]:
        from tests.support import backups

        return backups.status(node.redis(), 1, 1, self.module_id)


def wiki_with_backup(node: EmbeddedNode, image: str, target: Path) -> WikiBackup:
    from tests.support import backups

    module_id = node.api_ok("add-module", {"image": image, "node": 1})["module_id"]
    target.mkdir()
    client = node.redis()
    destination = backups.add_destination(client, "local", f"local:{target}")
    backups.add_backup(client, 1, destination, [module_id], retention=5)
    module_uuid = client.hget("cluster/module_uuid", module_id)
    name = image.rsplit("/", 1)[1].split(":")[0]
    return WikiBackup(module_id, destination, target / name / str(module_uuid))


def pause_dump_hook(node: EmbeddedNode, module_id: str, marker: Path, release: Path) -> None:
    """The module's module-dump-state touches marker, then waits for release to exist
    before doing its real work: a backup held at a known point."""
    hook = node.settings.agent_home(f"module/{module_id}") / "bin" / "module-dump-state"
    original = hook.with_name("module-dump-state.real")
    hook.rename(original)
    hook.write_text(
        f"#!/bin/sh\ntouch {marker}\nwhile [ ! -e {release} ]; do sleep 0.1; done\n"
        f'exec {original} "$@"\n'
    )
    hook.chmod(0o755)


def containers(node: EmbeddedNode) -> list[str]:
    """Every container in the node's own podman store, running or not."""
    done = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}"],
        env=dict(os.environ, **node.settings.podman_env()),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def settled(node: EmbeddedNode) -> list[str]:
    """What is not settled in the node's Redis: claimed tasks, tasks without exit codes,
    locks, leases and pending instances (empty when all is well)."""
    client = node.redis()
    problems = [f"{k} not empty" for k in client.scan_iter(match="*/tasks/processing")]
    problems += [
        f"{k} has no exit code"
        for k in client.scan_iter(match="task/*/context")
        if not client.exists(k.rsplit("/", 1)[0] + "/exit_code")
    ]
    problems += list(client.scan_iter(match="module/*/backup_lock"))
    problems += list(client.scan_iter(match="cluster/repository_lease/*"))
    problems += [f"pending {m}" for m in client.hkeys("cluster/module_pending")]
    return problems
