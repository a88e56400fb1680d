"""Snapshots written by someone with access to a destination: data, never instructions.

Each snapshot is made by the host's own restic (/usr/bin/restic) from a tree the test
builds, into a local repository registered as a destination. Every test checks that the
host (a canary file outside the cluster), Redis and the other modules are as they were,
and that a refusal says what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import file_lock, host_podman_env, podman_build
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman
HOST_RESTIC = "/usr/bin/restic"
CANARY = b"canary: the host's own file\n"
POISON = {
    "BASH_ENV": "evil.sh",
    "ENV": "evil.sh",
    "LD_PRELOAD": "/nonexistent/evil.so",
    "LD_LIBRARY_PATH": "/nonexistent/lib",
    "PATH": "/nonexistent/bin:/usr/bin:/bin",
    "PYTHONPATH": "/nonexistent/python",
    "PYTHONSTARTUP": "/nonexistent/startup.py",
    "REDIS_PASSWORD": "stolen-password",
    "REDIS_URL": "redis://attacker.invalid:6379/0",
    "AGENT_ROOT": "/nonexistent/root",
}
Tree = Callable[[Path], None]


@pytest.fixture(scope="session")
def wiki_image() -> str:
    """The sample module as this checkout has it, under a tag of these tests alone (the
    image name is still minwiki): localhost/minwiki may be rebuilt from another checkout
    while the tests run."""
    tag = "localhost/hostile-snapshots/minwiki:latest"
    source = Path(__file__).resolve().parents[2] / "examples" / "minwiki"
    podman_build(tag, source, "build-hostile-minwiki", containerfile=source / "Containerfile")
    return tag


@pytest.fixture(scope="session")
def other_image(wiki_image: str) -> str:
    """The sample module under another image name (a second tag of the same image)."""
    tag = "localhost/otherwiki:latest"
    with file_lock("tag-otherwiki"):
        subprocess.run(
            ["podman", "tag", wiki_image, tag],
            env=host_podman_env(),
            check=True,
            capture_output=True,
            timeout=60,
        )
    return tag


def craft_snapshot(repository: Path, build: Tree, scratch: Path) -> None:
    """One snapshot of the tree build() makes (state/…, volumes/…) in a local repository."""
    tree = scratch / f"tree-{uuid.uuid4().hex[:8]}"
    tree.mkdir()
    build(tree)
    env = dict(os.environ, RESTIC_PASSWORD=backups.PASSWORD)
    if not (repository / "config").exists():
        repository.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [HOST_RESTIC, "-r", str(repository), "init", "-q"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    parts = [name for name in ("state", "volumes") if (tree / name).exists()]
    subprocess.run(
        [HOST_RESTIC, "-r", str(repository), "--no-cache", "backup", "-q", *parts],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.rmtree(tree)


def environment_text(image: str, module_uuid: str, **extra: str) -> str:
    env = {"MODULE_ID": "minwiki9", "MODULE_UUID": module_uuid, "IMAGE_URL": image, **extra}
    return "".join(f"{key}={value}\n" for key, value in env.items())


def module_tree(image: str, module_uuid: str, **extra: str) -> Tree:
    """A plain module snapshot: its environment and one page."""

    def build(tree: Path) -> None:
        (tree / "state").mkdir()
        (tree / "state" / "environment").write_text(environment_text(image, module_uuid, **extra))
        (tree / "state" / "wiki.env").write_text("WIKI_TITLE=crafted\n")
        (tree / "volumes" / "pages").mkdir(parents=True)
        (tree / "volumes" / "pages" / "index.md").write_text("# crafted\n")
        (tree / "volumes" / "db").mkdir()  # every volume: a whole restore deletes the rest

    return build


def world(client: redis.Redis, *paths: Path) -> dict[str, Any]:
    """What a refused restore must leave as it is: Redis module records and some files."""
    keys = sorted(str(key) for key in client.scan_iter(match="module/*"))
    return {
        "module_node": client.hgetall("cluster/module_node"),
        "module_uuid": client.hgetall("cluster/module_uuid"),
        "restore_uuid": client.hgetall("private/nodes/restore_uuid"),
        "module_keys": {key: client.dump(key) for key in keys},
        "files": {str(path): path.read_bytes() if path.exists() else None for path in paths},
    }


class Setting:
    """A cluster with one installed wiki (the bystander) and a destination to poison."""

    def __init__(self, cluster: ClusterHarness, client: redis.Redis, image: str, base: Path):
        self.cluster, self.client, self.base = cluster, client, base
        self.wiki = cluster.api_ok("add-module", {"image": image, "node": 1})["module_id"]
        self.wiki_uuid = str(client.hget("cluster/module_uuid", self.wiki))
        self.dest = base / "dest"
        self.dest.mkdir()
        self.destination = backups.add_destination(client, "local", f"local:{self.dest}")
        self.canary = base / "canary"
        self.canary.write_bytes(CANARY)
        self.node = cluster.nodes[1]

    def state(self, module_id: str) -> Path:
        return self.node.settings.state_dir(f"module/{module_id}")

    def snapshot(self, build: Tree, image_name: str = "minwiki", module_uuid: str = "") -> str:
        """The repository path of a new crafted snapshot."""
        path = f"{image_name}/{module_uuid or uuid.uuid4()}"
        craft_snapshot(self.dest / path, build, self.base)
        return path

    def request(self, path: str, **extra: Any) -> dict[str, Any]:
        return {"repository": self.destination, "path": path, "snapshot": "", **extra}

    def run(self, action: str, data: Any) -> tuple[int, Any, str]:
        return self.cluster.api_json(action, data, timeout=300)

    def world(self) -> dict[str, Any]:
        wiki_state = self.state(self.wiki)
        return world(self.client, self.canary, wiki_state / "environment", wiki_state / "wiki.env")


@pytest.fixture
def setting(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    wiki_image: str,
    restic_image: str,
    tmp_path: Path,
) -> Setting:
    return Setting(cluster, redis_client, wiki_image, tmp_path)


def step_environment(setting: Setting, module_id: str) -> dict[str, str]:
    """The environment a bash step of module_id gets, as the step prints it."""
    setting.node.write_action(
        f"module/{module_id}", "print-env", {"10env": "#!/bin/bash\nenv -0\n"}
    )
    done = setting.cluster.api("run", f"module/{module_id}/print-env", "--raw")
    assert done.returncode == 0, done.stderr
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if "=" in item)


def bystander(setting: Setting) -> dict[str, Any]:
    """The installed wiki's part of the world: its records, keys and files, the canary."""
    now = setting.world()
    mine = f"module/{setting.wiki}/"
    return {
        "node": now["module_node"].get(setting.wiki),
        "uuid": now["module_uuid"].get(setting.wiki),
        "keys": {k: v for k, v in now["module_keys"].items() if k.startswith(mine)},
        "files": now["files"],
    }


