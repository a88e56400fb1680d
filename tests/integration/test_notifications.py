"""Notification targets: a run's one message reaches a local webhook; sending never fails it."""

from __future__ import annotations

import dataclasses
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.core import redis_keys
from agent.core.settings import write_settings
from tests.conftest import free_port
from tests.support import backups
from tests.support.cluster import ClusterHarness, NodeHarness

pytestmark = pytest.mark.podman


class Receiver:
    """A webhook on 127.0.0.1 that keeps every JSON body apprise's json:// posts to it."""

    def __init__(self) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        messages = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                messages.put({"path": self.path, **(json.loads(body) if body else {})})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def next(self, timeout: float = 60.0) -> dict[str, Any]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


def add_target(cluster: ClusterHarness, name: str, url: str, events: list[str]) -> Any:
    return cluster.api_json(
        "add-notification-target", {"name": name, "url": url, "events": events, "backups": []}
    )


def run_backup(cluster: ClusterHarness, backup_id: int = 1) -> subprocess.CompletedProcess[str]:
    return cluster.api("run", "run-backup", "--data", json.dumps({"id": backup_id}))


def test_a_failed_run_sends_one_message_listing_each_module_and_the_reason(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    missing = tmp_path / "not-mounted"
    destination = backups.add_destination(redis_client, "local", f"local:{missing}")
    backups.add_backup(redis_client, 1, destination, [wiki])
    code, _, stderr = add_target(cluster, "ops", receiver.url("hook"), ["failure"])
    assert code == 0, stderr

    started = time.monotonic()
    assert run_backup(cluster).returncode == 1
    message = receiver.next()
    assert time.monotonic() - started < 60
    assert message["path"] == "/hook" and message["type"] == "failure"
    assert "Backup 1" in message["title"] and "failed" in message["title"]
    assert f"{wiki} (node 1): failed" in message["message"]
    assert "missing" in message["message"] or "not" in message["message"]
    with pytest.raises(queue.Empty):
        receiver.next(timeout=3)  # one message per run, not one per node or module

    listed = cluster.api_ok("list-notification-targets")
    assert listed[0]["last_ok"] is True and listed[0]["last_event"] == "failure"


def test_a_successful_run_reaches_report_targets_only(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    backups.add_local_backup(redis_client, tmp_path, [wiki])
    assert add_target(cluster, "failures", receiver.url("failures"), ["failure"])[0] == 0
    assert add_target(cluster, "reports", receiver.url("reports"), ["report"])[0] == 0

    assert run_backup(cluster).returncode == 0
    message = receiver.next()
    assert message["path"] == "/reports" and message["type"] == "success"
    assert f"{wiki} (node 1): ok" in message["message"]
    assert "1 snapshot(s)" in message["message"]
    assert "free" in message["message"]  # a local disk reports its free space
    with pytest.raises(queue.Empty):
        receiver.next(timeout=3)


def test_a_timer_run_notifies_and_an_unreachable_target_never_fails_the_backup(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    backups.add_local_backup(redis_client, tmp_path, [wiki])
    dead = f"json://127.0.0.1:{free_port()}/nobody"
    assert add_target(cluster, "dead", dead, ["success"])[0] == 0
    assert add_target(cluster, "live", receiver.url("live"), ["success"])[0] == 0

    node = cluster.nodes[1]
    timer = subprocess.run(
        ["runagent", "-m", "node", "run-backup", "--backup=1"],
        env=node.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert timer.returncode == 0, timer.stderr
    assert receiver.next()["path"] == "/live"
    deadline = time.monotonic() + 60
    while True:
        dead_target = next(
            t for t in cluster.api_ok("list-notification-targets") if t["name"] == "dead"
        )
        if dead_target["last_sent"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert dead_target["last_ok"] is False and dead_target["last_error"]
    assert "nobody" not in dead_target["last_error"]
    assert backups.status(redis_client, 1, 1, wiki)["outcome"] == "ok"


def test_targets_are_validated_masked_and_tested(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    receiver: Receiver,
    subtests: pytest.Subtests,
) -> None:
    """Each action's checks report on their own (subtests)."""
    secret_url = receiver.url("s3cr3t-token-path")
    code, output, stderr = add_target(cluster, "ops", secret_url, ["failure", "overdue"])
    assert code == 0, stderr
    with subtests.test("the url is masked everywhere public"):
        assert output["url"] == "json://…"
        assert redis_client.hget(redis_keys.notification_target_private("ops"), "url") == secret_url
        assert "s3cr3t" not in json.dumps(
            redis_client.hgetall(redis_keys.notification_target("ops"))
        )
        contexts = [
            redis_client.get(k) or ""
            for k in redis_client.scan_iter(match="task/cluster/*/context", count=1000)
        ]
        assert contexts and not any("s3cr3t" in c for c in contexts)

    with subtests.test("bad targets are refused"):
        assert add_target(cluster, "ops", secret_url, ["failure"])[0] == 2  # name taken
        assert add_target(cluster, "bad", "nosuchservice://x", ["failure"])[0] == 10
        assert add_target(cluster, "bad", secret_url, ["sometimes"])[0] == 10
        assert not redis_client.exists(redis_keys.notification_target("bad"))

    with subtests.test("test-notification-target sends"):
        code, output, _ = cluster.api_json("test-notification-target", {"name": "ops"})
        assert code == 0 and output == {"sent": True}
        assert receiver.next()["path"] == "/s3cr3t-token-path"

    altered = {"name": "ops", "url": "", "events": ["report"], "backups": [1]}
    with subtests.test("alter keeps the url when none is given"):
        code, output, _ = cluster.api_json("alter-notification-target", altered)
        assert code == 0 and output["events"] == ["report"] and output["backups"] == [1]
        assert redis_client.hget(redis_keys.notification_target_private("ops"), "url") == secret_url

    assert cluster.api_json("remove-notification-target", {"name": "ops"})[0] == 0
    assert cluster.api_json("remove-notification-target", {"name": "ops"})[0] == 2
    assert not redis_client.exists(redis_keys.notification_target_private("ops"))


def test_a_ping_url_gets_start_then_success_or_fail(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    target = tmp_path / "backups"
    target.mkdir()
    destination = backups.add_destination(redis_client, "local", f"local:{target}")
    ping_url = f"http://127.0.0.1:{receiver.port}/ping/0f4c2a9e-check"
    definition = {
        "name": "pinged",
        "repository": destination,
        "schedule": "daily",
        "retention": 3,
        "instances": [wiki],
        "enabled": True,
        "ping_url": ping_url,
    }
    code, backup_id, stderr = cluster.api_json("add-backup", definition)
    assert code == 0, stderr
    listed = cluster.api_ok("list-backups")["backups"][0]
    assert listed["ping_url"] == f"http://127.0.0.1:{receiver.port}/…"

    assert run_backup(cluster, backup_id).returncode == 0
    paths = {receiver.next()["path"], receiver.next()["path"]}
    assert paths == {"/ping/0f4c2a9e-check/start", "/ping/0f4c2a9e-check"}

    state = cluster.nodes[1].settings.state_dir(f"module/{wiki}")
    (state / "FAIL_DUMP").write_text("asked by the test\n")  # the sample's dump hook fails
    assert run_backup(cluster, backup_id).returncode == 1
    paths = {receiver.next()["path"], receiver.next()["path"]}
    assert paths == {"/ping/0f4c2a9e-check/start", "/ping/0f4c2a9e-check/fail"}

    altered = {k: v for k, v in definition.items() if k != "repository"}
    cluster.api_ok("alter-backup", {**altered, "id": backup_id, "ping_url": ""})
    assert not redis_client.exists(redis_keys.backup_private(backup_id))


def test_missed_runs_turn_a_module_overdue_once_and_a_good_run_brings_it_back(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    node = cluster.nodes[1]
    node.stop()
    node.settings = dataclasses.replace(
        node.settings, overdue_check_seconds=1, overdue_grace_seconds=2, timer_random_delay=0
    )
    write_settings(node.settings)
    node.start()
    # Due every 20 s; no timer runs here (no systemd), so every run is missed.
    backups.add_local_backup(redis_client, tmp_path, [wiki], schedule="*-*-* *:*:00/20")
    assert add_target(cluster, "late", receiver.url("late"), ["overdue"])[0] == 0

    message = receiver.next(timeout=90)
    assert message["title"] == f"Backup 1 'Backup 1': {wiki} is overdue"
    assert "no good snapshot since never" in message["message"]
    instance = cluster.api_ok("list-backups")["backups"][0]["instances"][0]
    assert instance["overdue"] is True and instance["last_snapshot"] is None
    assert instance["next_run"] > time.time() - 5
    prom = overdue_prometheus(node)
    assert f'node_backup_overdue{{id="1",name="Backup 1",module="{wiki}"}} 1' in prom
    with pytest.raises(queue.Empty):
        receiver.next(timeout=4)  # announced once, not at every look

    assert run_backup(cluster).returncode == 0
    message = receiver.next(timeout=60)
    assert message["title"] == f"Backup 1 'Backup 1': {wiki} is back on schedule"
    instance = cluster.api_ok("list-backups")["backups"][0]["instances"][0]
    assert instance["overdue"] is False and instance["last_snapshot"] > time.time() - 120


def overdue_prometheus(node: NodeHarness) -> str:
    path = node.settings.state_dir("node/1") / "node_exporter" / "backup_overdue.prom"
    return path.read_text()
