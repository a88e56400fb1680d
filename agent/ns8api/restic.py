"""NS8's module-side restic: `prepare_restic_command`, `run_restic`, and the volume
arguments of a module's restic container.

Storage is reached in one place, `storage_target`: today it reads the destination from
Redis and reaches the storage directly, as the node's own backups do; a storage gateway
takes its place there without changing the functions modules call.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.ns8api.comfd import SD_WARNING, assert_exp

STATE_MOUNT = "/srv/state"
VOLUMES_MOUNT = "/srv/volumes"
CACHE_DIR = "/var/cache/restic"
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def included_volume_names(include_text: str) -> list[str]:
    """The volumes state-include.conf names, read as NS8 reads it: for each line starting
    'volumes/', the text up to the next '/', else the line minus its last character (an
    unterminated last line loses one). Names a volume cannot have are left out."""
    names: list[str] = []
    for line in include_text.splitlines(keepends=True):
        if not line.startswith("volumes/"):
            continue
        rest = line[len("volumes/") :]
        slash = rest.find("/")
        name = rest[:slash] if slash >= 0 else rest[:-1]
        if not _VOLUME_NAME.fullmatch(name):
            print(f"{SD_WARNING}state-include.conf: not a volume name: {name!r}", file=sys.stderr)
            continue
        if name not in names:
            names.append(name)
    return names


def state_volume_args(
    state_dir: str, include_text: str, module_id: str, rootfull: bool
) -> list[str]:
    """`--volume=` arguments: the state dir at /srv/state and each included volume at
    /srv/volumes/<name> (rootfull volumes are named '<module id>-<name>')."""
    args = [f"--volume={state_dir}:{STATE_MOUNT}"]
    for name in included_volume_names(include_text):
        source = f"{module_id}-{name}" if rootfull else name
        args.append(f"--volume={source}:{VOLUMES_MOUNT}/{name}")
    return args


def get_state_volume_args() -> list[str]:
    """NS8's volume arguments for the module's restic container (rootfull when root)."""
    include = Path(os.environ["AGENT_INSTALL_DIR"]) / "etc" / "state-include.conf"
    try:
        text = include.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        text = ""
    return state_volume_args(
        os.environ["AGENT_STATE_DIR"], text, os.environ.get("MODULE_ID", ""), os.geteuid() == 0
    )


def existing_volume_args(
    state_dir: str, volume_names: Sequence[str], module_id: str, rootfull: bool
) -> list[str]:
    """The state dir plus every existing volume: rootless all of them by name, rootfull
    only '<module id>-*', mounted under their suffix."""
    args = [f"--volume={state_dir}:{STATE_MOUNT}"]
    prefix = f"{module_id}-"
    for name in volume_names:
        if not rootfull:
            args.append(f"--volume={name}:{VOLUMES_MOUNT}/{name}")
        elif name.startswith(prefix) and len(name) > len(prefix):
            args.append(f"--volume={name}:{VOLUMES_MOUNT}/{name[len(prefix) :]}")
    return args


def get_existing_volume_args() -> list[str]:
    """NS8's arguments mounting the state dir and every volume of the module."""
    from agent.adapters import podman

    names = podman.list_volumes(dict(os.environ))
    return existing_volume_args(
        os.environ["AGENT_STATE_DIR"], names, os.environ.get("MODULE_ID", ""), os.geteuid() == 0
    )


def storage_target(rdb: Any, repository: str, repo_path: str) -> tuple[Any, str]:
    """(restic target, restic password) of repo_path on destination repository: the one
    place where module-side restic reaches storage. A module goes through a node's storage
    gateway with its own credentials (REDIS_USER/REDIS_PASSWORD of its agent.env) and never
    sees a destination secret; node and cluster agents open the destination itself."""
    if os.environ.get("MODULE_ID"):
        from agent.adapters import gateway

        found = gateway.module_restic_target(
            rdb,
            int(os.environ["NODE_ID"]),
            gateway.Credentials.from_env(os.environ),
            repository,
            repo_path,
        )
        return found.target, found.password
    from agent.adapters.destinations import check_destination, load_destination, restic_target

    destination = load_destination(rdb, repository)
    check_destination(destination, _settings().local_policy())
    return restic_target(destination, repo_path), destination.password


def _settings() -> Any:
    from agent.core.settings import load_settings

    root = os.environ.get("AGENT_ROOT")
    return load_settings(Path(root) if root else None)


@dataclass(frozen=True)
class ResticOptions:
    """The node's settings a restic run from this process follows."""

    podman_args: tuple[str, ...]  # extra `podman run` options (restic_podman_args)
    podman_env: dict[str, str]  # for the podman calls that stop a crashed run's container
    retry_seconds: float  # storage_retry_seconds


