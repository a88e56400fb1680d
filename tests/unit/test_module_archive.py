"""The archive format on tar streams built here: manifest, hard links, refusals."""

from __future__ import annotations

import io
import tarfile

import pytest

from agent.core import module_archive
from agent.core.module_archive import ArchiveDamaged, NodeFacts

T = "2024-05-01T10:00:00.123456789+02:00"


def restic_like_tar(members: list[tuple[str, bytes | None]]) -> io.BytesIO:
    """A tar as restic dump writes it: directories and whole files, one copy per link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


UUID = "0fbc0402-a9d6-4a07-8261-6af4952938ff"


def export(
    members: list[tuple[str, bytes | None]], facts: dict[str, NodeFacts], module_uuid: str = UUID
) -> bytes:
    out = io.BytesIO()
    manifest = {"created": 1, "module_uuid": module_uuid}
    module_archive.write_archive(restic_like_tar(members), out, facts, manifest)
    return out.getvalue()


def test_pax_time_keeps_nanoseconds_and_the_zone() -> None:
    assert module_archive.pax_time(T) == "1714550400.123456789"
    assert module_archive.pax_time("2024-05-01T08:00:00Z") == "1714550400.000000000"


def test_round_trip_turns_second_copies_into_hard_links() -> None:
    key = (7, 3, T, T)
    facts = {
        "state/a": NodeFacts(module_archive.pax_time(T), key),
        "state/b": NodeFacts("1.5", key),
    }
    data = export([("state", None), ("state/a", b"abc"), ("state/b", b"abc")], facts)
    manifest = module_archive.verify_archive(io.BytesIO(data))
    rows = {row["name"]: row for row in manifest["members"]}
    assert rows["state/b"] == {"name": "state/b", "type": "1", "link": "state/a"}
    assert manifest["files"] == 1 and manifest["bytes"] == 3


def test_damage_and_truncation_are_refused() -> None:
    data = export([("state", None), ("state/a", b"x" * 100_000)], {})
    with pytest.raises(ArchiveDamaged):
        module_archive.verify_archive(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(ArchiveDamaged):
        module_archive.verify_archive(io.BytesIO(data[:-8]))
    with pytest.raises(ArchiveDamaged):
        module_archive.verify_archive(io.BytesIO(b"not zstd at all"))


def test_a_member_changed_after_export_does_not_match_the_manifest() -> None:
    import zstandard

    data = export([("state", None), ("state/a", b"original")], {})
    plain = bytearray(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    at = bytes(plain).index(b"original")
    plain[at : at + 8] = b"ORIGINAL"
    recompressed = zstandard.ZstdCompressor().compress(bytes(plain))
    with pytest.raises(ArchiveDamaged, match="does not match its manifest"):
        module_archive.verify_archive(io.BytesIO(recompressed))


@pytest.mark.parametrize("name", ["../etc/passwd", "/state/a", "state/../../x", "etc/shadow"])
def test_names_outside_the_module_are_refused(name: str) -> None:
    with pytest.raises(ArchiveDamaged, match="outside"):
        export([(name, b"x")], {})


@pytest.mark.parametrize("module_uuid", ["../../etc", "", "0FBC0402-A9D6-4A07-8261-6AF4952938FF"])
def test_a_manifest_naming_no_plain_uuid_is_refused(module_uuid: str) -> None:
    data = export([("state", None), ("state/a", b"abc")], {}, module_uuid)
    with pytest.raises(ArchiveDamaged, match="module uuid"):
        module_archive.verify_archive(io.BytesIO(data))
