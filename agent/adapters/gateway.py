"""The node's storage gateway as the rest of the agent sees it: the process `cluster up`
starts and `cluster down` stops, and the one function module-side restic reaches storage
through (module_restic_target). Restore grants: agent/runtime/agent_acls.restore_grant.

A module never holds a destination secret: it names its destination and repository path,
shows its own credentials (`REDIS_USER`/`REDIS_PASSWORD` of its agent.env) and gets a
`rest:` repository on a gateway plus the restic password (which NS8 too lets every agent
read); the gateway decides what it may do there (agent/core/gateway_rules.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from agent.adapters import proc, rclone
from agent.adapters.redis_store import Redis
from agent.adapters.restic import ResticTarget
from agent.core import filemodes, redis_keys
from agent.core.errors import ActionFailed, AgentError, ConfigError
from agent.core.gateway_rules import WEBDAV_PREFIX
from agent.core.settings import Settings

PID_FILE = "gateway.pid"
WATCH_FILE = "gateway.watch"  # the pid of the daemon the gateway is tied to, if any
PROBE_SECONDS = 5.0
# A gateway that is gone refuses at once; one that is alive on a busy node (every core
# taken) may need seconds to answer: 2 s failed listings and restores there.
HEALTH_SECONDS = 10.0
START_SECONDS = 60.0  # a saturated node took over 15 s; a gateway that dies is seen at once

log = logging.getLogger("agent.gateway")


@dataclass(frozen=True)
class Credentials:
    """An agent's own user and password (its Redis ACL user's, as cluster/acls records)."""

    user: str
    password: str

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    @classmethod
    def from_redis_url(cls, url: str) -> Credentials | None:
        """A node's own user and password, as its Redis URL carries them (`cluster init`
        made them); None for a URL without a user of its own."""
        parts = urlsplit(url)
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        return cls(user, password) if user and user != "default" and password else None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Credentials:
        user, password = env.get("REDIS_USER", ""), env.get("REDIS_PASSWORD", "")
        if not user or not password:
            raise ActionFailed("the module has no credentials (REDIS_USER/REDIS_PASSWORD)")
        return cls(user, password)


@dataclass(frozen=True)
class GatewayRepository:
    """A repository as a module reaches it: through which node's gateway, and restic's
    password for its destination."""

    target: ResticTarget
    password: str
    node_id: int
    address: str


def gateway_addresses(redis: Redis, node_id: int) -> list[tuple[int, str]]:
    """(node, host:port) of every published gateway: this node's loopback one first,
    then the others' cluster addresses in node order."""
    nodes = sorted(int(n) for n in redis.smembers(redis_keys.CLUSTER_NODES) if str(n).isdigit())
    found: list[tuple[int, str]] = []
    for node in [node_id, *(n for n in nodes if n != node_id)]:
        record = redis.hgetall(redis_keys.node_gateway(node))
        address = record.get("loopback" if node == node_id else "cluster", "")
        if address:
            found.append((node, address))
    return found


def gateway_target(
    address: str, destination_id: str, repo_path: str, credentials: Credentials
) -> ResticTarget:
    """restic's `rest:` repository on a gateway, the credentials in restic's environment
    (RESTIC_REST_USERNAME/PASSWORD: by name into the container, never on a command line)."""
    env = {"RESTIC_REST_USERNAME": credentials.user, "RESTIC_REST_PASSWORD": credentials.password}
    return ResticTarget(f"rest:http://{address}/{destination_id}/{repo_path.strip('/')}", env=env)


def webdav_remote(
    address: str, destination_id: str, credentials: Credentials
) -> tuple[str, dict[str, str]]:
    """(rclone remote spec, environment defining it) for the files of a destination
    through a gateway's WebDAV: the credentials in the environment only (rclone wants the
    password obscured)."""
    options = {
        "type": "webdav",
        "url": f"http://{address}{WEBDAV_PREFIX}{destination_id}",
        "vendor": "other",
        "user": credentials.user,
        "pass": rclone.obscure(credentials.password),
    }
    return f"{rclone.REMOTE}:", rclone.config_env(options)


