"""The storage gateway's WebDAV (`rclone serve webdav` behind the same authorizing proxy)
with real Redis and rclone: the small files beside the repositories, which modules may
only read, and only their own, while nodes may do anything (#16 item 2)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent.adapters import gateway
from tests.integration.test_gateway import UUID_A, UUID_B, GatewayNode
from tests.integration.test_gateway import node as node  # the fixture, re-exported

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/rclone").exists(), reason="needs rclone on the host"
)


def test_modules_read_their_own_metadata_and_nodes_do_anything(node: GatewayNode) -> None:
    (node.disk / "minwiki" / UUID_A).mkdir(parents=True)
    (node.disk / "minwiki" / f"{UUID_A}.json").write_text('{"module_id": "minwiki1"}')
    (node.disk / "minwiki" / f"{UUID_B}.json").write_text('{"module_id": "minwiki2"}')
    base = f"/_webdav/{node.destination}"
    module = "module/minwiki1"

    own = node.http(module, "GET", f"{base}/minwiki/{UUID_A}.json")
    assert own.status_code == 200 and own.json() == {"module_id": "minwiki1"}
    listing = node.http(module, "PROPFIND", f"{base}/minwiki/{UUID_A}/", headers={"Depth": "1"})
    assert listing.status_code == 207, listing.text
    for method, path in [
        ("GET", f"minwiki/{UUID_B}.json"),
        ("PROPFIND", ""),
        ("PUT", f"minwiki/{UUID_A}.json"),
        ("DELETE", f"minwiki/{UUID_A}.json"),
    ]:
        refused = node.http(module, method, f"{base}/{path}", content=b"{}")
        assert refused.status_code == 403, (method, path, refused.text)
    assert node.http("", "GET", f"{base}/minwiki/{UUID_A}.json").status_code == 401
    assert (node.disk / "minwiki" / f"{UUID_A}.json").read_text() == '{"module_id": "minwiki1"}'

    credentials = gateway.Credentials.from_redis_url(node.settings.redis_url)
    assert credentials is not None
    url = f"http://{node.address}{base}"
    with httpx.Client(auth=credentials.auth, timeout=30) as client:
        listed = client.request("PROPFIND", f"{url}/minwiki/", headers={"Depth": "1"})
        assert listed.status_code == 207 and f"{base}/minwiki/{UUID_B}.json" in listed.text
        assert client.put(f"{url}/cluster-note.txt", content=b"written").status_code in (200, 201)
        assert (node.disk / "cluster-note.txt").read_bytes() == b"written"
        assert client.delete(f"{url}/minwiki/{UUID_B}.json").status_code in (200, 204)
    assert not (node.disk / "minwiki" / f"{UUID_B}.json").exists()
