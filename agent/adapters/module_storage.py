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
import time
from collections.abc import Iterator
from pathlib import Path

from agent.adapters import proc, rclone, sockets
from agent.adapters.destinations import Destination, local_directory, restic_target
from agent.adapters.restic import ResticTarget
from agent.core.errors import AgentError

LOOPBACK = sockets.LOOPBACK
START_SECONDS = 20.0


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
    server = proc.spawn(
        rclone.serve_restic_argv(f"{LOOPBACK}:0", str(directory)),
        env=proc.merged_env(env),
        stdin=proc.DEVNULL,
        stdout=proc.DEVNULL,
        stderr=proc.DEVNULL,  # restic reports what fails, on its side
    )
    try:
        port = _listening_port(server)
        if port is None:
            raise AgentError(f"cannot serve the repository {directory} to the module's restic")
        yield ResticTarget(
            f"rest:http://{LOOPBACK}:{port}/",
            env={"RESTIC_REST_USERNAME": username, "RESTIC_REST_PASSWORD": password},
        )
    finally:
        _stop(server)


def _listening_port(server: proc.Popen[bytes]) -> int | None:
    """The port the server bound (port 0: the kernel's pick, so no other process holds
    it); None when it ended or did not listen in time."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and server.poll() is None:
        port = sockets.bound_port(server.pid, LOOPBACK)
        if port is not None:
            return port
        time.sleep(0.02)
    return None


def _stop(server: proc.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except proc.TimeoutExpired:
            server.kill()
            server.wait()
