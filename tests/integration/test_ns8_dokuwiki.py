"""A real NS8 module runs unchanged: an image built only from NethServer/ns8-dokuwiki's
imageroot files (tests/fixtures/ns8-dokuwiki: its state-include.conf, its create-module
steps and its restore-module step 06copyenv, which calls agent.set_env) is added on node 1,
backed up with run-backup and restored on node 2 with cluster/restore-module.

What dokuwiki's other actions would do here, and cannot (its configure-module needs
agent.bind_user_domains and the cluster's LDAP domains, Traefik, and `systemctl --user`
units running docker.io/dokuwiki/dokuwiki), the test does in their place, named as such:
it writes the variables and secrets.env that configure-module leaves, through the same
agent.set_env / agent.write_envfile calls, and fills the volume the dokuwiki container
would use. Rootless, as dokuwiki is: the module runs as its own Unix user with its own podman
store, its volume under its bare name there, owners compared inside its user namespace.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.adapters import module_users
from agent.adapters.redis_store import connect
from agent.core import redis_keys
from agent.operations.verify_restore import verify
from tests.conftest import REPO_ROOT, podman_build
from tests.support import backups
from tests.support.cluster import ClusterHarness
from tests.support.rootless import as_user, inside_owner, unique_ids, user_exists

pytestmark = pytest.mark.podman
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "ns8-dokuwiki"
TAG = "localhost/ns8-fixtures/dokuwiki:latest"  # NS8 names the module after the last part
VOLUME = "dokuwiki-data"  # the one volume of its state-include.conf

# What dokuwiki's configure-module leaves (20configure and 30traefik, with the input
# {"wiki_name": "Team wiki", "username": "admin", "host": "wiki.example.org", …}).
CONFIGURED = {
    "DOKUWIKI_WIKI_NAME": "Team wiki",
    "DOKUWIKI_USERNAME": "admin",
    "DOKUWIKI_EMAIL": "admin@example.org",
    "DOKUWIKI_FULL_NAME": "Wiki Administrator",
    "PHP_MEMORYLIMIT": "1024M",
    "PHP_UPLOADLIMIT": "64M",
    "PHP_TIMEZONE": "Europe/Rome",
    "LDAP_DOMAIN": "",
    "TRAEFIK_HOST": "wiki.example.org",
    "TRAEFIK_HTTP2HTTPS": "True",
    "TRAEFIK_LETS_ENCRYPT": "False",
}
CONFIGURE_SCRIPT = """
import json, sys
import agent
for name, value in json.loads(sys.argv[1]).items():
    agent.set_env(name, value)
