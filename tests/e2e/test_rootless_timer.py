"""A rootless module backed up by its timer under a real systemd: the node runs podman of
its own, the module is added through add-module (its Unix user, its rootless store), and
backup<ID>.timer fires by itself and backs it up as that user."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from agent.adapters import systemd
from agent.core import redis_keys
from agent.core.settings import Settings
from tests.conftest import host_podman_env
from tests.e2e.conftest import SystemdNode, node_agent_service, node_api
from tests.support import backups
from tests.support.rootless import unique_ids

pytestmark = pytest.mark.podman
ROOTLESS_IMAGE = "localhost/minwiki:rootless"
EVENT = redis_keys.cluster_event(redis_keys.Event.BACKUP_SCHEDULE_CHANGED)


def _load_image(node: SystemdNode, image: str) -> None:
    """image, from this machine's store, into the node's root store (podman save/load)."""
    archive = node.base / f"image-{uuid.uuid4().hex[:8]}.tar"
    try:
        subprocess.run(
            ["podman", "save", "--quiet", "--output", str(archive), image],
            env=host_podman_env(),
            check=True,
            capture_output=True,
            timeout=300,
        )
        node.exec("podman", "load", "--quiet", "--input", str(archive))
    finally:
        archive.unlink(missing_ok=True)


@pytest.fixture
def rootless_node_agent(
    own_podman_node: SystemdNode,
    redis_client: redis.Redis,
    redis_url: str,
    minwiki_image: str,
    restic_image: str,
) -> Iterator[Settings]:
    """Node 1's daemon in the node with podman of its own, holding the restic image and
    the sample module's rootless image (examples/minwiki/build makes both tags)."""
    for image in (restic_image, ROOTLESS_IMAGE):
        _load_image(own_podman_node, image)
    with node_agent_service(own_podman_node, redis_client, redis_url) as settings:
        yield settings


def _in_node_user(node: SystemdNode, user: str, *argv: str) -> str:
    """argv as a module's user in the node, with its podman settings (as the node runs it)."""
    script = (
        'uid=$(id -u "$1") && gid=$(id -g "$1") && home=$(getent passwd "$1" | cut -d: -f6)'
        ' && shift && cd "$home" && exec env -i PATH=/usr/bin:/bin HOME="$home"'
        " XDG_RUNTIME_DIR=/run/user/$uid CONTAINERS_CONF=/etc/containers/containers.conf"
        ' setpriv --reuid=$uid --regid=$gid --init-groups -- "$@"'
    )
    return node.exec("sh", "-c", script, "sh", user, *argv).stdout


# The node boots, two images are loaded and a rootless store is filled: more than the
# default 300 s on a busy machine, and the waits below are bounded anyway.
@pytest.mark.timeout(900)
def test_timer_backs_up_a_rootless_module_as_its_user(
    own_podman_node: SystemdNode, rootless_node_agent: Settings, redis_client: redis.Redis
) -> None:
    node = own_podman_node
    unique_ids(redis_client)
    module_id = node_api(rootless_node_agent, "add-module", {"image": ROOTLESS_IMAGE, "node": 1})[
        "module_id"
    ]
    try:
        # add-module made the module's user in the node, with its own store and volumes.
        home = node.exec("getent", "passwd", module_id).stdout.split(":")[5]
        names = _in_node_user(node, module_id, "podman", "volume", "ls", "--format={{.Name}}")
        assert {"pages", "db", "cache"} <= set(names.split())

        target = node.base / f"repo-{uuid.uuid4().hex[:8]}"
        target.mkdir()
        destination = backups.add_destination(redis_client, "local", f"local:{target}")
        # Far enough ahead that the timer is installed before it is due on a busy machine.
        due = datetime.now(UTC) + timedelta(seconds=30)
        backups.add_backup(
            redis_client,
            7,
            destination,
            [module_id],
            name="b7",
            schedule=due.strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
        redis_client.publish(EVENT, json.dumps({"backup_ids": [7]}))
        node.wait_for("backup7.timer", lambda: "backup7.timer" in _timers(node), 60)
        assert datetime.now(UTC) < due, "the timer was installed only after it was due"
        node.wait_for("backup7.service to run", lambda: _started(node, 7), 120)
        node.wait_for(
            "backup7.service to finish",
            lambda: (
                node.show("backup7.service", "ActiveState")["ActiveState"] in ("inactive", "failed")
            ),
            600,
        )
        journal = node.exec("journalctl", "--no-pager", "-u", "backup7.service").stdout
        assert node.show("backup7.service", "Result")["Result"] == "success", journal

        status = backups.status(redis_client, 1, 7, module_id)
        assert status["outcome"] == "ok", status
        assert status["errors"] == 0
        found = [s for d in target.rglob("config") for s in backups.snapshots(d.parent)]
        assert [s["id"] for s in found] == [status["snapshot_id"]]
        repository = next(target.rglob("config")).parent
        # Owners as the module's containers see them: the module's own uid is root inside
        # its namespace, the page create-module chowned to 1000 is 1000.
        owners = _owners(repository, status["snapshot_id"])
        upload = [path for path in owners if path.endswith("/pages/user-upload.md")]
        assert len(upload) == 1, sorted(owners)[:20]
        assert owners[upload[0]] == (1000, 1000)
        index = [path for path in owners if path.endswith("/pages/index.md")]
        assert owners[index[0]] == (0, 0)
        # The repository is root's: the module's user got no right on it.
        assert {p.stat().st_uid for p in repository.rglob("*")} == {0}
        assert home.startswith("/home/")
    finally:
        node_api(rootless_node_agent, "remove-module", {"module_id": module_id})
    assert node.exec("getent", "passwd", module_id, check=False).returncode != 0


def _timers(node: SystemdNode) -> dict[str, systemd.TimerState]:
    listed = node.exec("systemctl", "list-timers", "--all", "--output=json", "backup*").stdout
    return systemd.parse_list_timers(listed)


def _started(node: SystemdNode, backup_id: int) -> bool:
    props = node.show(f"backup{backup_id}.service", "ExecMainStartTimestampMonotonic")
    return int(props.get("ExecMainStartTimestampMonotonic") or 0) > 0


def _owners(repository: Path, snapshot: str) -> dict[str, tuple[int, int]]:
    """uid, gid of every path of a snapshot, as restic recorded them."""
    done = backups.restic(repository, "ls", "--json", snapshot)
    owners = {}
    for line in done.stdout.splitlines():
        item = json.loads(line)
        if item.get("struct_type") == "node":
            owners[item["path"]] = (int(item.get("uid", 0)), int(item.get("gid", 0)))
    return owners
