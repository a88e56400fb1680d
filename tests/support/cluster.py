"""Real test clusters: node data dirs on disk, daemons as subprocesses, a shared Redis."""

from __future__ import annotations

import contextlib
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

from agent.adapters import gateway, module_users, podman_store
from agent.core import redis_keys
from agent.core.settings import Settings
from agent.operations import cluster_setup
from agent.runtime import lease
from tests.support import rootless
from tests.support.processes import run_or_explain

REPO = Path(__file__).resolve().parents[2]


@dataclass
class NodeHarness:
    settings: Settings
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. AGENT_ARGV_LOG

    @property
    def root(self) -> Path:
        return self.settings.root

    @property
    def node_id(self) -> int:
        return self.settings.node_id

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            AGENT_ROOT=str(self.root),
            PATH=f"{Path(sys.executable).parent}:" + os.environ.get("PATH", "/usr/bin:/bin"),
            **self.extra_env,
        )

    def start(self, timeout: float = 90.0, with_gateway: bool = True) -> None:
        """Start the daemon and wait until it serves. timeout outlasts the daemon's own
        wait for its gateway (60 s), so that a gateway which never answers is reported by
        the daemon in its log."""
        client = redis.Redis.from_url(self.settings.redis_url)
        log = open(self.root / "log" / "agent.log", "ab")  # noqa: SIM115 - closed by the child's exit
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "serve", "--shutdown-timeout", "10"],
            env=self.env(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._serving(client, with_gateway):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start:\n" + self._failed_start())
            time.sleep(0.05)

    def _failed_start(self) -> str:
        """What a daemon that did not start was doing (every thread's stack, from SIGUSR1,
        of it and of its gateway), then both killed: it must not keep its lease into the
        next test, which would then fail to start its own node."""
        assert self.process is not None
        gateway_pid = gateway.read_pid(self.settings.run_dir / gateway.PID_FILE)
        if self.process.poll() is None:
            for pid in (self.process.pid, gateway_pid):
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR1)
            time.sleep(1.0)
        self.stop(signal.SIGKILL)
        if gateway_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(gateway_pid, signal.SIGKILL)
        return f"{self.log_tail(80)}\n--- gateway.log ---\n" + self.log_tail(
            40, self.settings.log_dir / "gateway.log"
        )

    def _serving(self, client: redis.Redis, with_gateway: bool) -> bool:
        """The daemon holds its lease and (with_gateway) its gateway answers: the gateway
        publishes node/<N>/gateway as it starts, so a test's "before" taken earlier would
        miss that key."""
        if not client.exists(redis_keys.node_daemon_lease(self.node_id)):
            return False
        if not with_gateway or not self.settings.gateway_listen:
            return True
        return gateway.answers(self.settings.gateway_listen[0])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log_tail(self, lines: int = 30, path: Path | None = None) -> str:
        """The last lines of the daemon's log (or of path)."""
        path = path or self.settings.log_dir / "agent.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def write_action(self, agent_id: str, action: str, steps: dict[str, str]) -> Path:
        """Add an action to this node's own action dir of agent_id (wins over the base dir)."""
        directory = self.settings.agent_home(agent_id) / "actions" / action
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in steps.items():
            path = directory / name
            path.write_text(text)
            if not name.endswith(".json"):
                path.chmod(0o755)
        return directory


@dataclass
class ClusterHarness:
    base: Path
    redis_url: str
    nodes: dict[int, NodeHarness] = field(default_factory=dict)
    # Where local destinations may be; by default the test's directory, beside the nodes.
    local_roots: tuple[str, ...] = ()

    def add_node(self, node_id: int, start: bool = True) -> NodeHarness:
        settings = cluster_setup.init(
            self.base / f"node{node_id}",
            node_id,
            self.redis_url,
            private_storage=True,
            local_roots=self.local_roots or (str(self.base),),
        )
        node = NodeHarness(settings)
        self.nodes[node_id] = node
        if start:
            node.start()
        return node

    def api(
        self, *args: str, input: str | None = None, timeout: float = 120, node: int = 1
    ) -> subprocess.CompletedProcess[str]:
        return run_or_explain(
            [str(Path(sys.executable).parent / "api-cli"), *args],
            timeout,
            env=self.nodes[node].env(),
            input=input,
            capture_output=True,
        )

    def api_json(self, action: str, data: Any = None, **kwargs: Any) -> tuple[int, Any, str]:
        result = self.api("run", action, "--data", json.dumps(data), **kwargs)
        output = json.loads(result.stdout) if result.stdout.strip() else None
        return result.returncode, output, result.stderr

    def api_ok(self, action: str, data: Any = None) -> Any:
        """Run action through api-cli; fail the test unless it exits 0; its parsed output."""
        code, output, stderr = self.api_json(action, data, timeout=270)
        assert code == 0, (action, output, stderr)
        return output

    def volume_dir(self, node: int, module_id: str, volume: str) -> Path:
        """Host directory of a module's podman volume on a node: `<id>-<volume>` in the
        node's store, or the bare name in a rootless module's own store."""
        if module_users.is_rootless(self.nodes[node].settings, module_id):
            return rootless.user_volume(module_id, volume)
        env = {**os.environ, **self.nodes[node].settings.podman_env()}
        done = subprocess.run(
            ["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", f"{module_id}-{volume}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return Path(done.stdout.strip())

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
            # A container a test left (a killed podman client's restic) keeps the store's
            # overlay mounted: remove it first, so the release below can unmount.
            subprocess.run(
                ["podman", "rm", "--all", "--force", "--time", "0"],
                env={**node.env(), **node.settings.podman_env()},
                capture_output=True,
                timeout=120,
                check=False,
            )
            # A rootless module's user is the machine's: it goes with the cluster, even
            # when a test left its module installed.
            modules = node.settings.root / "modules"
            for entry in sorted(modules.iterdir()) if modules.is_dir() else []:
                if entry.is_symlink():
                    module_users.remove_user(node.settings, entry.name, preserve_data=False)
            cluster_setup.release_private_storage(node.settings)
            store = cluster_setup.private_store(node.settings)
            if store is not None:  # its file locks and engine state: nothing outlives the test
                podman_store.discard_runtime(store)


def podman_runs(argv_log: Path) -> list[list[str]]:
    """The `podman run` commands an $AGENT_ARGV_LOG recorded, in order."""
    commands = [json.loads(line) for line in argv_log.read_text().splitlines()]
    return [argv for argv in commands if argv[:2] == ["podman", "run"]]


def lease_holder(url: str, node_id: int) -> lease.Holder | None:
    value = redis.Redis.from_url(url, decode_responses=True).get(f"node/{node_id}/daemon")
    return lease.Holder.decode(value) if value else None
