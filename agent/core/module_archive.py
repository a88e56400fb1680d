"""Portable module archives: one zstd-compressed tar holding a snapshot's tree and, last,
`manifest.json` (format version, module identity, counts, sizes, per-member sha256).

Written and read as streams: one member at a time, in 1 MiB chunks, whatever the size.
restic's own tar (`restic dump --archive tar`) keeps owners, modes, symlinks and xattrs
but has whole-second times and writes a hard link as a second copy; the listing of the
same snapshot (`restic ls --json`) gives the nanoseconds and the inodes, so the archive
carries exact times (PAX `mtime`) and real hard links. Read back, an archive is hostile
until verified: names stay under state/ and volumes/, a hard link names an earlier
member, and every member matches the manifest.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import zstandard

from agent.core.errors import AgentError

FORMAT = "backup-agent-module-archive"
FORMAT_VERSION = 1
SUFFIX = ".agentbackup"
MANIFEST = "manifest.json"
CHUNK = 1024 * 1024
MAX_MANIFEST = 512 * 1024 * 1024
_NAME = re.compile(r"^(state|volumes)(/[^\x00]*)?$")
_ALLOWED_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE}
_ALLOWED_TYPES |= {tarfile.LNKTYPE, tarfile.FIFOTYPE}
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class ArchiveDamaged(AgentError):
    """The archive is truncated, altered, or not one of ours."""

    exit_code = 2


@dataclass(frozen=True)
class NodeFacts:
    """What `restic ls --json` tells of a path that restic's tar loses."""

    mtime: str  # PAX form, "<seconds>.<nanoseconds>"
    link_key: tuple[int, int, str, str] | None  # files only: same key = same inode


def pax_time(rfc3339: str) -> str:
    """restic's '2024-05-01T10:00:00.123456789+02:00' → '1714550400.123456789'."""
    match = _TIME.match(rfc3339)
    if not match:
        raise ValueError(f"not a restic time: {rfc3339!r}")
    whole, fraction, zone = match.groups()
    seconds = int(datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp())
    return f"{seconds}.{(fraction or '').ljust(9, '0')}"


def parse_ls_node(message: dict[str, Any]) -> tuple[str, NodeFacts] | None:
    """(tar member name, facts) of one `restic ls --json` node line; None for others."""
    if message.get("struct_type") != "node" or "path" not in message:
        return None
    name = str(message["path"]).lstrip("/")
    key = None
    if message.get("type") == "file" and message.get("inode"):
        key = (
            int(message["inode"]),
            int(message.get("size", 0)),
            str(message.get("mtime", "")),
            str(message.get("ctime", "")),
        )
    return name, NodeFacts(pax_time(str(message["mtime"])), key)


def check_name(name: str) -> None:
    if not _NAME.match(name) or posixpath.normpath(name) != name or "/../" in f"/{name}/":
        raise ArchiveDamaged(f"archive member outside state/ and volumes/: {name!r}")


class _Hashing:
    """A file object that hashes and counts what is read through it."""

    def __init__(self, source: IO[bytes], on_bytes: Callable[[int], None]) -> None:
        self.source, self.on_bytes = source, on_bytes
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        self.on_bytes(len(data))
        return data


