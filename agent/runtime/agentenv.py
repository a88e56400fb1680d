"""The environment an agent's steps and runagent commands run in."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from pathlib import Path

from agent.core import redis_acl, redis_keys
from agent.core.redis_address import url_address
from agent.core.settings import Settings
from agent.runtime.actiondirs import action_dirs

log = logging.getLogger("agent.env")
# What an agent's env files may put into its steps' environment. Both live in the agent's
# state dir, which a restore fills and a module writes: data, so a name gets through only
# when it cannot change which programs run or how they load (NS8 §step environment).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_NAMES = frozenset(
    {
        *("PATH", "HOME", "SHELL", "USER", "LOGNAME", "IFS", "ENV", "BASH_ENV", "CDPATH"),
        *("GLOBIGNORE", "PS4", "PROMPT_COMMAND", "SHELLOPTS", "BASHOPTS", "TMPDIR"),
        *("NODE_ID", "NODE_OPTIONS", "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES"),
        *("RESOLV_HOST_CONF", "OPENSSL_CONF", "OPENSSL_MODULES", "SSL_CERT_FILE"),
        *("SSL_CERT_DIR", "REGISTRY_AUTH_FILE", "TZDIR"),
    }
)
RESERVED_PREFIXES = (
    *("LD_", "PYTHON", "REDIS_", "AGENT_", "BASH_FUNC_", "PERL", "RUBY", "GIT_"),
    *("CONTAINERS_", "XDG_", "MALLOC_", "GLIBC_", "RESTIC_", "RCLONE_", "PODMAN_"),
)
# agent.env is the node's file in NS8 (the module's Redis credentials); PATH and
# PYTHONPATH, which NS8 also writes there, this node computes itself.
AGENT_ENV_NAMES = frozenset({"REDIS_USER", "REDIS_PASSWORD"})


def module_variable(name: str) -> bool:
    """May state/environment set name in a step's environment? `<NAME>_IMAGE` (NS8's
    create-module names, e.g. REDIS_IMAGE) may; names that steer a loader never do."""
    if not ENV_NAME.fullmatch(name):
        return False
    if name.endswith("_IMAGE"):
        return True
    return name not in RESERVED_NAMES and not name.startswith(RESERVED_PREFIXES)


def read_env_file(path: Path) -> dict[str, str]:
    """parse_env_text of the file; {} when there is none, or when it is a link or not a
    regular file (never followed: the state dir holds what a snapshot put there)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        log.warning("%s is a link or not a file: ignored", path)
        return {}
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            log.warning("%s is not a regular file: ignored", path)
            return {}
        return parse_env_text(handle.read().decode(errors="replace"))


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
    kind = redis_keys.AgentId.parse(agent_id).kind
    if kind == "module":
        entries.append(str(settings.share / "imageroot" / "bin"))
    else:
        entries.append(str(settings.share / "bin" / kind))
    entries.append(str(settings.bin_dir))
    entries.append(os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    return ":".join(entries)


def ns8_variables(settings: Settings, agent_id: str) -> dict[str, str]:
    """What else NS8's agent.env gives an agent: where its Redis is (one Redis per
    cluster here: the leader's and the replica are the same), its base actions, and a
    module's own Python packages (<install dir>/pypkg) when it has some."""
    address = url_address(settings.redis_url)
    env = {"AGENT_BASEACTIONS_DIR": str(action_dirs(settings, agent_id)[0])}
    if address:
        env |= {"REDIS_ADDRESS": address, "REDIS_REPLICA_ADDRESS": address}
    pypkg = settings.agent_home(agent_id) / "pypkg"
    if redis_keys.AgentId.parse(agent_id).kind == "module" and pypkg.is_dir():
        inherited = os.environ.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{pypkg}:{inherited}" if inherited else str(pypkg)
    return env


# The node's settings a module's own restic runs (agent.run_restic) follow: a rootless
# module's user may not read agent.json, so its steps get them in their environment.
RESTIC_PODMAN_ARGS = "AGENT_RESTIC_PODMAN_ARGS"  # a JSON list of strings
STORAGE_RETRY_SECONDS = "AGENT_STORAGE_RETRY_SECONDS"


def restic_variables(settings: Settings) -> dict[str, str]:
    """restic_podman_args and storage_retry_seconds as a module's step variables."""
    return {
        RESTIC_PODMAN_ARGS: json.dumps(list(settings.restic_podman_args)),
        STORAGE_RETRY_SECONDS: str(settings.storage_retry_seconds),
    }


def task_variables(task_id: str, action: str, user: object = "") -> dict[str, str]:
    """NS8's per-task variables (AGENT_COMFD is per step: the runner sets it)."""
    return {
        "AGENT_TASK_ID": task_id,
        "AGENT_TASK_ACTION": action,
        "AGENT_TASK_USER": user if isinstance(user, str) else "",
    }


def module_redis_url(node_url: str, agent_env: dict[str, str]) -> str:
    """The Redis URL a module's steps, hooks and processes connect with: its own ACL user
    from its agent.env, never the node's credentials. Without them (a broken or missing
    agent.env) it is Redis's `default` user, which the embedded Redis refuses."""
    user, password = agent_env.get("REDIS_USER", ""), agent_env.get("REDIS_PASSWORD", "")
    if user and password:
        return redis_acl.agent_url(node_url, user, password)
    log.warning("no Redis credentials in the module's agent.env: connecting as 'default'")
    return redis_acl.anonymous_url(node_url)


def agent_environment(settings: Settings, agent_id: str) -> dict[str, str]:
    """os.environ + node settings + what the agent's env files may set (AGENT_ENV_NAMES
    of agent.env, module_variable names of environment) + AGENT_* variables."""
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
    agent_env = read_env_file(state / "agent.env")
    env.update({k: v for k, v in agent_env.items() if k in AGENT_ENV_NAMES})
    if redis_keys.AgentId.parse(agent_id).kind == "module":
        env["REDIS_URL"] = module_redis_url(settings.redis_url, agent_env)
    module_env = read_env_file(state / "environment")
    env.update({k: v for k, v in module_env.items() if module_variable(k)})
    home = settings.agent_home(agent_id)
    env.update(
        {
            "AGENT_ID": agent_id,
            "AGENT_STATE_DIR": str(state),
            "AGENT_INSTALL_DIR": str(home),
            "PATH": agent_path(settings, agent_id),
        }
    )
    env.update(ns8_variables(settings, agent_id))
    if redis_keys.AgentId.parse(agent_id).kind == "module":
        env.update(restic_variables(settings))
    # The node the daemon runs on is authoritative, whatever an env file says.
    env["NODE_ID"] = str(settings.node_id)
    return env
