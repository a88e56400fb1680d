"""Module instances from a real OCI image: add, answer, remove without a trace."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from agent.core import redis_keys
from agent.operations import cluster_setup
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


def _volumes(cluster: ClusterHarness) -> list[str]:
    env = cluster.nodes[1].env()
    env.update(cluster.nodes[1].settings.podman_env())
    done = subprocess.run(
        ["podman", "volume", "ls", "--format", "{{.Name}}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def test_add_module_then_remove_module_leaves_nothing_behind(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    minwiki_image: str,
    subtests: pytest.Subtests,
) -> None:
    """Each stage's checks report on their own (subtests)."""
    before = set(redis_client.keys("*"))
    code, output, stderr = cluster.api_json("add-module", {"image": minwiki_image, "node": 1})
    assert code == 0, stderr
    module_id = output["module_id"]
    with subtests.test("add-module's output, node and environment"):
        assert module_id == "minwiki1"
        assert output["image_name"] == "minwiki" and output["image_url"] == minwiki_image
        assert redis_client.hget(redis_keys.MODULE_NODE, module_id) == "1"
        environment = redis_client.hgetall(redis_keys.module_environment(module_id))
        assert environment["MODULE_UUID"] == output["module_uuid"]
        assert environment["IMAGE_URL"] == minwiki_image

    home = cluster.nodes[1].settings.agent_home(f"module/{module_id}")
    with subtests.test("its home, state and volumes"):
        assert (home / "bin" / "module-dump-state").exists()  # from the image
        assert (home / "README.md").exists()  # from the base imageroot
        assert "MODULE_ID=minwiki1" in (home / "state" / "environment").read_text()
        assert {"minwiki1-pages", "minwiki1-db", "minwiki1-cache"} <= set(_volumes(cluster))
        # The volumes' locks are files of the node's own store, not entries of the table in
        # shared memory that every podman on the machine draws from.
        store = cluster_setup.private_store(cluster.nodes[1].settings)
        assert store is not None and len(list((store.tmp_dir / "locks").iterdir())) >= 3

    with subtests.test("its actions answer"):
        listed = cluster.api("run", f"module/{module_id}/list-actions")
        assert listed.returncode == 0
        assert {"create-module", "get-status", "list-actions"} <= set(json.loads(listed.stdout))
        code, status, _ = cluster.api_json(f"module/{module_id}/get-status")
        assert code == 0 and status["pages"] > 0

    code, _, stderr = cluster.api_json("remove-module", {"module_id": module_id})
    assert code == 0, stderr
    with subtests.test("remove-module leaves nothing but the id sequence"):
        assert not home.exists()
        assert not [v for v in _volumes(cluster) if v.startswith(f"{module_id}-")]
        left = {k for k in set(redis_client.keys("*")) - before if not k.startswith("task/")}
        left.discard(redis_keys.node_gateway(1))  # the node's gateway, started on first use
        assert left == {redis_keys.module_sequence("minwiki")}, "only the id sequence stays"
        assert not [
            k
            for k in redis_client.keys("*")
            if module_id in k
            and "module_sequence" not in k
            and not k.startswith(("task/cluster/", "task/node/"))
        ]
        gone = cluster.api("run", f"module/{module_id}/list-actions")
        assert gone.returncode != 0 and "no module" in gone.stderr

    with subtests.test("ids are never reused"):
        code, output, _ = cluster.api_json("add-module", {"image": minwiki_image, "node": 1})
        assert code == 0 and output["module_id"] == "minwiki2", "ids are never reused"


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(path.relative_to(root)): (path.lstat().st_mode, path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def test_perf_contract_a_second_instance_copies_the_imageroot_kept_for_the_image_id(
    audited: tuple[ClusterHarness, Path], minwiki_image: str
) -> None:
    """An image id names fixed content: its /imageroot is extracted once (by id, so a tag
    moved meanwhile cannot slip in) and later installs copy it, without a container."""
    cluster, argv_log = audited
    settings = cluster.nodes[1].settings

    def podman_calls() -> list[list[str]]:
        calls = [json.loads(line) for line in argv_log.read_text().splitlines()]
        argv_log.unlink()
        return [argv for argv in calls if argv[0] == "podman" and argv[1] in ("create", "cp")]

    first = cluster.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"]
    [image_id] = [entry.name for entry in settings.imageroot_cache.iterdir()]
    created = [argv for argv in podman_calls() if argv[1] == "create"]
    assert [argv[-2] for argv in created] == [image_id]
    second = cluster.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"]
    assert podman_calls() == [], "no container for an image whose imageroot is kept"
    homes = [settings.agent_home(f"module/{module_id}") for module_id in (first, second)]
    for part in ("bin", "actions", "etc"):
        assert _tree(homes[0] / part) == _tree(homes[1] / part)
    assert (homes[1] / "bin" / "module-dump-state").stat().st_mode & 0o111


def test_add_module_of_a_missing_image_changes_nothing(
    cluster: ClusterHarness, redis_client: redis.Redis, tmp_path: Path
) -> None:
    code, _, stderr = cluster.api_json(
        "add-module", {"image": "localhost/nosuchimage:1", "node": 1}
    )
    assert code != 0
    assert "nosuchimage" in stderr
    assert redis_client.hgetall(redis_keys.MODULE_NODE) == {}
    assert not list((cluster.nodes[1].root / "modules").iterdir())


def test_remove_module_of_an_unknown_module_is_a_validation_error(cluster: ClusterHarness) -> None:
    code, output, _ = cluster.api_json("remove-module", {"module_id": "ghost1"})
    assert code == 2
    assert output[0]["error"] == "module_not_found"
