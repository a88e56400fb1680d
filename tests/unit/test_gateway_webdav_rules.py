"""The gateway's WebDAV paths and who may do what there (agent/core/gateway_rules.py)."""

from __future__ import annotations

import pytest

from agent.core.gateway_rules import (
    Grants,
    PathRefused,
    Role,
    parse_webdav_path,
    webdav_refusal,
)

DEST = "0b8a3c2e-1111-4000-8000-000000000001"
OWN = "minwiki/5e0c1a2b-0000-4000-8000-000000000001"
GRANTS = Grants(OWN, [(DEST, "minwiki/5e0c1a2b-0000-4000-8000-000000000002")])


def test_paths_map_to_the_same_path_on_the_served_base() -> None:
    root = parse_webdav_path(f"/_webdav/{DEST}/")
    assert (root.parts, root.directory) == ((), True)
    meta = parse_webdav_path(f"/_webdav/{DEST}/{OWN}.json")
    assert meta.backend_path() == f"/_webdav/{DEST}/{OWN}.json"
    listing = parse_webdav_path(f"/_webdav/{DEST}/minwiki/")
    assert listing.backend_path() == f"/_webdav/{DEST}/minwiki/"


@pytest.mark.parametrize(
    "path",
    [
        f"/_webdav/{DEST}/minwiki/../other",
        f"/_webdav/{DEST}/minwiki/%2e%2e/x",
        f"/_webdav/{DEST}//minwiki",
        f"/_webdav/{DEST}/.hidden",
        f"/{DEST}/minwiki",
    ],
)
def test_odd_paths_are_refused(path: str) -> None:
    with pytest.raises(PathRefused):
        parse_webdav_path(path)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PROPFIND", OWN, True),
        ("GET", f"{OWN}.json", True),
        ("GET", f"{OWN}/config", True),
        ("OPTIONS", f"{OWN}/snapshots", True),
        ("PROPFIND", "minwiki/5e0c1a2b-0000-4000-8000-000000000002", True),  # restore source
        ("PUT", f"{OWN}.json", False),
        ("DELETE", f"{OWN}/config", False),
        ("MKCOL", f"{OWN}/x", False),
        ("PROPFIND", "", False),  # the destination's root: every module's names
        ("PROPFIND", "minwiki", False),
        ("GET", "minwiki/5e0c1a2b-0000-4000-8000-000000000003.json", False),
        ("GET", f"{OWN}.json/x", False),
    ],
)
def test_a_module_reads_only_its_own_files(method: str, path: str, allowed: bool) -> None:
    target = parse_webdav_path(f"/_webdav/{DEST}/{path}".rstrip("/"))
    reason = webdav_refusal(Role.MODULE, GRANTS, method, target)
    assert (reason == "") is allowed, reason
    assert webdav_refusal(Role.NODE, Grants(""), method, target) == ""