def write_archive(
    tar_stream: IO[bytes],
    out: IO[bytes],
    facts: dict[str, NodeFacts],
    identity: dict[str, Any],
    on_bytes: Callable[[int], None] = lambda _: None,
) -> dict[str, Any]:
    """restic's tar stream → the archive in out (zstd); returns the manifest written."""
    members: list[dict[str, Any]] = []
    linked: dict[tuple[int, int, str, str], str] = {}
    files = total = 0
    compressor = zstandard.ZstdCompressor(level=3, threads=-1)
    with (
        compressor.stream_writer(out, closefd=False) as packed,
        tarfile.open(fileobj=tar_stream, mode="r|") as source,
        tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        for info in source:
            name = info.name.rstrip("/")
            if name in ("", "."):
                continue
            check_name(name)
            info.name = name
            fact = facts.get(name)
            if fact is not None:
                info.pax_headers = {**info.pax_headers, "mtime": fact.mtime}
            row: dict[str, Any] = {"name": name, "type": info.type.decode()}
            key = fact.link_key if fact else None
            if info.isfile() and key is not None and key in linked:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, linked[key], 0
                row |= {"type": info.type.decode(), "link": linked[key]}
                archive.addfile(info)
            elif info.isfile():
                if key is not None:
                    linked[key] = name
                reader = _Hashing(source.extractfile(info), on_bytes)  # type: ignore[arg-type]
                archive.addfile(info, reader)
                row |= {"size": info.size, "sha256": reader.digest.hexdigest()}
                files, total = files + 1, total + info.size
            else:
                if info.issym():
                    row["link"] = info.linkname
                archive.addfile(info)
            members.append(row)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **identity,
            "files": files,
            "bytes": total,
            "members": members,
        }
        text = json.dumps(manifest, indent=1, sort_keys=True).encode()
        entry = tarfile.TarInfo(MANIFEST)
        entry.size, entry.mode, entry.mtime = len(text), 0o644, int(identity.get("created", 0))
        archive.addfile(entry, _Bytes(text))
    return manifest


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk, self.offset = self.data[self.offset : end], min(end, len(self.data))
        return chunk


def _members(stream: IO[bytes]) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        for info in archive:
            yield info, archive


def verify_archive(
    stream: IO[bytes], on_bytes: Callable[[int], None] = lambda _: None
) -> dict[str, Any]:
    """The manifest of the archive in stream, once every member matched it; ArchiveDamaged
    for a truncated, altered or foreign file. Reads the whole stream once."""
    seen: list[dict[str, Any]] = []
    names: set[str] = set()
    manifest: dict[str, Any] | None = None
    try:
        for info, archive in _members(stream):
            if manifest is not None:
                raise ArchiveDamaged("archive has members after its manifest")
            if info.name == MANIFEST:
                if not info.isfile() or info.size > MAX_MANIFEST:
                    raise ArchiveDamaged("archive manifest is not a plain file")
                handle = archive.extractfile(info)
                assert handle is not None
                manifest = json.loads(handle.read())
                continue
            check_name(info.name)
            if info.type not in _ALLOWED_TYPES:
                raise ArchiveDamaged(f"archive member of a refused kind: {info.name!r}")
            row: dict[str, Any] = {"name": info.name, "type": info.type.decode()}
            if info.islnk():
                if info.linkname not in names:
                    raise ArchiveDamaged(f"hard link to an unknown member: {info.name!r}")
                row["link"] = info.linkname
            elif info.isfile():
                handle = archive.extractfile(info)
                assert handle is not None
                reader = _Hashing(handle, on_bytes)
                while reader.read(CHUNK):
                    pass
                row |= {"size": info.size, "sha256": reader.digest.hexdigest()}
            elif info.issym():
                row["link"] = info.linkname
            names.add(info.name)
            seen.append(row)
    except (tarfile.TarError, zstandard.ZstdError, OSError, EOFError, ValueError) as exc:
        raise ArchiveDamaged(f"archive is damaged or truncated: {exc}") from None
    if not isinstance(manifest, dict):
        raise ArchiveDamaged("archive has no manifest: truncated, or not a module archive")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveDamaged(
            f"archive format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r} is not {FORMAT} {FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("module_uuid"), str) or not UUID.fullmatch(
        manifest["module_uuid"]
    ):
        # It names the scratch repository and the restored module: never a path of its own.
        raise ArchiveDamaged(f"archive names no module uuid: {manifest.get('module_uuid')!r}")
    if manifest.get("members") != seen:
        listed = {m.get("name") for m in manifest.get("members", []) if isinstance(m, dict)}
        changed = [row["name"] for row in seen if row not in manifest.get("members", [])]
        missing = sorted(str(n) for n in listed - {row["name"] for row in seen})
        raise ArchiveDamaged(
            "archive does not match its manifest: "
            + ", ".join((changed + missing)[:5] or ["member order"])
        )
    return manifest
