"""The images under containers/ and the Redis fixture do what the agent relies on."""

from __future__ import annotations

import os
import re
import secrets
import ssl
import subprocess
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_IMAGE, RedisServer


def podman_run(
    image: str, *args: str, volumes: dict[Path, str] | None = None, entrypoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`podman run --rm` the image; RESTIC_PASSWORD goes in by name, its value never in argv."""
    cmd = ["podman", "run", "--rm", "--env", "RESTIC_PASSWORD"]
    for host_path, target in (volumes or {}).items():
        cmd += ["--volume", f"{host_path}:{target}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run(
        [*cmd, image, *args], capture_output=True, text=True, timeout=120, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} -> {result.returncode}\n{result.stderr}"
    return result.stdout


def tree(root: Path) -> dict[str, bytes | str]:
    """Relative path -> file content (or symlink target), for comparing directory trees."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


@pytest.fixture
def restic_password(monkeypatch: pytest.MonkeyPatch) -> str:
    password = secrets.token_urlsafe(16)
    monkeypatch.setenv("RESTIC_PASSWORD", password)
    return password


@pytest.mark.podman
def test_restic_image_has_restic_0_17_or_newer(restic_image: str) -> None:
    out = ok(podman_run(restic_image, "version"))
    match = re.match(r"restic (\d+)\.(\d+)\.(\d+)", out)
    assert match, out
    assert tuple(map(int, match.groups())) >= (0, 17, 0)


@pytest.mark.podman
def test_restic_image_runs_rclone(restic_image: str) -> None:
    out = ok(podman_run(restic_image, "version", entrypoint="/usr/bin/rclone"))
    assert re.match(r"rclone v\d+\.\d+", out), out


@pytest.mark.podman
def test_restic_image_ca_bundle_loads(restic_image: str, tmp_path: Path) -> None:
    # No shell in the image: rclone copies the bundle out, Python's ssl parses it.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ok(
        podman_run(
            restic_image,
            *("copyto", "/etc/ssl/certs/ca-certificates.crt", "/out/ca.crt"),
            volumes={out_dir: "/out"},
            entrypoint="/usr/bin/rclone",
        )
    )
    context = ssl.create_default_context(cafile=out_dir / "ca.crt")
    assert context.cert_store_stats()["x509_ca"] > 100


@pytest.mark.podman
def test_restic_roundtrip_local_repository(
    restic_image: str, restic_password: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, repo, target = tmp_path / "source", tmp_path / "repo", tmp_path / "restore"
    for d in (source / "sub" / "deeper", repo, target):
        d.mkdir(parents=True)
    (source / "a.txt").write_text("hello\n")
    (source / "sub" / "b.bin").write_bytes(secrets.token_bytes(300_000))
    (source / "sub" / "deeper" / "empty").touch()
    (source / "link").symlink_to("sub/b.bin")
    volumes = {source: "/data:ro", repo: "/repo", target: "/restore"}

    ok(podman_run(restic_image, "-r", "/repo", "init", volumes=volumes))
    ok(podman_run(restic_image, "-r", "/repo", "backup", "--host", "t", "/data", volumes=volumes))
    ok(podman_run(restic_image, "-r", "/repo", "restore", "latest", "--target", "/restore",
                  volumes=volumes))  # fmt: skip

    assert restic_password not in (repo / "config").read_text(errors="replace")
    assert tree(target / "data") == tree(source)

    # The password from the environment is what opened the repository.
    monkeypatch.setenv("RESTIC_PASSWORD", "not-" + restic_password)
    wrong = podman_run(restic_image, "-r", "/repo", "snapshots", volumes=volumes)
    assert wrong.returncode == 12, wrong.stderr  # restic >= 0.17: 12 = wrong password


@pytest.mark.podman
def test_restic_finds_rclone_for_rclone_repositories(
    restic_image: str, restic_password: str, tmp_path: Path
) -> None:
    # rclone::local:PATH is rclone's on-the-fly local backend: no rclone.conf needed.
    out = ok(podman_run(restic_image, "-r", "rclone::local:/repo/r", "init",
                        volumes={tmp_path: "/repo"}))  # fmt: skip
    assert "created restic repository" in out
    assert (tmp_path / "r" / "config").is_file()


def test_redis_fixture_answers(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0  # redis_client flushed whatever an earlier test left
    assert redis_client.ping()
    redis_client.set("test:answers", "yes")
    assert redis_client.get("test:answers") == "yes"


def test_redis_server_is_where_the_fixture_says(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("test:where", "here")
    info = redis_client.info("server")
    if redis_server.backend == "container":
        # PID 1 of its own namespace, running the image's binary: not a host redis.
        assert info["process_id"] == 1
        assert info["executable"] == "/usr/bin/redis-server"
        image = subprocess.run(
            ["podman", "inspect", "--format", "{{.ImageName}}", str(redis_server.container_id)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert image == REDIS_IMAGE
    elif redis_server.backend == "subprocess":
        assert info["process_id"] == redis_server.pid
    else:
        pytest.skip("REDIS_URL points at a server this session does not manage")
