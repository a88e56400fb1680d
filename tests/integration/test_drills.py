"""Restore drills: the sample module restored into a scratch instance, checked by its own
module-verify-restore hook, recorded, and removed; the source never touched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.runtime import tasks
from tests.conftest import REPO_ROOT, podman_build
from tests.faults.test_restore_faults import assert_settled
from tests.integration.test_notifications import Receiver, add_target
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.stalls import STALL, interrupt_held_action, wait_for

pytestmark = pytest.mark.podman
HOOK = REPO_ROOT / "examples" / "minwiki" / "imageroot" / "bin" / "module-verify-restore"
PAGE = "topic-0/section-0/sub-0/page-0.md"
# A verify hook a test can hold (as STALL holds a step): for cancelling a drill there.
# The node's credentials (agent.json): the module's own may not write test/*.
STALLING_HOOK = """#!/bin/bash
python3 -c 'import json, os, redis
url = json.load(open(os.environ["AGENT_ROOT"] + "/agent.json"))["redis_url"]
redis.Redis.from_url(url).set("test/stalled", "verify")'
sleep 120
"""


def copy_lines(context: Path, copies: dict[str, str]) -> str:
    """FROM the sample image, each file of copies (name → content) at its imageroot path."""
    lines = []
    for index, (path, text) in enumerate(copies.items()):
        (context / f"f{index}").write_text(text)
        (context / f"f{index}").chmod(0o755)
        lines.append(f"COPY f{index} /imageroot/{path}\n")
    return "".join(lines)


@pytest.fixture(scope="session")
def drill_images(minwiki_image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """minwiki with this tree's verify hook (the shared minwiki:latest tag may be another
    tree's build) and a restore step a test can hold; and a copy whose hook stalls."""
    variants = {
        "localhost/minwiki-drill:latest": {
            "bin/module-verify-restore": HOOK.read_text(),
            "actions/restore-module/05stall": STALL,
        },
        "localhost/minwiki-drillstall:latest": {"bin/module-verify-restore": STALLING_HOOK},
    }
    for tag, copies in variants.items():
        context = tmp_path_factory.mktemp("drill")
        (context / "Containerfile").write_text(
            f"FROM {minwiki_image}\n" + copy_lines(context, copies)
        )
        podman_build(tag, context, "build-minwiki-drill")
    return {
        "drill": "localhost/minwiki-drill:latest",
        "stall": "localhost/minwiki-drillstall:latest",
    }


def backed_up(
    cluster: ClusterHarness, client: redis.Redis, image: str, target: Path, **extra: Any
) -> str:
    """A wiki on node 1 in backup 1 (a local destination), backed up once: its module id."""
    wiki = cluster.api_ok("add-module", {"image": image, "node": 1})["module_id"]
    target.mkdir()
    destination = backups.add_destination(client, "local", f"local:{target}")
    backups.add_backup(client, 1, destination, [wiki], retention=5, **extra)
    return str(wiki)


def source_state(cluster: ClusterHarness, client: redis.Redis, wiki: str) -> dict[str, Any]:
    """Every byte, mode, owner and mtime of the module's volumes and state dir, and its keys."""
    roots = {name: cluster.volume_dir(1, wiki, name) for name in ("pages", "db", "cache")}
    roots["state"] = cluster.nodes[1].settings.state_dir(f"module/{wiki}")
    found: dict[str, Any] = {}
    for name, root in roots.items():
        for path in sorted(root.rglob("*")):
            info = path.lstat()
            entry: tuple[Any, ...] = (info.st_mode, info.st_uid, info.st_mtime_ns)
            if path.is_file() and not path.is_symlink():
                entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
            found[f"{name}/{path.relative_to(root)}"] = entry
    for key in sorted(client.scan_iter(match=f"module/{wiki}/*")):
        if not key.endswith("/backup_lock"):
            found[key] = client.dump(key)
    found["node"] = client.hget("cluster/module_node", wiki)
    found["uuid"] = client.hget("cluster/module_uuid", wiki)
    return found