def module_restic_target(
    redis: Redis,
    node_id: int,
    credentials: Credentials,
    destination_id: str,
    repo_path: str,
) -> GatewayRepository:
    """The repository at repo_path ('<image>/<uuid>') of a destination, for module-side
    restic on node_id: through this node's gateway, or for a `local` destination that
    only another node holds, through that node's. ActionFailed says which gateway failed
    how when none serves it."""
    provider = redis.hget(redis_keys.backup_repository(destination_id), "provider")
    if not provider:
        raise ActionFailed(f"no backup destination {destination_id}")
    addresses = gateway_addresses(redis, node_id)
    if not addresses or addresses[0][0] != node_id:
        raise ActionFailed(f"node {node_id} has no storage gateway (agent cluster up starts it)")
    candidates = addresses if provider == "local" else addresses[:1]
    with plain_http_client(credentials.auth) as client:
        # No gateway holds it yet: a new repository is made through this node's gateway
        # (NS8's module-backup runs `restic init` itself); anything else restic refuses.
        node, address = _holder(client, candidates, destination_id, repo_path) or addresses[0]
        password = _restic_password(client, address, destination_id)
    target = gateway_target(address, destination_id, repo_path, credentials)
    return GatewayRepository(target, password, node, address)


def remote_holder(
    redis: Redis, node_id: int, credentials: Credentials, destination_id: str, repo_path: str
) -> tuple[int, str] | None:
    """(node, gateway address) of the first other node whose gateway holds the repository
    at repo_path of a `local` destination, for node-side restic on node_id when its own
    disk does not: None when none does. ActionFailed when a gateway refuses, or none holds
    it and one did not answer (which may be the one holding it)."""
    others = [
        (node, address) for node, address in gateway_addresses(redis, node_id) if node != node_id
    ]
    with plain_http_client(credentials.auth) as client:
        return _holder(client, others, destination_id, repo_path)


def _holder(
    client: httpx.Client,
    candidates: Sequence[tuple[int, str]],
    destination_id: str,
    repo_path: str,
) -> tuple[int, str] | None:
    """The first of candidates whose gateway has the repository's config file; None when
    none has it and all answered."""
    problems: list[str] = []
    for node, address in candidates:
        url = f"http://{address}/{destination_id}/{repo_path.strip('/')}/config"
        try:
            answer = client.head(url)
        except httpx.HTTPError as exc:
            problems.append(f"node {node}'s gateway at {address} does not answer: {exc}")
            continue
        if answer.status_code == 200:
            return node, address
        if answer.status_code in (401, 403):
            raise ActionFailed(
                f"node {node}'s gateway refused {repo_path} on {destination_id} "
                f"(HTTP {answer.status_code}): not this module's repository"
            )
        if answer.status_code != 404:
            problems.append(f"node {node}'s gateway: HTTP {answer.status_code} {_text(answer)}")
    if problems:
        raise ActionFailed(
            f"{repo_path} on {destination_id} is on no reachable gateway: " + "; ".join(problems)
        )
    return None


def plain_http_client(auth: tuple[str, str] | None = None) -> httpx.Client:
    """A client for gateway addresses, which are plain http:// (loopback or the cluster's
    network): no TLS context, whose CA bundle alone takes 0.05–0.3 s to load per client
    here, on every module-side restore and backup. Only http:// URLs are built for it."""
    return httpx.Client(timeout=PROBE_SECONDS, auth=auth, verify=False)


def _restic_password(client: httpx.Client, address: str, destination_id: str) -> str:
    try:
        answer = client.get(f"http://{address}/_gateway/restic-password/{destination_id}")
    except httpx.HTTPError as exc:
        raise ActionFailed(f"the gateway at {address} does not answer: {exc}") from None
    if answer.status_code != 200 or not answer.text:
        raise ActionFailed(f"the gateway at {address} gave no restic password: {_text(answer)}")
    return answer.text


def _text(answer: httpx.Response) -> str:
    """The gateway's reason for a refusal: its body, or for a HEAD its reason header."""
    if answer.text:
        return proc.last_line(answer.text[:500])
    return answer.headers.get("X-Gateway-Reason") or f"HTTP {answer.status_code}"


# --- the gateway process ---------------------------------------------------------------
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:4694' or '[::1]:4694' → (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"gateway_listen entries are host:port, not {text!r}")
    return host, int(port)


def published(listen: Sequence[str], cluster_address: str) -> dict[str, str]:
    """What node/<N>/gateway says: the loopback address for this node's modules, and the
    one other nodes use (gateway_address, else the first non-loopback listen address)."""
    hosts = [(text, parse_address(text)[0]) for text in listen]
    loopback = next((text for text, host in hosts if host in LOOPBACK_HOSTS), "")
    outside = cluster_address or next(
        (
            text
            for text, host in hosts
            if host not in LOOPBACK_HOSTS and host not in ("0.0.0.0", "::")
        ),
        "",
    )
    return {"loopback": loopback, "cluster": outside}


