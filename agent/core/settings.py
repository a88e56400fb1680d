"""Where a node keeps its files and how it reaches Redis: read once, passed explicitly."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from agent.core import redis_keys
from agent.core.destination_rules import LocalPolicy
from agent.core.errors import ConfigError
from agent.core.settings_file import CONFIG_FILE, default_root, read_config


def share_dir() -> Path:
    """The directory holding actions/, imageroot/, containers/, examples/ and systemd/."""
    package = Path(__file__).resolve().parent.parent  # agent/, above agent/core/
    for candidate in (package.parent, package / "_share"):
        if (candidate / "actions").is_dir() and (candidate / "imageroot").is_dir():
            return candidate
    raise ConfigError(f"cannot find the agent's data files near {package}")


# Every default is written here once; agent.json is read and written through these fields
# (settings_from_json, to_json). A plain dataclass, not pydantic: api-cli loads the
# settings and is started once per call (see agent/records/__init__.py).
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
    # The storage gateway's addresses ("host:port" each: loopback for this node's modules,
    # the cluster address for the others; empty = no gateway) and the one other nodes
    # reach it at, when not the first non-loopback listen address.
    gateway_listen: tuple[str, ...] = ()
    gateway_address: str = ""

    def __post_init__(self) -> None:
        """The checks of every Settings, loaded or made (dataclasses.replace included)."""
        object.__setattr__(self, "overdue_check_seconds", max(1, self.overdue_check_seconds))
        for root in self.restore_files_roots:
            if not os.path.isabs(root) or os.path.normpath(root) in ("/", "//"):
                raise ValueError(f"restore_files_roots: {root!r} is not an absolute directory")

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
            entry = self.module_entry(agent.module_id)
            # A rootless module's entry is a link to its user's ~/.config (NS8's
            # AGENT_INSTALL_DIR): its steps, running as that user, get that path.
            return Path(os.readlink(entry)) if entry.is_symlink() else entry
        return self.root / agent.kind

    def module_entry(self, module_id: str) -> Path:
        """`modules/<id>`: a rootfull module's install dir, a rootless one's link to it."""
        return self.root / "modules" / module_id

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
        """agent.json's content: every setting but the root (where the file is)."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()
            if name != "root"
        }


def _setting(name: str, kind: object, value: object) -> object:
    """value of agent.json's key name as the field's type, or ValueError."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not true or false")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{name}: {value!r} is not a number")
        try:
            return int(value) if kind is int else float(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a number") from None
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: {value!r} is not a string")
        return value
    if kind == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{name}: {value!r} is not a list of strings")
        return tuple(value)
    raise ValueError(f"{name}: cannot be set in agent.json")


def settings_from_json(root: Path, data: object) -> Settings:
    """Settings of root from agent.json's content: absent keys take the defaults, keys
    this version does not know are ignored (an older agent reads a newer file)."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    kinds = typing.get_type_hints(Settings)
    values = {
        field.name: _setting(field.name, kinds[field.name], data[field.name])
        for field in dataclasses.fields(Settings)
        if field.name != "root" and field.name in data
    }
    for required in ("node_id", "redis_url"):
        if required not in values:
            raise ValueError(f"{required}: missing")
    return Settings(root=root, **values)  # type: ignore[arg-type]


def load_settings(root: Path | None = None) -> Settings:
    """Settings of the node whose data directory is root (default: default_root())."""
    root = root or default_root()
    data = read_config(root)
    try:
        return settings_from_json(root, data)
    except ValueError as exc:
        raise ConfigError(f"malformed {root / CONFIG_FILE}: {exc}") from None


def write_settings(settings: Settings) -> None:
    """Write agent.json (0600: it may hold the Redis password)."""
    settings.root.mkdir(parents=True, exist_ok=True)
    tmp = settings.config_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(settings.to_json(), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, settings.config_path)
