"""Real storage backends for destination tests: rclone serve restic/webdav, moto's S3."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.adapters import sockets
from tests.conftest import free_port
from tests.support.processes import terminate

RCLONE = shutil.which("rclone") or "/usr/bin/rclone"
USER = "probe-user"
PASSWORD = "Sup3r-Secret-Webdav-Pass"


@dataclass(frozen=True)
class Backend:
    url: str  # http://127.0.0.1:PORT
    root: Path
    port: int


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until proc itself listens on port (another process answering there does not count:
    proc would then have failed to bind it)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if port in sockets.listening_ports(proc.pid):
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"backend on port {port} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def serve(argv: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield
    finally:
        terminate(proc, timeout=10)


@contextlib.contextmanager
def rclone_serve(kind: str, root: Path, *extra: str) -> Iterator[Backend]:
    """`rclone serve restic|webdav` of root with basic auth USER/PASSWORD, on the port the
    kernel gives it (a port picked free beforehand could be taken by another worker's
    process first, and the test would then talk to that one)."""
    argv = [RCLONE, "serve", kind, str(root), "--addr=127.0.0.1:0"]
    argv += [f"--user={USER}", f"--pass={PASSWORD}", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _bound_port(proc)
        yield Backend(f"http://127.0.0.1:{port}", root, port)
    finally:
        terminate(proc, timeout=10)


def _bound_port(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while (port := sockets.bound_port(proc.pid)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not listen")
        time.sleep(0.02)
    return port


@contextlib.contextmanager
def refusing(port: int) -> Iterator[None]:
    """port kept bound and not listening: connections to it are refused, and no other
    process is given it (a storage outage that stays one for the whole test)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        holder.bind(("127.0.0.1", port))
        yield


@contextlib.contextmanager
def moto_s3(root: Path) -> Iterator[Backend]:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    with serve([str(moto), "-H", "127.0.0.1", "-p", str(port)], port):
        yield Backend(f"http://127.0.0.1:{port}", root, port)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """path as a read-only bind mount (root only): even root cannot write there."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def dead_port() -> int:
    """A port nothing listens on (free right now)."""
    return free_port()


# Requests moto answers before it starts checking credentials: exactly the set-up below
# (bucket, two users with a policy and a key each).
_SETUP_REQUESTS = 7


@contextlib.contextmanager
def moto_s3_with_users(root: Path) -> Iterator[tuple[Backend, dict[str, str], dict[str, str]]]:
    """moto's S3 with IAM checks on: (backend, writer keys, read-only keys) for bucket1."""
    import json
    import os

    import boto3

    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_REQUESTS))
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        admin = {
            "endpoint_url": url,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        boto3.client("s3", **admin).create_bucket(Bucket="bucket1")
        iam = boto3.client("iam", **admin)
        keys = []
        for user, actions in (("writer", ["s3:*"]), ("reader", ["s3:GetObject", "s3:ListBucket"])):
            iam.create_user(UserName=user)
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys.append(
                {
                    "aws_access_key_id": key["AccessKeyId"],
                    "aws_secret_access_key": key["SecretAccessKey"],
                }
            )
        yield Backend(url, root, port), keys[0], keys[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