def start_node_gateway(
    settings: Settings, watch_pid: int | None = None, stopping: threading.Event | None = None
) -> tuple[bool, int] | None:
    """The node's gateway, started unless it runs: (started now, pid); None when the node
    has none (gateway_listen empty)."""
    if not settings.gateway_listen:
        return None
    loopback = published(settings.gateway_listen, settings.gateway_address)["loopback"]
    address = loopback or settings.gateway_listen[0]
    return start_gateway(
        settings.root, settings.run_dir, settings.log_dir, address, watch_pid, stopping
    )


def start_for_daemon(settings: Settings, stopping: threading.Event | None = None) -> bool:
    """The node's gateway for its daemon (stopped with it), unless it runs already; True
    when started here. One that cannot start fails module-side storage only, never the
    daemon. stopping: the daemon's stop, which ends the wait for a slow gateway."""
    try:
        state = start_node_gateway(settings, os.getpid(), stopping)
    except GatewayStartStopped:
        return False
    except (AgentError, OSError) as exc:
        log.error("storage gateway of node %s not started: %s", settings.node_id, exc)
        return False
    return state is not None and state[0]


def stop_node_gateway(settings: Settings, timeout: float = 10.0) -> bool:
    """SIGTERM the node's gateway (it stops its rclone children) and wait; True if it ran."""
    return _stop(settings.run_dir / PID_FILE, timeout)


def _stop(pid_file: Path, timeout: float = 10.0) -> bool:
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while read_pid(pid_file) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if read_pid(pid_file) is not None:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def gateway_argv(watch_pid: int | None = None) -> list[str]:
    """`agent gateway`, ending by itself once watch_pid (the daemon that started it) is
    gone: a daemon killed outright leaves no gateway behind."""
    argv = [sys.executable, "-m", "agent.cli", "gateway"]
    return [*argv, f"--watch-pid={watch_pid}"] if watch_pid else argv


class GatewayStartStopped(AgentError):
    """The caller stopped while its gateway started (the gateway was stopped too)."""


def start_gateway(
    root: Path,
    run_dir: Path,
    log_dir: Path,
    loopback: str,
    watch_pid: int | None = None,
    stopping: threading.Event | None = None,
) -> tuple[bool, int]:
    """Start `agent gateway` for the node at root unless it runs; wait until it answers
    at loopback (host:port), or stopping is set. (started, pid)."""
    pid_file, watch_file = run_dir / PID_FILE, run_dir / WATCH_FILE
    running = read_pid(pid_file)
    if running is not None:
        if read_pid(watch_file) is not None or not watch_file.exists():
            return False, running
        # Tied to a daemon that is gone (killed outright): it stops by itself within a
        # second, so a new daemon must not count on it. Stop it now, then start anew.
        _stop(pid_file)
    log_path = log_dir / "gateway.log"
    env = dict(os.environ, AGENT_ROOT=str(root))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, filemodes.PRIVATE_FILE)
    with os.fdopen(fd, "ab") as log_file:
        child = proc.spawn(
            gateway_argv(watch_pid),
            env=env,
            stdin=proc.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            umask=filemodes.PRIVATE_UMASK,
        )
    pid_file.write_text(f"{child.pid}\n")
    if watch_pid:
        watch_file.write_text(f"{watch_pid}\n")
    else:
        watch_file.unlink(missing_ok=True)
    deadline = time.monotonic() + START_SECONDS
    while not answers(loopback):
        stopped = stopping is not None and stopping.is_set()
        if stopped or child.poll() is not None or time.monotonic() > deadline:
            _stop(pid_file)  # one that came up too late must not run on unwatched
            with contextlib.suppress(proc.TimeoutExpired):
                child.wait(5)
            if stopped:
                raise GatewayStartStopped("stopped while the storage gateway started")
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise AgentError("the storage gateway did not start: " + " | ".join(tail))
        time.sleep(0.1)
    return True, child.pid


def answers(address: str) -> bool:
    """True when a gateway answers its health check at address (host:port)."""
    try:
        with plain_http_client() as client:
            health = f"http://{address}/_gateway/health"
            return client.get(health, timeout=HEALTH_SECONDS).status_code == 200
    except httpx.HTTPError:
        return False


def read_pid(path: Path) -> int | None:
    """The pid in path when that process still runs (not a zombie)."""
    try:
        pid = int(path.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return None if stat.rsplit(")", 1)[-1].split()[0] == "Z" else pid