def test_links_and_env_files_in_a_snapshot_never_reach_the_host_or_the_steps(
    setting: Setting, wiki_image: str
) -> None:
    secret = setting.base / "secret.dump"
    setting.client.set("test/secret", "stolen through a link")
    secret.write_bytes(setting.client.dump("test/secret") or b"")
    marker = setting.base / "bash-env-ran"
    module_uuid = str(uuid.uuid4())
    plain = module_tree(wiki_image, module_uuid)

    def build(tree: Path) -> None:
        plain(tree)
        state = tree / "state"
        # The agent writes restic_restore.json into the state dir after restoring it.
        (state / "restic_restore.json").symlink_to(setting.canary)
        poison = "".join(f"{key}={value}\n" for key, value in POISON.items())
        (state / "agent.env").write_text(poison)
        (state / "evil.sh").write_text(f"echo ran > {marker}\n")

    path = setting.snapshot(build, module_uuid=module_uuid)
    untouched = bystander(setting)
    restored = setting.cluster.api_ok("cluster/restore-module", setting.request(path, node=1))
    new = restored["module_id"]
    assert setting.canary.read_bytes() == CANARY, "the agent wrote through a restored link"
    result = setting.state(new) / "restic_restore.json"
    assert not result.is_symlink() and json.loads(result.read_text())
    assert bystander(setting) == untouched

    env = step_environment(setting, new)
    for key, value in POISON.items():
        assert env.get(key) != value, f"{key} from the snapshot reached a step"
    assert not marker.exists(), "BASH_ENV from the snapshot was sourced"
    assert setting.client.get("test/secret") == "stolen through a link"  # untouched source
    wiki_env = step_environment(setting, setting.wiki)
    assert wiki_env["MODULE_ID"] == setting.wiki

    # A dump file the agent reads (ui_name.dump) that is a link: refused, nothing kept.
    def linked_dump(tree: Path) -> None:
        module_tree(wiki_image, other_uuid)(tree)
        (tree / "state" / "ui_name.dump").symlink_to(secret)

    other_uuid = str(uuid.uuid4())
    path = setting.snapshot(linked_dump, module_uuid=other_uuid)
    before = setting.world()
    code, _, error = setting.run("cluster/restore-module", setting.request(path, node=1))
    assert code == 1 and "ui_name.dump" in error and "not a regular file" in error, error
    assert setting.world() == before
    assert all(
        setting.client.get(key) != "stolen through a link"
        for key in setting.client.scan_iter(match="module/*/ui_name")
    )


