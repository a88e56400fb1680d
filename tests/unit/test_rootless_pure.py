"""Rootless modules' pure parts: run-as argv and environment, id mapping, volume mounts."""

from __future__ import annotations

from agent.adapters import module_users
from agent.adapters.proc import RunAs
from agent.core.volumes import volume_mounts

USER = RunAs("minwiki7", 1007, 1008, "/home/minwiki7", "/opt/agent/containers.conf")


def test_run_as_argv_switches_user_and_groups_then_runs_argv_unchanged() -> None:
    argv = USER.argv(["podman", "volume", "ls"])
    assert argv[:4] == ["setpriv", "--reuid=1007", "--regid=1008", "--init-groups"]
    assert argv[4:] == ["--", "podman", "volume", "ls"]


def test_run_as_environment_is_the_users_not_roots() -> None:
    root_env = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "CONTAINERS_CONF": "/var/lib/backup-agent/containers/containers.conf",
        "CONTAINERS_STORAGE_CONF": "/var/lib/backup-agent/containers/storage.conf",
        "XDG_RUNTIME_DIR": "/run/user/0",
        "MODULE_ID": "minwiki7",
    }
    env = USER.environment(root_env)
    assert env["HOME"] == "/home/minwiki7" and env["USER"] == env["LOGNAME"] == "minwiki7"
    assert env["XDG_RUNTIME_DIR"] == "/run/user/1007"
    assert env["CONTAINERS_CONF"] == "/opt/agent/containers.conf"
    assert "CONTAINERS_STORAGE_CONF" not in env, "the user's own default store, not root's"
    assert env["PATH"] == "/usr/bin" and env["MODULE_ID"] == "minwiki7"


def test_owners_read_as_the_user_namespace_maps_them() -> None:
    text = "other:100000:65536\nminwiki7:165536:65536\n"
    subordinate = module_users.subordinate_range("minwiki7", text)
    assert subordinate == (165536, 65536)
    assert module_users.inside_id(1007, 1007, subordinate) == 0
    assert module_users.inside_id(165536, 1007, subordinate) == 1
    assert module_users.inside_id(165536 + 32, 1007, subordinate) == 33
    assert module_users.inside_id(165536 + 65536, 1007, subordinate) is None
    assert module_users.inside_id(0, 1007, subordinate) is None, "root is not mapped"
    assert module_users.subordinate_range("absent", text) is None


def test_rootless_volumes_are_mounted_by_their_bare_names() -> None:
    names = ["pages", "db", "restic-cache", "minwiki7-old"]
    mounts = {m.source: m.target for m in volume_mounts("minwiki7", names, rootless=True)}
    assert mounts == {
        "pages": "/srv/volumes/pages",
        "db": "/srv/volumes/db",
        "minwiki7-old": "/srv/volumes/minwiki7-old",
    }
    rootfull = {m.source: m.target for m in volume_mounts("minwiki7", names)}
    assert rootfull == {"minwiki7-old": "/srv/volumes/old"}


def test_only_rootfull_1_is_rootfull() -> None:
    assert module_users.is_rootfull("1")
    assert not any(module_users.is_rootfull(v) for v in (None, "", "0", "true", "yes"))
