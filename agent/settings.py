"""Where a node keeps its files and how it reaches Redis: read once, passed explicitly."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent import redis_keys
from agent.destination_rules import LocalPolicy
from agent.errors import ConfigError

CONFIG_FILE = "agent.json"


def default_root() -> Path:
    """AGENT_ROOT, else /var/lib/backup-agent for root, else the user's data dir."""
    env = os.environ.get("AGENT_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/backup-agent")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data_home) / "backup-agent"


def share_dir() -> Path:
    """The directory holding actions/, imageroot/, containers/, examples/ and systemd/."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent, package / "_share"):
        if (candidate / "actions").is_dir() and (candidate / "imageroot").is_dir():
            return candidate
    raise ConfigError(f"cannot find the agent's data files near {package}")


@dataclass(frozen=True)
class Settings:
    """One node's settings, from <root>/agent.json with REDIS_URL overriding."""

    root: Path
    node_id: int
    redis_url: str
    embedded_redis: bool = False
    redis_port: int = 0
    storage_conf: str = ""  # CONTAINERS_STORAGE_CONF for this node's podman, if any
    containers_conf: str = ""  # CONTAINERS_CONF for it, if not the shipped one
    concurrency: int = 8
    # backup<ID>.timer units: "auto" = on when systemd runs this machine, "on", "off".
    timers: str = "auto"
    unit_dir: str = "/etc/systemd/system"
    systemctl: str = "systemctl"  # a command line: tests use one inside a systemd container
    timer_random_delay: int = 600  # RandomizedDelaySec of the timers (fixed per timer)
    backup_concurrency: int = 1  # modules of one backup backed up at once on this node
    # Extra `podman run` options for restic containers (resource limits, capabilities).
    restic_podman_args: tuple[str, ...] = ()
    # A storage that keeps failing (restic retrying: read-only, full, unreachable) fails a
    # backup or restore after this many seconds, not after restic's own 15 minutes.
    storage_retry_seconds: float = 120.0
    # Python steps forked from a pre-imported helper (agent/warmsteps.py), not started cold.
    warm_steps: bool = True
    # A module is overdue this long after a scheduled time (plus the timers' random delay)
    # with no good snapshot since; the leader looks every overdue_check_seconds.
    overdue_grace_seconds: int = 3600
    overdue_check_seconds: int = 60
    # Where node restore-files may write (absolute directories); empty = the defaults.
    restore_files_roots: tuple[str, ...] = ()
    # Host directories under which `local:` destinations may be (none by default).
    local_roots: tuple[str, ...] = ()
    # The web console's address on the leader ("host:port"; "" = not started by cluster up).
    web_listen: str = "127.0.0.1:9311"
    extra: dict[str, str] = field(default_factory=dict)

    # --- layout ----------------------------------------------------------------------
    @property
    def share(self) -> Path:
        return share_dir()

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def imports_dir(self) -> Path:
        """Scratch repositories of module archive imports (each in its own subdirectory)."""
        return self.root / "imports"

    @property
    def imageroot_cache(self) -> Path:
        """Module images' /imageroot as extracted once, by image id."""
        return self.root / "cache" / "imageroot"

    def agent_home(self, agent_id: str) -> Path:
        """Install dir of an agent: cluster/, node/, or modules/<id>/."""
        try:
            agent = redis_keys.AgentId.parse(agent_id)
        except redis_keys.NotAnAgentId as exc:
            raise ConfigError(str(exc)) from None
        if agent.kind == "module":
            return self.root / "modules" / agent.module_id
        return self.root / agent.kind

    @property
    def restore_roots(self) -> tuple[Path, ...]:
        """Directories whose subdirectories restore-files may create and fill."""
        if self.restore_files_roots:
            return tuple(Path(root) for root in self.restore_files_roots)
        return (self.root / "restored", Path("/root"))

    def state_dir(self, agent_id: str) -> Path:
        return self.agent_home(agent_id) / "state"

    @property
    def bin_dir(self) -> Path:
        """Where the agent's own console scripts (api-cli, redis-dump …) live."""
        return Path(sys.executable).parent

    def local_policy(self) -> LocalPolicy:
        return LocalPolicy(self.local_roots, str(self.root), str(self.imports_dir))

    def podman_env(self) -> dict[str, str]:
        """Environment for every podman call on this node."""
        shipped = self.share / "containers" / "containers.conf"
        env = {"CONTAINERS_CONF": self.containers_conf or str(shipped)}
        if self.storage_conf:
            env["CONTAINERS_STORAGE_CONF"] = self.storage_conf
        return env

    # --- persistence -----------------------------------------------------------------
    def to_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "redis_url": self.redis_url,
            "embedded_redis": self.embedded_redis,
            "redis_port": self.redis_port,
            "storage_conf": self.storage_conf,
            "containers_conf": self.containers_conf,
            "concurrency": self.concurrency,
            "timers": self.timers,
            "unit_dir": self.unit_dir,
            "systemctl": self.systemctl,
            "timer_random_delay": self.timer_random_delay,
            "backup_concurrency": self.backup_concurrency,
            "restic_podman_args": list(self.restic_podman_args),
            "warm_steps": self.warm_steps,
            "overdue_grace_seconds": self.overdue_grace_seconds,
            "overdue_check_seconds": self.overdue_check_seconds,
            "restore_files_roots": list(self.restore_files_roots),
            "local_roots": list(self.local_roots),
            "storage_retry_seconds": self.storage_retry_seconds,
            "web_listen": self.web_listen,
        }