def test_a_drill_of_the_sample_module_passes_and_leaves_only_its_record(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    drill_images: dict[str, str],
    restic_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    cluster.add_node(2)
    # The backup names node 2 for its drills: the scratch copy goes there.
    drill = {"schedule": "weekly", "node": 2}
    wiki = backed_up(cluster, redis_client, drill_images["drill"], tmp_path / "dest", drill=drill)
    cluster.api_ok("run-backup", {"id": 1})
    before = source_state(cluster, redis_client, wiki)

    output = cluster.api_ok("run-drill", {"id": 1})

    record = output["modules"][wiki]
    with subtests.test("the verdict, the RTO and the size"):
        assert output["outcome"] == "ok" and output["node"] == 2
        assert record["outcome"] == "ok", record
        assert record["hook_exit_code"] == 0
        assert "pages: 200 indexed" in record["hook_output"]
        assert record["node"] == 2 and record["scratch_module_id"] not in ("", wiki)
        assert 0 < record["restore_seconds"] < 300 and record["verify_seconds"] > 0
        assert record["restored_bytes"] > 2_000_000 and record["restored_files"] > 200
        assert record["end"] >= record["start"] > 0
    with subtests.test("the scratch instance is gone, the source untouched"):
        assert_settled(cluster, redis_client, {wiki})
        assert source_state(cluster, redis_client, wiki) == before
        assert not redis_client.hkeys("private/nodes/restore_uuid")
    with subtests.test("list-backups shows the last drill"):
        [listed] = cluster.api_ok("list-backups")["backups"][0]["instances"]
        assert listed["drill"]["outcome"] == "ok"
        assert listed["drill"]["summary"].startswith("last verified by a drill 0 minutes ago in ")
        assert not cluster.api_ok("list-backups")["unconfigured_instances"]
    with subtests.test("the run history has the drill"):
        runs = cluster.api_ok("list-backup-runs", {"module_id": wiki})
        assert [r["kind"] for r in runs] == ["drill", "backup"]
        assert runs[0]["outcome"] == "ok" and runs[0]["restore_seconds"] > 0
        assert any("module-verify-restore: pages: 200 indexed" in line for line in runs[0]["log"])
    with subtests.test("verify-drill runs no hook of a module in service"):
        code, rows, _ = cluster.api_json("node/1/verify-drill", {"module_id": wiki, "backup_id": 1})
        assert code == 2 and rows[0]["error"] == "not_a_drill_instance", rows
    with subtests.test("a drill on no node, or of no backup, is refused"):
        code, rows, _ = cluster.api_json("run-drill", {"id": 1, "node": 9})
        assert code == 2 and rows[0]["error"] == "node_not_found", rows
        code, rows, _ = cluster.api_json("run-drill", {"id": 7})
        assert code == 2 and rows[0]["error"] == "backup_not_found", rows
        code, rows, _ = cluster.api_json("run-drill", {"id": 1, "modules": ["other1"]})
        assert code == 2 and rows[0]["error"] == "module_not_in_backup", rows
    with subtests.test("stored once, as the module's last drill"):
        stored = json.loads(redis_client.hget(redis_keys.backup_drill(1), wiki))
        assert (
            stored["outcome"] == "ok" and stored["scratch_module_id"] == record["scratch_module_id"]
        )


def test_a_drill_whose_verify_hook_fails_is_recorded_failed_and_notified(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    drill_images: dict[str, str],
    restic_image: str,
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    try:
        wiki = backed_up(cluster, redis_client, drill_images["drill"], tmp_path / "dest")
        add_target(cluster, "ops", receiver.url("drills"), ["failure"])
        # Behind the module's back: a page its database indexes is overwritten, and the
        # backup takes the damage as it is. (Not deleted: a whole restore adds to what the
        # scratch instance's create-module made, as NS8's does, so a deleted page would
        # come back as create-module wrote it.)
        (cluster.volume_dir(1, wiki, "pages") / PAGE).write_text("damaged\n")
        cluster.api_ok("run-backup", {"id": 1})
        before = source_state(cluster, redis_client, wiki)

        code, output, stderr = cluster.api_json("run-drill", {"id": 1}, timeout=300)

        assert code == 1, (output, stderr)
        record = output["modules"][wiki]
        assert record["outcome"] == "failed" and record["hook_exit_code"] == 1
        assert record["reason"].startswith("module-verify-restore failed (exit 1): ")
        assert "1 page(s) differ from the index" in record["reason"] and PAGE in record["reason"]
        assert record["restored_bytes"] > 0 and record["scratch_module_id"]
        assert f"{wiki}: module-verify-restore failed" in stderr
        assert_settled(cluster, redis_client, {wiki})
        assert source_state(cluster, redis_client, wiki) == before
        [listed] = cluster.api_ok("list-backups")["backups"][0]["instances"]
        assert listed["drill"]["summary"].startswith("last drill 0 minutes ago failed: ")
        message = receiver.next()
        assert message["type"] == "failure", message
        assert f"Restore drill of {wiki}" in message["title"]
        assert "1 page(s) differ from the index" in message["message"]
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("phase", "how"), [("restore", "ctrl-c"), ("restore", "cancel-task"), ("verify", "cancel-task")]
)
def test_a_cancelled_drill_leaves_nothing_behind(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    drill_images: dict[str, str],
    restic_image: str,
    tmp_path: Path,
    phase: str,
    how: str,
) -> None:
    image = drill_images["drill" if phase == "restore" else "stall"]
    wiki = backed_up(cluster, redis_client, image, tmp_path / "dest")
    cluster.api_ok("run-backup", {"id": 1})
    before = source_state(cluster, redis_client, wiki)
    if phase == "restore":
        redis_client.set("test/stall", "restore-module/05stall")
    stopped = interrupt_held_action(
        redis_client, cluster.redis_url, cluster.nodes[1].env(), "run-drill", {"id": 1}, how
    )
    assert stopped.returncode == 1, (stopped.out, stopped.err)
    assert "cancelled" in stopped.err
    redis_client.delete("test/stall")
    assert_settled(cluster, redis_client, {wiki})
    assert source_state(cluster, redis_client, wiki) == before
    assert not redis_client.exists(redis_keys.backup_drill(1)), "a cancelled drill is no verdict"
    assert os.listdir(cluster.nodes[1].root / "modules") == [wiki]


def test_a_drill_whose_daemon_is_killed_leaves_no_scratch_instance(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    drill_images: dict[str, str],
    restic_image: str,
    tmp_path: Path,
) -> None:
    wiki = backed_up(cluster, redis_client, drill_images["drill"], tmp_path / "dest")
    cluster.api_ok("run-backup", {"id": 1})
    before = source_state(cluster, redis_client, wiki)
    redis_client.set("test/stall", "restore-module/05stall")
    watcher = tasks.start(
        connect(cluster.redis_url), tasks.TaskRequest("cluster", "run-drill", {"id": 1})
    )
    wait_for("the drill held in its restore", lambda: redis_client.get("test/stalled"), 120)

    cluster.nodes[1].stop(signal.SIGKILL)
    redis_client.delete("test/stall")
    cluster.nodes[1].start()

    result = watcher.wait(timeout=180)
    assert result.exit_code == 1 and "daemon stopped while it was running" in result.error
    assert_settled(cluster, redis_client, {wiki})
    assert source_state(cluster, redis_client, wiki) == before
    assert not redis_client.exists(redis_keys.backup_drill(1))
