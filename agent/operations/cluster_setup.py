"""The embedded default: init a node's data dir, start/stop its Redis and daemon."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from redis import exceptions as redis_errors

from agent.adapters import gateway, podman_store, proc
from agent.adapters.redis_store import REDIS_ERRORS, connect, connect_binary
from agent.core import filemodes, redis_acl, redis_keys
from agent.core.errors import AgentError, ConfigError
from agent.core.settings import Settings, load_settings, share_dir, write_settings
from agent.runtime import agent_acls, lease
from agent.web import auth as web_auth

log = logging.getLogger("agent.cluster")

DAEMON_PID = "agent.pid"
REDIS_PID = "redis.pid"
WEB_PID = "web.pid"
WEB_PORT = 9311


@dataclass(frozen=True)
class UpResult:
    settings: Settings
    started_redis: bool
    started_daemon: bool
    daemon_pid: int
    redis_state: str = ""  # what up found and did about the private Redis, for the operator
    daemon_state: str = ""
    web_url: str = ""  # the console's address, when this node (the leader) serves it
    gateway_state: str = ""

    def report(self) -> list[str]:
        lines = [f"redis: {self.redis_state}"] if self.redis_state else []
        served = [f"storage gateway: {self.gateway_state}"] if self.gateway_state else []
        return [*lines, f"daemon: {self.daemon_state}", *served]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_store(settings: Settings) -> podman_store.Store | None:
    """The node's own podman store, when it was created with one."""
    return podman_store.Store(settings.root) if settings.storage_conf else None


def release_private_storage(settings: Settings) -> None:
    """Undo the overlay bind mount of the node's own store, so the data directory can be
    removed once the node is down."""
    store = private_store(settings)
    if store is not None:
        podman_store.release(store)


def init(
    root: Path,
    node_id: int,
    redis_url: str | None,
    private_storage: bool = False,
    local_roots: tuple[str, ...] = (),
) -> Settings:
    """Create the data dir of node node_id; node 1 without redis_url gets a private Redis."""
    if (root / "agent.json").exists():
        raise ConfigError(f"{root} already holds a node: remove it or pick another AGENT_ROOT")
    store = (
        podman_store.create(root, share_dir() / "containers" / "containers.conf")
        if private_storage
        else None
    )
    embedded = not redis_url
    port = 0
    if embedded:
        if node_id != 1:
            raise ConfigError(
                "a node other than 1 joins an existing cluster: give --redis-url "
                "or --join with the first node's data directory"
            )
        port = free_port()
        password = secrets.token_hex(24)
        redis_url = f"redis://:{password}@127.0.0.1:{port}/0"
    else:
        assert redis_url is not None
        redis_url = own_node_url(redis_url, node_id)
    settings = Settings(
        root=root,
        node_id=node_id,
        redis_url=redis_url,
        embedded_redis=embedded,
        redis_port=port,
        storage_conf=str(store.storage_conf) if store else "",
        containers_conf=str(store.containers_conf) if store else "",
        local_roots=local_roots,
        web_listen=f"127.0.0.1:{WEB_PORT if port_is_free(WEB_PORT) else free_port()}",
        # A port of its own: nodes sharing a machine (tests, trials) must not race for
        # one; where it listens is published in node/<N>/gateway, so no port is assumed.
        gateway_listen=(f"127.0.0.1:{free_port()}",),
    )
    for path in (
        root,
        settings.run_dir,
        settings.log_dir,
        root / "modules",
        settings.state_dir(redis_keys.CLUSTER),
        settings.state_dir(redis_keys.node_agent(node_id)),
    ):
        path.mkdir(mode=filemodes.PRIVATE_DIR, parents=True, exist_ok=True)
    if embedded:
        write_redis_conf(settings, password)
    write_settings(settings)
    filemodes.apply_private_modes(settings)  # mkdir's mode is cut by the umask
    web_auth.create_first_password(root)
    return settings


