"""agent.json: where a node's settings file is, and reading it. Light on purpose: api-cli
reads the Redis URL from it once per call, without the Settings dataclass (settings.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.core.errors import ConfigError

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


def read_config(root: Path) -> object:
    """agent.json's content as JSON (REDIS_URL from the environment in place of its
    redis_url); ConfigError when there is no such file or it is not JSON."""
    path = root / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no cluster in {root}: run 'agent cluster init' (or set AGENT_ROOT)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if isinstance(data, dict) and os.environ.get("REDIS_URL"):
        data["redis_url"] = os.environ["REDIS_URL"]
    return data


def redis_url(root: Path) -> str:
    """The node's Redis URL from agent.json, checked as load_settings checks it."""
    data = read_config(root)
    url = data.get("redis_url") if isinstance(data, dict) else None
    if not isinstance(url, str):
        raise ConfigError(f"malformed {root / CONFIG_FILE}: redis_url: missing")
    return url