def load_settings(root: Path | None = None) -> Settings:
    """Settings of the node whose data directory is root (default: default_root())."""
    root = root or default_root()
    path = root / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no cluster in {root}: run 'agent cluster init' (or set AGENT_ROOT)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        return Settings(
            root=root,
            node_id=int(data["node_id"]),
            redis_url=os.environ.get("REDIS_URL") or str(data["redis_url"]),
            embedded_redis=bool(data.get("embedded_redis", False)),
            redis_port=int(data.get("redis_port", 0)),
            storage_conf=str(data.get("storage_conf", "")),
            containers_conf=str(data.get("containers_conf", "")),
            concurrency=int(data.get("concurrency", 8)),
            timers=str(data.get("timers", "auto")),
            unit_dir=str(data.get("unit_dir", "/etc/systemd/system")),
            systemctl=str(data.get("systemctl", "systemctl")),
            timer_random_delay=int(data.get("timer_random_delay", 600)),
            backup_concurrency=int(data.get("backup_concurrency", 1)),
            restic_podman_args=tuple(str(a) for a in data.get("restic_podman_args", [])),
            warm_steps=bool(data.get("warm_steps", True)),
            overdue_grace_seconds=int(data.get("overdue_grace_seconds", 3600)),
            overdue_check_seconds=max(1, int(data.get("overdue_check_seconds", 60))),
            restore_files_roots=_absolute_dirs(data.get("restore_files_roots", [])),
            local_roots=tuple(str(root) for root in data.get("local_roots", [])),
            storage_retry_seconds=float(data.get("storage_retry_seconds", 120.0)),
            web_listen=str(data.get("web_listen", "127.0.0.1:9311")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed {path}: {exc}") from None


def _absolute_dirs(values: list[object]) -> tuple[str, ...]:
    roots = tuple(str(value) for value in values)
    for root in roots:
        if not os.path.isabs(root) or os.path.normpath(root) in ("/", "//"):
            raise ValueError(f"restore_files_roots: {root!r} is not an absolute directory")
    return roots


def write_settings(settings: Settings) -> None:
    """Write agent.json (0600: it may hold the Redis password)."""
    settings.root.mkdir(parents=True, exist_ok=True)
    tmp = settings.config_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(settings.to_json(), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, settings.config_path)