def test_image_and_uuid_are_those_of_the_repository_path(
    setting: Setting, wiki_image: str, other_image: str
) -> None:
    before = setting.world()
    # Stored under minwiki/<uuid>, but naming another image.
    module_uuid = str(uuid.uuid4())
    path = setting.snapshot(module_tree(other_image, module_uuid), module_uuid=module_uuid)
    for action, extra in (
        ("determine-restore-eligibility", {}),
        ("cluster/restore-module", {"node": 1}),
    ):
        code, _, error = setting.run(action, setting.request(path, **extra))
        assert code == 2, (action, error)
        assert "otherwiki" in error and "minwiki" in error and "refused" in error, error
    assert setting.world() == before

    # Claiming the installed wiki's uuid from another repository path, with and without
    # replace: the wiki stays.
    path = setting.snapshot(module_tree(wiki_image, setting.wiki_uuid))
    for replace in (True, False):
        request = setting.request(path, node=1, replace=replace)
        code, _, error = setting.run("cluster/restore-module", request)
        assert code == 2 and setting.wiki_uuid in error and "refused" in error, error
        assert setting.world() == before

    # No uuid at all is no match either.
    module_uuid = str(uuid.uuid4())
    no_uuid = f"MODULE_ID=minwiki9\nIMAGE_URL={wiki_image}\n"

    def without_uuid(tree: Path) -> None:
        module_tree(wiki_image, module_uuid)(tree)
        (tree / "state" / "environment").write_text(no_uuid)

    path = setting.snapshot(without_uuid, module_uuid=module_uuid)
    code, _, error = setting.run("cluster/restore-module", setting.request(path, node=1))
    assert code == 2 and "refused" in error, error
    assert setting.world() == before


def test_partial_restore_paths_are_literal_and_never_the_module_identity(
    setting: Setting, other_image: str
) -> None:
    hostile_uuid = str(uuid.uuid4())

    def build(tree: Path) -> None:
        module_tree(other_image, hostile_uuid)(tree)
        (tree / "state" / "agent.env").write_text("LD_PRELOAD=/nonexistent/evil.so\n")
        (tree / "state" / "apitoken.cache").write_text("token\n")
        (tree / "volumes" / "pages" / "[a].md").write_text("# brackets\n")
        (tree / "state" / "wiki_settings.dump").symlink_to(secret)

    secret = setting.base / "secret.dump"
    setting.client.hset("test/secret", "title", "stolen through a link")
    secret.write_bytes(setting.client.dump("test/secret") or b"")
    path = setting.snapshot(build, module_uuid=setting.wiki_uuid)
    before = setting.world()
    for bad in (
        "state/env*",
        "state/e?vironment",
        "state/[e]nvironment",
        "state/environment",
        "/state/environment/",
        "state/agent.env",
        "state/apitoken.cache",
        "volumes/../state/environment",
        "volumes/pages/../../state",
        "volumes/pages/[a].md",
        "volumes/pages/$HOME",
        "volumes/pages/a\\*",
        "volumes//pages",
        "volumes/./pages",
        "etc/passwd",
    ):
        request = setting.request(path, module_id=setting.wiki, paths=[bad])
        code, output, error = setting.run("cluster/restore-module", request)
        assert code == 10, (bad, output, error)
        assert output[0]["field"].startswith("paths"), output
        assert setting.world() == before, bad
        request = setting.request(path, target=str(setting.node.root / "restored" / "x"))
        code, output, _ = setting.run("node/1/restore-files", {**request, "paths": [bad]})
        assert code == 10 and output[0]["field"].startswith("paths"), (bad, output)
    assert not (setting.node.root / "restored" / "x").exists()

    # A literal path to a file the module's own restore step reads (the sample module's
    # 20loadkey): a link there is refused by the step, never followed.
    settings = setting.client.hgetall(f"module/{setting.wiki}/wiki_settings")
    request = setting.request(path, module_id=setting.wiki, paths=["state/wiki_settings.dump"])
    code, _, error = setting.run("cluster/restore-module", request)
    assert code == 1 and "wiki_settings.dump is a link" in error, error
    assert setting.client.hgetall(f"module/{setting.wiki}/wiki_settings") == settings
    assert setting.canary.read_bytes() == CANARY


