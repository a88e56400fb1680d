"""What NS8 modules' own restore steps do works here: a module written to NS8's
conventions (tests/fixtures/nsrestore) is backed up on node 1 and restored on node 2, and
its restore-module steps copy variables with agent.set_env, run its own configure-module
with agent.tasks.run, write Redis from a shell step with redis-exec, and ask the node's
Traefik for a route through resolve_agent_id("traefik@node"). Traefik itself is a
stand-in (tests/fixtures/traefik-standin) that records the routes it is given."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.operations.verify_restore import verify
from tests.conftest import REPO_ROOT, podman_build
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman
FIXTURES = REPO_ROOT / "tests" / "fixtures"
MODULE_TAG = "localhost/nsrestore:latest"
TRAEFIK_TAG = "localhost/ns8-standin/traefik:latest"  # named `traefik`, as NS8's
CONFIG = {"host": "app.example.org", "greeting": "ciao, mondo"}


def build(fixture: str, tag: str) -> str:
    podman_build(tag, FIXTURES / fixture, f"build-{fixture}")
    return tag


@pytest.fixture(scope="session")
def nsrestore_image() -> str:
    return build("nsrestore", MODULE_TAG)


@pytest.fixture(scope="session")
def traefik_standin_image() -> str:
    return build("traefik-standin", TRAEFIK_TAG)


def routes(client: redis.Redis, traefik: str) -> dict[str, Any]:
    stored = client.hgetall(f"module/{traefik}/standin_routes")
    return {instance: json.loads(value) for instance, value in stored.items()}


def test_ns8_restore_steps_set_env_run_their_own_action_use_redis_exec_and_traefik(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    nsrestore_image: str,
    traefik_standin_image: str,
    restic_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    cluster.add_node(2)
    traefik = {
        node: cluster.api_ok("add-module", {"image": traefik_standin_image, "node": node})[
            "module_id"
        ]
        for node in (1, 2)
    }
    source = cluster.api_ok("add-module", {"image": nsrestore_image, "node": 1})["module_id"]
    cluster.api_ok(f"module/{source}/configure-module", CONFIG)
    source_env = redis_client.hgetall(redis_keys.module_environment(source))
    with subtests.test("configure-module asked node 1's Traefik for its route"):
        assert routes(redis_client, traefik[1]) == {
            source: {
                "instance": source,
                "url": f"http://127.0.0.1:{source_env['TCP_PORT']}",
                "host": CONFIG["host"],
                "lets_encrypt": False,
                "http2https": True,
            }
        }
    podman_env = {**os.environ, **cluster.nodes[1].settings.podman_env()}
    subprocess.run(
        ["podman", "volume", "create", f"{source}-app-data"],
        env=podman_env,
        check=True,
        capture_output=True,
    )
    data = cluster.volume_dir(1, source, "app-data")
    (data / "uploads").mkdir()
    (data / "uploads" / "report.bin").write_bytes(os.urandom(100_000))
    (data / "settings.ini").write_text("[app]\nname = test\n")
    for path in [data, *data.rglob("*")]:
        os.lchown(path, 1000, 1000)

    target = tmp_path / "dest"
    target.mkdir()
    repository = backups.add_destination(redis_client, "local", f"local:{target}")
    backups.add_backup(redis_client, 1, repository, [source])
    cluster.api_ok("run-backup", {"id": 1})
    module_uuid = redis_client.hget(redis_keys.MODULE_UUID, source)
    restored = cluster.api_ok(
        "cluster/restore-module",
        {"node": 2, "repository": repository, "path": f"nsrestore/{module_uuid}", "snapshot": ""},
    )
    new = restored["module_id"]
    new_state = cluster.nodes[2].settings.state_dir(f"module/{new}")
    new_env = redis_client.hgetall(redis_keys.module_environment(new))

    with subtests.test("the copy is the source, byte for byte, owners included"):
        report = verify(
            connect(cluster.redis_url),
            {n: node.settings for n, node in cluster.nodes.items()},
            source,
            new,
        )
        # By design: 30reconfigure rewrites config.json (same bytes, new mtime) and 40mark
        # adds a key the source never had. Nothing else may differ.
        by_design = ("state/config.json: mtime_ns ", "redis module/*/restore_marks: ")
        assert [d for d in report["differences"] if not d.startswith(by_design)] == []
        source_state = cluster.nodes[1].settings.state_dir(f"module/{source}")
        config = (new_state / "config.json").read_bytes()
        assert config == (source_state / "config.json").read_bytes()
        assert (
            cluster.volume_dir(2, new, "app-data") / "uploads" / "report.bin"
        ).stat().st_uid == 1000
    with subtests.test("06copyenv: agent.set_env in a restore step"):
        assert new_env["GREETING"] == CONFIG["greeting"]
        assert new_env["TRAEFIK_HOST"] == CONFIG["host"]
    with subtests.test("30reconfigure: agent.tasks.run of its own configure-module"):
        assert json.loads((new_state / "config.json").read_text()) == CONFIG
        # Only that configure-module (its 30traefik) asks node 2's Traefik for a route.
        assert routes(redis_client, traefik[2]) == {
            new: {
                "instance": new,
                "url": f"http://127.0.0.1:{new_env['TCP_PORT']}",
                "host": CONFIG["host"],
                "lets_encrypt": False,
                "http2https": True,
            }
        }
        assert set(routes(redis_client, traefik[1])) == {source}
    with subtests.test("40mark: a shell step's redis-exec"):
        assert redis_client.hgetall(f"module/{new}/restore_marks") == {"shell": CONFIG["greeting"]}
    with subtests.test("the file the new instance's create-module wrote is still there"):
        assert (new_state / "nginx.conf").read_text() == (
            f"server {{ listen 127.0.0.1:{new_env['TCP_PORT']}; }}\n"
        )

    for module_id in (new, source, *traefik.values()):
        cluster.api_ok("remove-module", {"module_id": module_id})
