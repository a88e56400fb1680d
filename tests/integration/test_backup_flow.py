"""The operator's sequence through api-cli: destination, backup, run-backup, list-backups."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.runtime import tasks
from tests.support import backends, backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


def add_module(cluster: ClusterHarness, image: str, node: int = 1) -> str:
    code, output, stderr = cluster.api_json("add-module", {"image": image, "node": node})
    assert code == 0, stderr
    return str(output["module_id"])


def add_destination(cluster: ClusterHarness, provider: str, url: str, **parameters: str) -> str:
    code, output = backups.api_add_destination(cluster, provider, url, **parameters)
    assert code == 0, output
    return str(output["id"])


def add_backup(cluster: ClusterHarness, repository: str, instances: list[str]) -> int:
    code, output, stderr = cluster.api_json(
        "add-backup",
        {
            "name": "nightly",
            "repository": repository,
            "schedule": "daily",
            "retention": 3,
            "instances": instances,
            "enabled": True,
        },
    )
    assert code == 0, (output, stderr)
    return int(output)


def statuses(cluster: ClusterHarness, backup_id: int) -> dict[str, Any]:
    code, output, _ = cluster.api_json("list-backups")
    assert code == 0
    backup = next(b for b in output["backups"] if b["id"] == backup_id)
    return {item["module_id"]: item["status"] for item in backup["instances"]}


def check_backed_up(cluster: ClusterHarness, backup_id: int, modules: list[str]) -> None:
    result = cluster.api("run", "run-backup", "--data", json.dumps({"id": backup_id}))
    assert result.returncode == 0, result.stderr + result.stdout
    listed = statuses(cluster, backup_id)
    for module_id in modules:
        status = listed[module_id]
        assert status["success"] is True and status["outcome"] == "ok"
        assert status["total_size"] > 2_000_000 and status["total_file_count"] > 200
        assert status["snapshots_count"] == 1


@pytest.mark.parametrize("backend", ["rest", "s3"])
def test_run_backup_against_real_remote_backends(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
    backend: str,
) -> None:
    wiki = add_module(cluster, minwiki_image)
    if backend == "rest":
        server = backends.rclone_serve("restic", tmp_path / "rest")
    else:
        server = backends.moto_s3(tmp_path)
    with server as service:
        if backend == "rest":
            repository = add_destination(
                cluster,
                "rest",
                f"rest:{service.url}/base",
                rest_user=backends.USER,
                rest_password=backends.PASSWORD,
            )
        else:
            repository = add_destination(
                cluster,
                "generic-s3",
                f"s3:{service.url}/bucket1/base",
                aws_access_key_id="AKIAEXAMPLE",
                aws_secret_access_key="s3-Secret-Key-Value",
                aws_default_region="us-east-1",
            )
        backup_id = add_backup(cluster, repository, [wiki])
        check_backed_up(cluster, backup_id, [wiki])
    if backend == "rest":
        module_uuid = redis_client.hget("cluster/module_uuid", wiki)
        repo = tmp_path / "rest" / "base" / "minwiki" / str(module_uuid)
        assert (repo / "config").exists() and backups.snapshots(
            repo, password=redis_client.hget(f"private/backup_repository/{repository}", "password")
        ), "data really went there"


def test_one_cluster_run_backs_up_modules_on_two_nodes(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    cluster.add_node(2)
    first, second = add_module(cluster, minwiki_image, 1), add_module(cluster, minwiki_image, 2)
    target = tmp_path / "shared-backups"
    target.mkdir()
    repository = add_destination(cluster, "local", f"local:{target}")
    backup_id = add_backup(cluster, repository, [first, second])
    check_backed_up(cluster, backup_id, [first, second])
    assert backups.status(redis_client, 1, backup_id, first)["outcome"] == "ok"
    assert backups.status(redis_client, 2, backup_id, second)["outcome"] == "ok"
    for node in (1, 2):
        prom = cluster.nodes[node].settings.state_dir(f"node/{node}") / "node_exporter"
        assert (prom / f"backup{backup_id}.prom").exists()


def test_cancel_task_stops_the_whole_fan_out(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> None:
    wiki = add_module(cluster, minwiki_image)
    node = cluster.nodes[1]
    env = {**os.environ, **node.settings.podman_env()}
    with open(cluster.volume_dir(1, wiki, "pages") / "big.bin", "wb") as handle:
        for _ in range(32):
            handle.write(os.urandom(16 << 20))
    target = tmp_path / "backups"
    target.mkdir()
    backup_id = add_backup(cluster, add_destination(cluster, "local", f"local:{target}"), [wiki])
    seen: list[int] = []
    watcher = tasks.start(
        redis_client, tasks.TaskRequest("cluster", "run-backup", {"id": backup_id})
    )
    result_box: list[tasks.TaskResult] = []
    waiter = threading.Thread(
        target=lambda: result_box.append(watcher.wait(lambda _s, p: seen.append(p), timeout=300))
    )
    waiter.start()
    repo_locks = target / "minwiki" / str(redis_client.hget("cluster/module_uuid", wiki)) / "locks"
    deadline = time.monotonic() + 120
    while not (repo_locks.is_dir() and list(repo_locks.iterdir())):
        assert time.monotonic() < deadline, "backup never reached restic"
        time.sleep(0.05)
    started = time.monotonic()
    tasks.cancel(redis_client, "cluster", watcher.task_id)
    waiter.join(timeout=120)
    result = result_box[0]
    assert result.exit_code != 0
    assert time.monotonic() - started < 60
    status = backups.status(redis_client, 1, backup_id, wiki)
    assert status["outcome"] == "failed" and "cancel" in status["reason"]
    state = node.settings.state_dir(f"module/{wiki}")
    assert (state / "cleanup-ran").exists(), "cleanup ran after the cancel"
    left = subprocess.run(
        ["podman", "ps", "--format", "{{.Names}}"], env=env, capture_output=True, text=True
    ).stdout
    assert "restic-" not in left
    assert not list(repo_locks.iterdir()), "restic removed its lock on SIGTERM"