def test_setuid_bits_survive_only_in_module_volumes(setting: Setting, wiki_image: str) -> None:
    module_uuid = str(uuid.uuid4())

    def build(tree: Path) -> None:
        module_tree(wiki_image, module_uuid)(tree)
        for place in (tree / "state", tree / "volumes" / "pages"):
            for name, mode in (("suid", 0o4755), ("sgid", 0o2755)):
                (place / name).write_text("#!/bin/sh\n")
                (place / name).chmod(mode)

    path = setting.snapshot(build, module_uuid=module_uuid)
    new = setting.cluster.api_ok("cluster/restore-module", setting.request(path, node=1))[
        "module_id"
    ]
    state, pages = setting.state(new), setting.cluster.volume_dir(1, new, "pages")
    setid = stat.S_ISUID | stat.S_ISGID
    assert stat.S_IMODE((state / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((state / "sgid").stat().st_mode) == 0o755
    assert stat.S_IMODE((pages / "suid").stat().st_mode) == 0o4755
    assert stat.S_IMODE((pages / "sgid").stat().st_mode) == 0o2755

    target = setting.node.root / "restored" / "picked"
    setting.cluster.api_ok(
        "node/1/restore-files",
        setting.request(path, target=str(target), paths=["state/suid", "volumes/pages"]),
    )
    for found in (target / "state" / "suid", *(target / "volumes" / "pages").iterdir()):
        assert not found.stat().st_mode & setid, found
    assert (target / "volumes" / "pages" / "index.md").read_text() == "# crafted\n"


def test_restore_files_targets_stay_under_the_allowed_roots(
    setting: Setting, wiki_image: str
) -> None:
    module_uuid = str(uuid.uuid4())
    path = setting.snapshot(module_tree(wiki_image, module_uuid), module_uuid=module_uuid)
    root = setting.node.root / "restored"
    root.mkdir(exist_ok=True)
    (root / "link").symlink_to(setting.base)
    before = setting.world()
    for target, error in (
        (setting.base / "outside", "target_not_allowed"),
        (root / "link" / "picked", "target_not_allowed"),
        (root / ".." / "cluster" / "picked", "target_not_allowed"),
        (root, "target_not_allowed"),
    ):
        request = setting.request(path, target=str(target), paths=["volumes/pages"])
        code, output, stderr = setting.run("node/1/restore-files", request)
        assert code == 2, (target, output, stderr)
        assert output == [
            {"field": "target", "parameter": "target", "value": str(target), "error": error}
        ]
    assert not (setting.base / "outside").exists() and not (setting.base / "picked").exists()
    assert setting.world() == before

    # A path the snapshot does not hold fails as restore-module does, leaving no target.
    target = root / "nothing" / "here"
    request = setting.request(path, target=str(target), paths=["volumes/pages/no-such-page"])
    code, _, stderr = setting.run("node/1/restore-files", request)
    assert code == 1 and "none of the paths is in the snapshot" in stderr, stderr
    assert not (root / "nothing").exists()
    assert setting.world() == before


def test_reads_of_a_destination_outside_the_local_roots_are_refused(
    cluster: ClusterHarness, redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Written straight into Redis, as a Redis client could: add-backup-repository refuses it.
    outside = tmp_path_factory.mktemp("outside-the-roots")
    destination = backups.add_destination(redis_client, "local", f"local:{outside}")
    path = f"minwiki/{uuid.uuid4()}"
    code, _, stderr = cluster.api_json(
        "read-backup-snapshots", {"repository": destination, "path": path}
    )
    assert code == 1 and "outside this node's local_roots" in stderr
    code, _, stderr = cluster.api_json(
        "cluster/restore-module",
        {"node": 1, "repository": destination, "path": path, "snapshot": ""},
    )
    assert code != 0 and "outside this node's local_roots" in stderr
    assert not redis_client.hgetall("cluster/module_node")