agent.write_envfile("secrets.env", {"DOKUWIKI_PASSWORD": "pa=ss word"})
"""


@pytest.fixture(scope="session")
def dokuwiki_image() -> str:
    podman_build(TAG, FIXTURE, "build-ns8-dokuwiki", containerfile=FIXTURE / "Containerfile")
    return TAG


def runagent(cluster: ClusterHarness, node: int, module_id: str, *argv: str) -> str:
    """A command in the module's environment, as NS8's runagent gives it."""
    done = subprocess.run(
        ["runagent", "-m", module_id, *argv],
        env=cluster.nodes[node].env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def fill_volume(cluster: ClusterHarness, module_id: str) -> Path:
    """The data the dokuwiki container keeps in its volume (`podman run -v dokuwiki-data:…`
    in its user unit creates the volume in the module user's store; that unit cannot run
    here, so the test creates it as the user)."""
    as_user(module_id, "podman", "volume", "create", VOLUME)
    data = cluster.volume_dir(1, module_id, VOLUME)
    pages = data / "data" / "pages" / "wiki"
    pages.mkdir(parents=True)
    (pages / "start.txt").write_text("====== Welcome ======\nÈ la pagina iniziale.\n")
    (pages / "syntax.txt").write_bytes(os.urandom(200_000))
    media = data / "data" / "media"
    media.mkdir(parents=True)
    (media / "logo.png").write_bytes(os.urandom(300_000))
    conf = data / "conf"
    conf.mkdir()
    (conf / "users.auth.php").write_text("admin:$2y$10$hash:Wiki Administrator:a@b:admin\n")
    os.chmod(conf / "users.auth.php", 0o640)
    (conf / "local.php").symlink_to("local.php.dist")
    (data / "data" / "cache").mkdir()  # empty, as a fresh dokuwiki leaves it
    # The container's web user (1001 inside the namespace) owns its data: hand the tree to
    # the module's user (0 inside), whose namespace then gives it to 1001.
    entry = pwd.getpwnam(module_id)
    for path in [data, *data.rglob("*")]:
        os.lchown(path, entry.pw_uid, entry.pw_gid)
    as_user(module_id, "podman", "unshare", "chown", "-R", "-h", "1001:1001", str(data))
    return data


def environment(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_dokuwiki_imageroot_is_backed_up_on_one_node_and_restored_on_another(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    dokuwiki_image: str,
    restic_image: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    unique_ids(redis_client, "dokuwiki")
    cluster.add_node(2)
    added = cluster.api_ok("add-module", {"image": dokuwiki_image, "node": 1})
    source = added["module_id"]
    modules = [source]
    try:
        run_and_check(cluster, redis_client, source, modules, tmp_path, subtests)
    finally:
        for module_id in modules:
            cluster.api_ok("remove-module", {"module_id": module_id})
    assert not any(user_exists(module_id) for module_id in modules)


def run_and_check(
    cluster: ClusterHarness,
    redis_client: redis.Redis,
    source: str,
    modules: list[str],
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    source_state = cluster.nodes[1].settings.state_dir(f"module/{source}")
    with subtests.test("dokuwiki's create-module ran, as the module's user"):
        assert source.startswith("dokuwiki") and source != "dokuwiki"
        assert module_users.is_rootless(cluster.nodes[1].settings, source)
        owner = pwd.getpwnam(source)
        assert source_state == Path(owner.pw_dir) / ".config" / "state"
        assert (source_state / "secrets.env").stat().st_uid == owner.pw_uid
        assert (source_state / "secrets.env").read_bytes() == b""
        created = environment(source_state / "environment")
        assert created["PHP_MEMORYLIMIT"] == "512M" and created["PHP_TIMEZONE"] == "UTC"
        assert created["DOKUWIKI_IMAGE"] == "docker.io/dokuwiki/dokuwiki:2026-07-14c"
        assert created["TCP_PORT"] == "20001"
    with subtests.test("add-module makes the first instance the default, as NS8"):
        assert redis_client.get("cluster/default_instance/dokuwiki") == source
        assert redis_client.get("node/1/default_instance/dokuwiki") == source

    runagent(cluster, 1, source, "python3", "-c", CONFIGURE_SCRIPT, json.dumps(CONFIGURED))
    source_volume = fill_volume(cluster, source)
    target = tmp_path / "dest"
    target.mkdir()
    repository = backups.add_destination(redis_client, "local", f"local:{target}")
    backups.add_backup(redis_client, 1, repository, [source])
    cluster.api_ok("run-backup", {"id": 1})
    module_uuid = redis_client.hget(redis_keys.MODULE_UUID, source)
    path = f"dokuwiki/{module_uuid}"
    with subtests.test("the snapshot holds what state-include.conf lists, and environment"):
        listed = set(backups.listing(target / path))
        assert {"state/environment", "state/secrets.env"} <= listed
        assert f"volumes/{VOLUME}/data/media/logo.png" in listed
        assert "state/agent.env" not in listed  # credentials are never in a backup

    restored: dict[str, Any] = cluster.api_ok(
        "cluster/restore-module",
        {"node": 2, "repository": repository, "path": path, "snapshot": ""},
    )
    new = restored["module_id"]
    modules.append(new)
    new_state = cluster.nodes[2].settings.state_dir(f"module/{new}")
    with subtests.test("the copy is the source, byte for byte, owners included"):
        report = verify(
            connect(cluster.redis_url),
            {n: node.settings for n, node in cluster.nodes.items()},
            source,
            new,
        )
        assert report["ok"], report["differences"]
        restored_volume = cluster.volume_dir(2, new, VOLUME)
        for name in ("data/media/logo.png", "data/pages/wiki/syntax.txt", "conf/users.auth.php"):
            assert (restored_volume / name).read_bytes() == (source_volume / name).read_bytes()
            assert inside_owner(new, restored_volume / name) == "1001:1001"
            assert (restored_volume / name).stat().st_uid != 1001  # a subordinate id here
        assert inside_owner(new, restored_volume / "conf" / "local.php") == "1001:1001"
        assert pwd.getpwnam(new).pw_uid != pwd.getpwnam(source).pw_uid
        assert (new_state / "secrets.env").read_bytes() == b"DOKUWIKI_PASSWORD=pa=ss word\n"
    new_env = environment(new_state / "environment")
    with subtests.test("dokuwiki's 06copyenv (agent.set_env in a restore step) copied its keys"):
        assert {name: new_env[name] for name in CONFIGURED} == CONFIGURED
        mirrored = redis_client.hgetall(redis_keys.module_environment(new))
        assert {name: mirrored[name] for name in CONFIGURED} == CONFIGURED
    with subtests.test("the new instance keeps its own identity"):
        assert new_env["MODULE_ID"] == new and new_env["NODE_ID"] == "2"
        assert new_env["MODULE_UUID"] == restored["module_uuid"] != module_uuid
    with subtests.test("X@node resolves to the default instance on each node"):
        assert redis_client.get("node/2/default_instance/dokuwiki") == new
        assert redis_client.get("cluster/default_instance/dokuwiki") == source
        script = "import agent; print(agent.resolve_agent_id('dokuwiki@node'))"
        assert runagent(cluster, 2, new, "python3", "-c", script) == f"module/{new}\n"
    with subtests.test("what the new instance's create-module wrote outside the list stays"):
        # dokuwiki's create-module writes secrets.env (in the include list: restored from
        # the snapshot) and, through agent.set_env, environment (never restored) and its
        # lock file .environment.lock, which the snapshot does not hold.
        assert (new_state / ".environment.lock").exists()

    cluster.api_ok("remove-module", {"module_id": source})
    modules.remove(source)
    assert not user_exists(source)
    with subtests.test("remove-module clears the defaults that named it"):
        assert redis_client.get("cluster/default_instance/dokuwiki") is None
        assert redis_client.get("node/1/default_instance/dokuwiki") is None
        assert redis_client.get("node/2/default_instance/dokuwiki") == new