def module_restic_options(env: Mapping[str, str]) -> ResticOptions:
    """A module's options, from the variables the node gives its steps (a rootless
    module's user cannot read agent.json); its podman settings are its environment's.
    Without them (a process the node did not start), the settings' defaults."""
    from agent.core.errors import ConfigError
    from agent.core.settings import Settings
    from agent.runtime.agentenv import RESTIC_PODMAN_ARGS, STORAGE_RETRY_SECONDS

    args_text = env.get(RESTIC_PODMAN_ARGS, "[]")
    retry_text = env.get(STORAGE_RETRY_SECONDS, str(Settings.storage_retry_seconds))
    try:
        args = json.loads(args_text)
        retry = float(retry_text)
    except ValueError:
        raise ConfigError(f"{RESTIC_PODMAN_ARGS} or {STORAGE_RETRY_SECONDS} is malformed") from None
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise ConfigError(f"{RESTIC_PODMAN_ARGS} is not a JSON list of strings")
    return ResticOptions(tuple(args), {}, retry)


def restic_options() -> ResticOptions:
    """module_restic_options for a module's process, else the node's settings."""
    if os.environ.get("MODULE_ID"):
        return module_restic_options(os.environ)
    settings = _settings()
    return ResticOptions(
        settings.restic_podman_args, settings.podman_env(), settings.storage_retry_seconds
    )


def container_name(repository: str, repo_path: str) -> str:
    """restic-<lease hash>-<module>-<pid>: a holder that takes the repository's lease over
    from a crashed one finds and stops it by that prefix."""
    from agent.core import redis_keys
    from agent.operations.repository_lease import container_prefix

    who = os.environ.get("MODULE_ID") or os.environ.get("AGENT_ID", "").replace("/", "")
    lease_key = redis_keys.repository_lease(repository, repo_path)
    return f"{container_prefix(lease_key)}{who}-{os.getpid()}"


def prepare_restic_command(
    rdb: Any,
    repository: str,
    repo_path: str,
    podman_args: Sequence[str],
    restic_args: Sequence[str],
) -> tuple[list[str], dict[str, str]]:
    """(podman argv, restic environment) running restic_args on repo_path of destination
    repository in the project's restic image; secrets only in the environment."""
    argv, env, _target, _password = _prepared(rdb, repository, repo_path, podman_args, restic_args)
    return argv, env


def _prepared(
    rdb: Any,
    repository: str,
    repo_path: str,
    podman_args: Sequence[str],
    restic_args: Sequence[str],
) -> tuple[list[str], dict[str, str], Any, str]:
    from agent.adapters import restic
    from agent.core import redis_keys

    assert_exp(
        rdb.exists(redis_keys.backup_repository(repository)) > 0,
        f"backup repository {repository} not found",
    )
    target, password = storage_target(rdb, repository, repo_path)
    argv = restic.podman_run_argv(
        target,
        list(restic_args),
        name=container_name(repository, repo_path),
        podman_args=["--replace", *restic_options().podman_args, *podman_args],
    )
    env = {**restic.container_env(target, password), "RESTIC_CACHE_DIR": CACHE_DIR}
    return argv, env, target, password


def run_restic(
    rdb: Any,
    repository: str,
    repo_path: str,
    podman_args: Sequence[str],
    restic_args: Sequence[str],
    progress_callback: Callable[[dict[str, Any]], None] | None = None,
    **kwargs: Any,
) -> Any:
    """Run prepare_restic_command's command holding the repository's lease. With a
    callback and --json, each stdout line goes to it as a dict and the finished Popen is
    returned (check=True raises CalledProcessError); otherwise subprocess.run's result."""
    from agent.adapters import proc
    from agent.adapters.restic_errors import may_leave_lock
    from agent.core import redis_keys
    from agent.operations.repository_lease import open_lease
    from agent.operations.restore_source import LEASE_WAIT_SECONDS

    argv, restic_env, target, password = _prepared(
        rdb, repository, repo_path, podman_args, restic_args
    )
    kwargs.setdefault("env", {**os.environ, **restic_env})
    kwargs.setdefault("encoding", "utf-8")
    kwargs.setdefault("stdout", sys.stdout)
    if os.environ.get("DEBUG") == "1":
        print("run_restic:", *argv, file=sys.stderr)
    options = restic_options()
    with open_lease(
        rdb,
        redis_keys.repository_lease(repository, repo_path),
        target,
        password,
        options.podman_env,
        wait_seconds=LEASE_WAIT_SECONDS,
        retry_limit=options.retry_seconds,
    ) as lease:
        if progress_callback is not None and "--json" in restic_args:
            check = kwargs.pop("check", False)
            kwargs["stdout"] = proc.PIPE
            with proc.module_popen(argv, **kwargs) as child:
                assert child.stdout is not None  # stdout=PIPE
                for line in child.stdout:
                    try:
                        message = json.loads(line)
                    except ValueError:
                        print(line.rstrip("\n"), file=sys.stderr)
                        continue
                    progress_callback(message)
            if may_leave_lock(child.returncode):
                lease.abnormal_end = f"restic ended with exit {child.returncode}"
            if check and child.returncode != 0:
                raise proc.CalledProcessError(child.returncode, argv)
            return child
        try:
            done = proc.module_run(argv, **kwargs)
        except proc.CalledProcessError as exc:
            if may_leave_lock(exc.returncode):
                lease.abnormal_end = f"restic ended with exit {exc.returncode}"
            raise
        if may_leave_lock(done.returncode):
            lease.abnormal_end = f"restic ended with exit {done.returncode}"
        return done
