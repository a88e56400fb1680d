"""Portable module archives: export a snapshot to one file, import it on an unrelated
cluster byte for byte; damaged or truncated files are refused before anything is installed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from tests.integration.test_disaster_recovery import compare, snapshot_of
from tests.support import backups
from tests.support.cluster import ClusterHarness

pytestmark = pytest.mark.podman


def make_awkward(pages: Path) -> None:
    """Hard links, a sparse file, xattrs and names shells and tars trip over."""
    odd = pages / "awkward"
    odd.mkdir()
    (odd / "original.txt").write_text("linked twice\n")
    os.link(odd / "original.txt", odd / "second name.txt")
    with (odd / "sparse.img").open("wb") as handle:
        handle.seek(3 * 1024 * 1024)
        handle.write(b"end of a sparse file")
    for name in ("-leading-dash", "new\nline", "ünïcødé ✓", "tab\there", "back\\slash"):
        (odd / name).write_text(name)
    os.setxattr(odd / "original.txt", "user.note", b"kept")
    os.setxattr(odd, "user.dir", b"on a directory")
    os.symlink("../missing/target", odd / "dangling")
    os.utime(odd / "ünïcødé ✓", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))


def test_an_archive_moves_a_module_to_an_unrelated_cluster(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str, minwiki_image: str, restic_image: str
) -> None:
    # Both clusters reach the destinations beside them (a disk moved to the new one).
    roots = (str(tmp_path),)
    old = ClusterHarness(tmp_path / "old", redis_url, local_roots=roots)
    new = ClusterHarness(tmp_path / "new", redis_url, local_roots=roots)
    try:
        old.add_node(1)
        wiki = old.api_ok("add-module", {"image": minwiki_image, "node": 1})["module_id"]
        make_awkward(old.volume_dir(1, wiki, "pages"))
        (tmp_path / "dest").mkdir()
        destination = backups.add_destination(redis_client, "local", f"local:{tmp_path / 'dest'}")
        backups.add_backup(redis_client, 1, destination, [wiki])
        old.api_ok("run-backup", {"id": 1})
        module_uuid = redis_client.hget("cluster/module_uuid", wiki)
        exports = tmp_path / "exports"
        exported = old.api_ok(
            "export-module-backup",
            {
                "repository": destination,
                "path": f"minwiki/{module_uuid}",
                "snapshot": "",
                "directory": str(exports),
            },
        )
        archive = Path(exported["path"])
        assert archive.name == f"{wiki}-{exported['snapshot'][:8]}.agentbackup"
        assert hashlib.sha256(archive.read_bytes()).hexdigest() == exported["sha256"]
        listed = subprocess.run(
            ["tar", "--zstd", "-tf", str(archive)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert listed[-1] == "manifest.json" and "volumes/pages/awkward/sparse.img" in listed
        manifest = json.loads(
            subprocess.run(
                ["tar", "--zstd", "-xOf", str(archive), "manifest.json"],
                capture_output=True,
                check=True,
            ).stdout
        )
        assert manifest["module_uuid"] == module_uuid and manifest["image_url"] == minwiki_image
        assert manifest["format_version"] == 1 and manifest["files"] == exported["files"]
        kinds = {m["name"]: m for m in manifest["members"]}
        assert kinds["volumes/pages/awkward/second name.txt"]["type"] == "1"  # a hard link
        assert manifest["snapshot"]["id"] == exported["snapshot"]
        before = snapshot_of(old, wiki)

        # A cluster that shares nothing with the first: the archive alone travels.
        carried = tmp_path / "carried.agentbackup"
        shutil.copy(archive, carried)
        old.stop()
        shutil.rmtree(tmp_path / "old")
        shutil.rmtree(tmp_path / "dest")
        old.nodes.clear()
        redis_client.flushdb()
        new.add_node(1)

        data = carried.read_bytes()
        truncated, flipped = tmp_path / "truncated.agentbackup", tmp_path / "flipped.agentbackup"
        truncated.write_bytes(data[: len(data) * 2 // 3])
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x55
        flipped.write_bytes(bytes(changed))
        for bad in (truncated, flipped):
            code, output, stderr = new.api_json(
                "import-module-backup", {"node": 1, "file": str(bad)}
            )
            assert code == 2, (bad, output, stderr)
            assert not redis_client.hgetall("cluster/module_node"), "nothing installed"
            assert not redis_client.keys("cluster/backup_repository/*")
        scratch = tmp_path / "new" / "node1" / "imports"
        assert not scratch.exists() or not list(scratch.iterdir())

        added = new.api_ok("import-module-backup", {"node": 1, "file": str(carried)})
        assert added["module_uuid"] == module_uuid
        compare(new, added["module_id"], before, tmp_path)
        restored = new.volume_dir(1, added["module_id"], "pages") / "awkward"
        assert (restored / "original.txt").stat().st_ino == (
            restored / "second name.txt"
        ).stat().st_ino
        assert os.getxattr(restored / "original.txt", "user.note") == b"kept"
        assert (restored / "ünïcødé ✓").stat().st_mtime_ns == 1_600_000_000_987_654_321
        assert not redis_client.keys("cluster/backup_repository/*"), "the scratch one is gone"
        assert not list(scratch.iterdir()), "the scratch tree and repository are removed"
    finally:
        old.stop()
        new.stop()
