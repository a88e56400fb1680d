"""Pure parts of module isolation: ACL rules, authorizations, include/exclude confinement."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.core import redis_acl
from agent.core.volumes import backup_layout, confine_lines, confined_line
from agent.records.acls import AgentAcl

OWN = {"pages", "db"}


@pytest.mark.parametrize(
    "line",
    ["state", "state/", "state/wiki.env", "state/wiki-dump.*", "volumes/pages", "volumes/db/x"],
)
def test_lines_inside_the_module_are_kept(line: str) -> None:
    assert confined_line(line, OWN)


@pytest.mark.parametrize(
    "line",
    [
        "/etc/shadow",
        "/srv/state",
        "volumes/other-module-data",
        "volumes/*",
        "volumes/pag*",
        "volumes",
        "state/../volumes/other",
        "state/./x",
        "state//x",
        "../etc",
        "*",
        "*/shadow",
        "etc/shadow",
        "state/$HOME",
        "state/a\\b",
        "state/\x01",
    ],
)
def test_lines_naming_more_than_the_module_are_refused(line: str) -> None:
    assert not confined_line(line, OWN)


def test_confine_lines_reports_what_it_drops() -> None:
    text = "# comment\n\n  state/wiki.env  \n/etc/shadow\nvolumes/other-module-data\nvolumes/db\n"
    confined = confine_lines("state-include.conf", text, OWN)
    assert confined.text == "state/wiki.env\nvolumes/db\n"
    assert confined.ignored == (
        "state-include.conf: /etc/shadow",
        "state-include.conf: volumes/other-module-data",
    )


def test_backup_layout_passes_only_confined_lines(tmp_path: Path) -> None:
    install, state = tmp_path / "home", tmp_path / "home" / "state"
    (install / "etc").mkdir(parents=True)
    state.mkdir()
    (install / "etc" / "state-include.conf").write_text("volumes/pages\n/etc/shadow\n")
    (install / "etc" / "state-exclude.conf").write_text("state/*.tmp\n/etc\n")
    copy = tmp_path / "run" / "wiki1.conf"
    layout = backup_layout(
        "wiki1", install, state, ["wiki1-pages", "other1-data"], file_writer(copy)
    )
    assert layout.include_text == "volumes/pages\n"
    assert copy.read_text() == "state/*.tmp\n"
    assert layout.ignored == ("state-include.conf: /etc/shadow", "state-exclude.conf: /etc")
    assert [m.target for m in layout.mounts] == [
        "/srv/state",
        "/srv/volumes/pages",
        "/etc/state-exclude.conf",
    ]


def test_a_linked_include_file_is_not_read(tmp_path: Path) -> None:
    install = tmp_path / "home"
    (install / "etc").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("root:hash\n")
    (install / "etc" / "state-include.conf").symlink_to(secret)
    layout = backup_layout("wiki1", install, tmp_path, [], file_writer(tmp_path / "x.conf"))
    assert layout.include_text == "" and layout.ignored == ()


def test_authorizations_label_grants_queues() -> None:
    label = "cluster:accountconsumer node:fwadm traefik@node:routeadm self:x bad nope@x:y"
    assert redis_acl.parse_authorizations(label, 3) == (
        "cluster",
        "node/3",
        "module/traefik[0-9]*",
    )
    assert redis_acl.parse_authorizations("", 1) == ()


def test_module_rules_grant_own_keys_and_push_only() -> None:
    rules = redis_acl.module_rules("wiki1", ("cluster",))
    assert "~module/wiki1/*" in rules and "~task/module/wiki1/*" in rules
    assert "%W~cluster/tasks" in rules  # push, not read: queued tasks carry data in clear
    assert not any(rule.startswith(("~cluster/tasks", "%R~cluster/tasks")) for rule in rules)
    assert not any(rule in ("allkeys", "~*", "+@all") for rule in rules)
    assert not [r for r in rules if "private/" in r]  # no secret: storage is the gateway
    assert {"-@admin", "-@dangerous", "-scan", "-keys"} <= set(rules)


def test_stored_acl_rebuilds_its_setuser_arguments() -> None:
    digest = redis_acl.password_sha256("pw")
    acl = AgentAcl(user="module/wiki1", password_sha256=digest, granted=("cluster",))
    args = acl.setuser_args()
    assert args[:4] == ["module/wiki1", "reset", "on", f"#{digest}"]
    assert "%W~cluster/tasks" in args
    node = AgentAcl(user="node/2", password_sha256=digest).setuser_args()
    assert node[4:] == ["allkeys", "allchannels", "+@all"]


def test_agent_url_replaces_the_credentials() -> None:
    url = redis_acl.agent_url("redis://:nodepw@127.0.0.1:6380/0", "module/wiki1", "p@ss")
    assert url == "redis://module%2Fwiki1:p%40ss@127.0.0.1:6380/0"
    assert redis_acl.anonymous_url("redis://:nodepw@127.0.0.1:6380/0") == (
        "redis://127.0.0.1:6380/0"
    )


def file_writer(copy: Path) -> Callable[[bytes], Path]:
    """A backup_layout exclude writer that writes the copy at copy (as the node's does)."""

    def write(text: bytes) -> Path:
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(text)
        return copy

    return write


def test_module_rules_grant_its_own_repository_lease_only() -> None:
    rules = redis_acl.module_rules("wiki1", (), image="minwiki", module_uuid="u-1")
    leases = [r for r in rules if "repository_lease" in r]
    assert leases == ["~cluster/repository_lease/*/minwiki/u-1"]
    assert not [r for r in rules if "backup_repository_written" in r]
    restoring = redis_acl.module_rules(
        "wiki1", (), image="minwiki", module_uuid="u-1", restore_source=("d1", "/minwiki/u-2/")
    )
    assert "~cluster/repository_lease/d1/minwiki/u-2" in restoring
    # No uuid recorded: no lease of its own; no image: its uuid under any image.
    assert not [r for r in redis_acl.module_rules("wiki1", ()) if "repository_lease" in r]
    assert redis_acl.repository_lease_patterns("", "u-1") == ["cluster/repository_lease/*/*/u-1"]


def test_glob_characters_in_names_match_only_themselves() -> None:
    assert redis_acl.glob_literal("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    patterns = redis_acl.repository_lease_patterns("img", "*", ("d*", "x/[y]"))
    assert patterns == [
        "cluster/repository_lease/*/img/\\*",
        "cluster/repository_lease/d\\*/x/\\[y\\]",
    ]


def test_a_module_acl_record_keeps_its_repository() -> None:
    digest = redis_acl.password_sha256("pw")
    acl = AgentAcl(user="module/wiki1", password_sha256=digest, image="minwiki", module_uuid="u")
    assert json.loads(acl.stored_value())["image"] == "minwiki"
    assert "~cluster/repository_lease/*/minwiki/u" in acl.setuser_args()
    assert "~cluster/repository_lease/d/p/q" in acl.setuser_args(("d", "p/q"))
    node = AgentAcl(user="node/2", password_sha256=digest)
    assert node.setuser_args(("d", "p/q"))[4:] == ["allkeys", "allchannels", "+@all"]