def own_node_url(url: str, node_id: int) -> str:
    """url with a Redis user of the node's own (node/<N>, full rights) in place of the
    credentials it carries, which made that user. A Redis whose given user may not manage
    users keeps the given credentials (said in the log)."""
    agent_id = redis_keys.node_agent(node_id)
    client = connect(url)
    try:
        password = agent_acls.create_agent_user(client, agent_id)
    except redis_errors.ResponseError as exc:  # NOPERM, or ACL disabled on that server
        log.warning("node %s keeps the credentials it was given: %s", node_id, exc)
        return url
    finally:
        client.close()
    return redis_acl.agent_url(url, agent_id, password)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def join_url(first_root: Path) -> str:
    return load_settings(first_root).redis_url


def write_redis_conf(settings: Settings, password: str) -> None:
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    conf = settings.redis_dir / "redis.conf"
    text = "\n".join(
        [
            "bind 127.0.0.1",
            f"port {settings.redis_port}",
            f"requirepass {password}",
            "daemonize yes",
            f"pidfile {settings.run_dir / REDIS_PID}",
            f"dir {settings.redis_dir}",
            f"logfile {settings.log_dir / 'redis.log'}",
            "appendonly yes",
            "save 60 1",
            # RESTORE payloads come from snapshots (module labels): checked, never trusted.
            "sanitize-dump-payload yes",
            "",
        ]
    )
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def read_pid(path: Path) -> int | None:
    """The pid in path while that process runs (a zombie has stopped)."""
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return None if _is_zombie(pid) else pid


def start_redis(settings: Settings) -> tuple[bool, str]:
    """Start the private redis-server unless it runs and answers: (started, what was done)."""
    pid_file = settings.run_dir / REDIS_PID
    pid = read_pid(pid_file)
    if pid is not None:
        _wait_for_redis(settings, f"redis-server (pid {pid}) runs but does not answer")
        return False, f"private Redis running (pid {pid})"
    # A pid file without its process: the server died (killed, crashed, out of memory).
    died = pid_file.exists()
    pid_file.unlink(missing_ok=True)
    proc.run(
        ["redis-server", str(settings.redis_dir / "redis.conf")],
        check=True,
        timeout=30,
        umask=filemodes.PRIVATE_UMASK,  # its AOF and RDB files hold every secret
    )
    _wait_for_redis(settings, "redis-server did not start")
    started = read_pid(pid_file)
    if died:
        return True, f"private Redis had stopped: restarted it (pid {started})"
    return True, f"private Redis started (pid {started})"


def _wait_for_redis(settings: Settings, problem: str) -> None:
    # Loading a large append-only file takes a while: Redis answers LOADING meanwhile.
    deadline = time.monotonic() + 30
    while True:
        try:
            connect(settings.redis_url).ping()
            return
        except AgentError:  # connect() says so, LOADING (a ConnectionError) included
            if time.monotonic() > deadline:
                raise AgentError(f"{problem}: see {settings.log_dir}/redis.log") from None
            time.sleep(0.05)


def start_daemon(settings: Settings) -> tuple[bool, int]:
    """Start 'agent serve' in the background; wait until it holds the node lease."""
    pid_file = settings.run_dir / DAEMON_PID
    pid = read_pid(pid_file)
    redis = connect(settings.redis_url)
    if pid is not None:
        # After a Redis restart the running daemon takes its lease back at its next
        # heartbeat: starting a second one meanwhile would abort the first one's tasks.
        deadline = time.monotonic() + lease.HEARTBEAT_SECONDS * 2 + 1
        while not lease.is_served(redis, settings.node_id):
            if time.monotonic() > deadline or read_pid(pid_file) is None:
                raise AgentError(
                    f"the agent daemon (pid {pid}) runs but does not hold node "
                    f"{settings.node_id}'s lease: see {settings.log_dir}/agent.log; stop it "
                    f"(kill {pid}) and run 'agent cluster up' again"
                )
            time.sleep(0.2)
        return False, pid
    log_path = settings.log_dir / "agent.log"
    env = dict(os.environ, AGENT_ROOT=str(settings.root))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, filemodes.PRIVATE_FILE)
    with os.fdopen(fd, "ab") as log_file:
        child = proc.spawn(
            [sys.executable, "-m", "agent.cli", "serve"],
            env=env,
            stdin=proc.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            umask=filemodes.PRIVATE_UMASK,
        )
    pid_file.write_text(f"{child.pid}\n")
    deadline = time.monotonic() + 15
    while not lease.is_served(redis, settings.node_id):
        if child.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise AgentError("the agent daemon did not start: " + " | ".join(tail))
        time.sleep(0.05)
    return True, child.pid


