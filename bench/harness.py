"""Timing, statistics and the handles the scenarios drive: a private cluster and raw restic."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
CONTAINERS_CONF = REPO / "containers" / "containers.conf"
RESTIC_IMAGE = "localhost/backup-agent-restic:latest"
PASSWORD = "bench-password"


def run(argv: Sequence[str], env: dict[str, str] | None = None, input: str | None = None) -> str:
    """Run argv, raise with its stderr when it fails, return its stdout."""
    done = subprocess.run(
        list(argv), env=env, input=input, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}… exit {done.returncode}: {done.stderr[-800:]}")
    return done.stdout


@dataclass
class Series:
    """Samples of one measured thing, in seconds (or any unit)."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """max − min: on a shared 2-core machine the honest measure of noise."""
        return max(self.samples) - min(self.samples)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median": self.median,
            "spread": self.spread,
            "min": min(self.samples),
            "max": max(self.samples),
            "samples": self.samples,
        }


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("CONTAINERS_STORAGE_CONF", None)
    return env


RAW_CACHE_VOLUME = "bench-raw-restic-cache"


class RawRestic:
    """restic in the project's image, one `podman run` per command, as an operator would,
    with a cache that outlives the container as an operator's ~/.cache/restic does (NS8
    mounts its `restic-cache` volume the same way; without one, each run starts cold)."""

    def __init__(self, host_name: str = "bench") -> None:
        self.env = base_env() | {"RESTIC_PASSWORD": PASSWORD}
        self.host_name = host_name

    def argv(self, repo: Path, data: Path | None, args: Sequence[str]) -> list[str]:
        argv = ["podman", "run", "--rm", "--env", "RESTIC_PASSWORD"]
        argv += ["-v", f"{RAW_CACHE_VOLUME}:/var/cache/restic"]
        argv += ["--env", "RESTIC_CACHE_DIR=/var/cache/restic"]
        argv += ["--env", "RESTIC_REPOSITORY=/repo", "-v", f"{repo}:/repo"]
        if data is not None:
            argv += ["-v", f"{data}:/data"]
        return [*argv, RESTIC_IMAGE, *args]

    def __call__(self, repo: Path, args: Sequence[str], data: Path | None = None) -> str:
        return run(self.argv(repo, data, args), self.env)

    def init(self, repo: Path, password: str = PASSWORD) -> None:
        repo.mkdir(parents=True, exist_ok=True)
        env = self.env | {"RESTIC_PASSWORD": password}
        run(self.argv(repo, None, ["init"]), env)

    def backup(self, repo: Path, data: Path) -> str:
        # --host: a container's hostname changes each run, and restic picks the parent
        # snapshot by host; the agent passes --host <module_id> for the same reason.
        return self(repo, ["backup", "--host", self.host_name, "/data"], data)

    def ns8_sequence(self, repo: Path, data: Path) -> None:
        """What NS8's module-backup does: one container per restic command."""
        self(repo, ["snapshots", "--json"])
        self.backup(repo, data)
        self(repo, ["stats", "--json", "latest"])
        self(repo, ["forget", "--keep-last=3", "--prune"])


class Cluster:
    """A private single-node cluster under root, driven through its own commands."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = base_env() | {"AGENT_ROOT": str(root)}
        self.env.pop("REDIS_URL", None)

    def agent(self, *args: str) -> str:
        return run([str(VENV_BIN / "agent"), *args, "--root", str(self.root)], self.env)

    def start(self) -> None:
        if not (self.root / "agent.json").exists():
            self.agent("cluster", "init", "--private-storage")
        self.agent("cluster", "up")

    def stop(self) -> None:
        self.agent("cluster", "down")

    @property
    def podman_env(self) -> dict[str, str]:
        return self.env | load_settings(self.root).podman_env()

    def api(self, action: str, data: Any = None) -> Any:
        argv = [str(VENV_BIN / "api-cli"), "run", action]
        if data is not None:
            argv += ["--data", json.dumps(data)]
        text = run(argv, self.env).strip()
        return json.loads(text) if text else None

    def volume_path(self, name: str) -> Path:
        argv = ["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", name]
        return Path(run(argv, self.podman_env).strip())

    def new_volume(self, name: str) -> Path:
        """A volume in the node's storage, beside the modules' ones; its host path."""
        run(["podman", "volume", "create", name], self.podman_env)
        return self.volume_path(name)

    def module_uuid(self, module_id: str) -> str:
        environment = self.root / "modules" / module_id / "state" / "environment"
        for line in environment.read_text().splitlines():
            if line.startswith("MODULE_UUID="):
                return line.split("=", 1)[1].strip()
        raise RuntimeError(f"{module_id} has no MODULE_UUID")

    def set_setting(self, name: str, value: Any) -> None:
        path = self.root / "agent.json"
        data = json.loads(path.read_text())
        data[name] = value
        path.write_text(json.dumps(data, indent=2) + "\n")

    def daemon_pid(self) -> int:
        return int((self.root / "run" / "agent.pid").read_text().strip())

    def add_destination(self, directory: Path) -> tuple[str, str]:
        roots = json.loads((self.root / "agent.json").read_text()).get("local_roots", [])
        if str(directory) not in roots:  # the node accepts local destinations there only
            self.set_setting("local_roots", [*roots, str(directory)])
        """(id, password) of a new local destination."""
        directory.mkdir(parents=True, exist_ok=True)
        added = self.api(
            "add-backup-repository",
            {
                "name": "",
                "provider": "local",
                "url": f"local:{directory}",
                "password": "",
                "parameters": {},
            },
        )
        return str(added["id"]), str(added["password"])

    def add_backup(self, repository: str, instances: list[str], name: str = "bench") -> int:
        data = {
            "name": name,
            "repository": repository,
            "schedule": "daily",
            "retention": 3,
            "instances": instances,
            "enabled": True,
        }
        return int(self.api("add-backup", data))


def _proc_field(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    return _proc_field(Path(f"/proc/{pid}/status"), "VmRSS:")


def agent_processes(pid: int) -> list[int]:
    """The daemon and its warm-steps helper: the child running the daemon's own command
    (steps, which run other commands, are left out)."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    helpers = [int(c) for c in children if _cmdline(int(c)) == command]
    return [pid, *helpers]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def agent_memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over the daemon and its helper. RSS counts the pages they share
    twice; PSS splits them, so its sum is what the two cost together."""
    pids = agent_processes(pid)
    rss = sum(rss_kib(p) for p in pids)
    pss = sum(_proc_field(Path(f"/proc/{p}/smaps_rollup"), "Pss:") for p in pids)
    return rss, pss


class RssSampler:
    """Peak RSS of the daemon alone every 50 ms; peak PSS of daemon + helper every 0.5 s
    (reading smaps_rollup walks page tables: ~0.7 ms of CPU, taken from the timed run)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            try:
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
                if tick % 10 == 0:
                    self.peak_pss_kib = max(self.peak_pss_kib, agent_memory_kib(self.pid)[1])
                tick += 1
            except OSError:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
