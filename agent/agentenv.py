"""The environment an agent's steps and runagent commands run in."""

from __future__ import annotations

import os
from pathlib import Path

from agent.settings import Settings


def read_env_file(path: Path) -> dict[str, str]:
    """parse_env_text of the file; {} when there is none."""
    try:
        return parse_env_text(path.read_text())
    except FileNotFoundError:
        return {}


def parse_env_text(text: str) -> dict[str, str]:
    """KEY=VALUE lines (no quoting rules beyond stripping one pair of quotes), as a
    module's state/environment or agent.env holds them, live or read from a snapshot."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def format_env_file(env: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in sorted(env.items()))


def agent_path(settings: Settings, agent_id: str) -> str:
    """PATH with the agent's own bin/ first, then the base module bin/, then ours."""
    home = settings.agent_home(agent_id)
    entries = [str(home / "bin")]
    if agent_id.startswith("module/"):
        entries.append(str(settings.share / "imageroot" / "bin"))
    else:
        entries.append(str(settings.share / "bin" / agent_id.split("/", 1)[0]))
    entries.append(str(settings.bin_dir))
    entries.append(os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    return ":".join(entries)


def agent_environment(settings: Settings, agent_id: str) -> dict[str, str]:
    """os.environ + node settings + the agent's env files + AGENT_* variables."""
    state = settings.state_dir(agent_id)
    env = dict(os.environ)
    env.update(settings.podman_env())
    env.update(
        {
            "AGENT_ROOT": str(settings.root),
            "REDIS_URL": settings.redis_url,
            "NODE_ID": str(settings.node_id),
        }
    )
    env.update(read_env_file(state / "agent.env"))
    env.update(read_env_file(state / "environment"))
    env.update(
        {
            "AGENT_ID": agent_id,
            "AGENT_STATE_DIR": str(state),
            "AGENT_INSTALL_DIR": str(settings.agent_home(agent_id)),
            "PATH": agent_path(settings, agent_id),
        }
    )
    # The node the daemon runs on is authoritative, whatever an env file says.
    env["NODE_ID"] = str(settings.node_id)
    return env