def up(settings: Settings) -> UpResult:
    # A data dir made before this rule, or by hand with a loose umask, is fixed first.
    fixed = filemodes.apply_private_modes(settings)
    if fixed:
        log.warning("made %d path(s) under %s readable by root only", len(fixed), settings.root)
    started_redis, redis_state = start_redis(settings) if settings.embedded_redis else (False, "")
    # Redis keeps its keys over a restart (AOF), not its ACL: the users come from the record.
    agent_acls.apply_acls(connect(settings.redis_url))
    started_daemon, pid = start_daemon(settings)
    daemon_state = f"{'started' if started_daemon else 'already running'} (pid {pid})"
    web_url = start_web(settings) if is_leader(settings) and settings.web_listen else ""
    return UpResult(
        settings,
        started_redis,
        started_daemon,
        pid,
        redis_state,
        daemon_state,
        web_url,
        start_gateway(settings, pid, started_daemon),
    )


def start_gateway(settings: Settings, daemon_pid: int = 0, daemon_started: bool = False) -> str:
    """The node's storage gateway (none without gateway_listen): a daemon just started
    starts its own, waited for here; otherwise started unless it runs, tied to daemon_pid."""
    if not settings.gateway_listen:
        return ""
    if daemon_started:
        loopback = gateway.published(settings.gateway_listen, settings.gateway_address)
        address = loopback["loopback"] or settings.gateway_listen[0]
        deadline = time.monotonic() + gateway.START_SECONDS + 5
        while not gateway.answers(address):
            if time.monotonic() > deadline:
                return f"not running: see {settings.log_dir}/agent.log and gateway.log"
            time.sleep(0.1)
        return (
            f"started by the daemon (pid {gateway.read_pid(settings.run_dir / gateway.PID_FILE)})"
        )
    state = gateway.start_node_gateway(settings, watch_pid=daemon_pid or None)
    if state is None:
        return ""
    return f"{'started' if state[0] else 'already running'} (pid {state[1]})"


def is_leader(settings: Settings) -> bool:
    leader = connect(settings.redis_url).hget(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID")
    return str(leader) == str(settings.node_id)


def start_web(settings: Settings) -> str:
    """Start `agent web` in the background unless it runs; wait until it answers."""
    from agent.web.server import parse_listen

    address = parse_listen(settings.web_listen)
    host = "127.0.0.1" if address.host in ("0.0.0.0", "::") else address.host
    url = (
        f"http://{host}:{address.port}/" if ":" not in host else f"http://[{host}]:{address.port}/"
    )
    pid_file = settings.run_dir / WEB_PID
    if read_pid(pid_file) is not None:
        return url
    log_path = settings.log_dir / "web.log"
    env = dict(os.environ, AGENT_ROOT=str(settings.root))
    with open(log_path, "ab") as log_file:
        child = proc.spawn(
            [sys.executable, "-m", "agent.cli", "web"],
            env=env,
            stdin=proc.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    pid_file.write_text(f"{child.pid}\n")
    deadline = time.monotonic() + 15
    while not _answers(host, address.port):
        if child.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise AgentError("the web console did not start: " + " | ".join(tail))
        time.sleep(0.1)
    return url


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def stop_pid(path: Path, timeout: float) -> bool:
    pid = read_pid(path)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_pid(path) is None or _is_zombie(pid):
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (OSError, IndexError):
        return True


def down(settings: Settings, timeout: float = 90.0) -> list[str]:
    """Stop the daemon (it lets running tasks finish), then the private Redis."""
    stopped = []
    if stop_pid(settings.run_dir / WEB_PID, 10):
        stopped.append("web console")
    if gateway.stop_node_gateway(settings):
        stopped.append("storage gateway")
    if stop_pid(settings.run_dir / DAEMON_PID, timeout):
        stopped.append("agent daemon")
    if settings.embedded_redis and read_pid(settings.run_dir / REDIS_PID) is not None:
        with contextlib.suppress(*REDIS_ERRORS):  # SHUTDOWN closes the connection under us
            connect_binary(settings.redis_url).shutdown(save=True)
        stop_pid(settings.run_dir / REDIS_PID, 10)
        stopped.append("redis")
    release_private_storage(settings)
    return stopped
