"""How a rootless module's restic container reaches its repository.

The container runs as the module's user, so a `local:` destination (a root-owned
directory, often below directories only root may cross) cannot be bind-mounted into it.
Instead the node serves that one repository directory, for the length of the restic run,
with rclone's restic REST server on the loopback, behind a user name and password made
for this run; the container (`--network=host`, as NS8 runs it) uses
`rest:http://127.0.0.1:<port>/`. The module user is granted nothing on the host: no
ownership, no ACL, no other repository (rclone serves only below the repository path);
the files rclone writes stay root's, as a rootfull module's restic would write them.

This is the one place to change once the node's storage gateway (NS8 ≥ 3.20: restic REST
on 127.0.0.1:4694, per-module authorisation) exists: every destination then goes
through it, not only `local:` ones.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from agent.adapters import proc
from agent.adapters.destinations import Destination, local_directory, restic_target
from agent.adapters.restic import ResticTarget
from agent.core.errors import AgentError

LOOPBACK = "127.0.0.1"
START_SECONDS = 20.0


def rest_server_argv(directory: Path, port: int) -> list[str]:
    """rclone's restic REST server on directory; credentials come from the environment
    (RCLONE_USER, RCLONE_PASS), never from the command line."""
    return ["rclone", "serve", "restic", str(directory), "--addr", f"{LOOPBACK}:{port}"]


@contextlib.contextmanager
def module_restic_target(
    destination: Destination, repo_path: str, user: proc.RunAs | None
) -> Iterator[ResticTarget]:
    """The restic target of repo_path for a module's restic container: as it is for a
    rootfull module (user None) or a remote destination, served on the loopback for a
    rootless module's `local:` destination."""
    target = restic_target(destination, repo_path)
    if user is None or destination.provider != "local":
        yield target
        return
    directory = Path(local_directory(destination), repo_path.strip("/"))
    with served_repository(directory) as served:
        yield served


@contextlib.contextmanager
def served_repository(directory: Path) -> Iterator[ResticTarget]:
    """directory served as a restic REST repository on a free loopback port until the
    body ends; the server is stopped (and waited for) whatever happens."""
    username, password = secrets.token_hex(8), secrets.token_hex(24)
    env = {
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_USER": username,
        "RCLONE_PASS": password,
    }
    for _attempt in range(3):  # a port taken between the probe and rclone's bind: again
        port = _free_port()
        server = proc.spawn(
            rest_server_argv(directory, port),
            env=proc.merged_env(env),
            stdin=proc.DEVNULL,
            stdout=proc.DEVNULL,
            stderr=proc.DEVNULL,  # restic reports what fails, on its side
        )
        try:
            if _listening(server, port):
                yield ResticTarget(
                    f"rest:http://{LOOPBACK}:{port}/",
                    env={"RESTIC_REST_USERNAME": username, "RESTIC_REST_PASSWORD": password},
                )
                return
        finally:
            _stop(server)
    raise AgentError(f"cannot serve the repository {directory} to the module's restic")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(server: proc.Popen[bytes], port: int) -> bool:
    """True once the server accepts connections; False when it ended first."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return True
        time.sleep(0.05)
    return False


def _stop(server: proc.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except proc.TimeoutExpired:
            server.kill()
            server.wait()
