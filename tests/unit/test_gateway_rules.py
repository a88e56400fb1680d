"""The storage gateway's decisions: request paths parsed strictly, what each agent may do."""

from __future__ import annotations

import pytest

from agent.core.gateway_rules import Grants, PathRefused, Role, parse_storage_path, refusal

DEST = "8a6b0c1e-dest"
OWN = "minwiki/0000-a"
OTHER = "minwiki/0000-b"
NAME = "ab" * 32


def path(repo: str, tail: str = "", dest: str = DEST) -> str:
    return f"/{dest}/{repo}/{tail}"


@pytest.mark.parametrize(
    ("text", "rest", "directory"),
    [
        (path(OWN), (), True),
        (path(OWN, "config"), ("config",), False),
        (path(OWN, "data/"), ("data",), True),
        (path(OWN, f"data/{NAME}"), ("data", NAME), False),
        (path(OWN, f"locks/{NAME}"), ("locks", NAME), False),
    ],
)
def test_restic_paths_parse(text: str, rest: tuple[str, ...], directory: bool) -> None:
    parsed = parse_storage_path(text)
    assert (parsed.destination, parsed.repository, parsed.rest) == (DEST, OWN, rest)
    assert parsed.directory is directory
    assert parsed.backend_path() == text.removeprefix(f"/{DEST}")


@pytest.mark.parametrize(
    "text",
    [
        "/",
        f"/{DEST}/minwiki",
        path(OWN, "../0000-b/config"),
        path("minwiki/..", "config"),
        path(OWN, "config/"),
        path(OWN, "data/short"),
        path(OWN, f"data/{NAME}/more"),
        path(OWN, "secrets"),
        path(OWN, "data%2F..%2Fconfig"),
        f"/{DEST}/minwiki%2F0000-a/config",
        f"/{DEST}//minwiki/0000-a/config",
        f"/{DEST}/.hidden/0000-a/config",
        path(OWN, "config\\x"),
    ],
)
def test_other_paths_are_refused(text: str) -> None:
    with pytest.raises(PathRefused):
        parse_storage_path(text)


def decide(method: str, text: str, grants: Grants, role: Role = Role.MODULE) -> str:
    return refusal(role, grants, method, parse_storage_path(text))


def test_a_module_uses_its_own_repository() -> None:
    grants = Grants(OWN)
    for method in ("GET", "HEAD", "POST"):
        assert decide(method, path(OWN, "config"), grants) == ""
    assert decide("POST", path(OWN), grants) == ""  # ?create=true
    assert decide("DELETE", path(OWN, f"locks/{NAME}"), grants) == ""


def test_a_module_deletes_nothing_but_locks() -> None:
    grants = Grants(OWN)
    for tail in ("config", f"data/{NAME}", f"snapshots/{NAME}", f"keys/{NAME}", "", "locks/"):
        assert "lock" in decide("DELETE", path(OWN, tail), grants)


def test_another_repository_is_not_the_modules() -> None:
    grants = Grants(OWN)
    assert "not this module's" in decide("GET", path(OTHER, "config"), grants)
    assert "not this module's" in decide("GET", path(OTHER, "config"), Grants(""))


def test_a_restore_source_is_read_only_and_on_its_destination_only() -> None:
    grants = Grants(OWN, [(DEST, OTHER)])
    assert decide("GET", path(OTHER, f"data/{NAME}"), grants) == ""
    assert decide("POST", path(OTHER, f"locks/{NAME}"), grants) == ""
    assert decide("DELETE", path(OTHER, f"locks/{NAME}"), grants) == ""
    assert (
        decide("POST", path(OTHER, f"snapshots/{NAME}"), grants) == "a restore source is read only"
    )
    assert "not this module's" in decide("GET", path(OTHER, "config", dest="other"), grants)


def test_nodes_may_do_anything() -> None:
    assert decide("DELETE", path(OTHER, "config"), Grants(""), Role.NODE) == ""
