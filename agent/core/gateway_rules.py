"""What the storage gateway lets an agent do: request paths parsed strictly, one decision.

A module reaches storage only as `/<destination>/<image>/<uuid>/<restic path>` (restic's
REST layout below its repository). It may read and write its own repository (its image
and uuid), read the one repository a restore in progress grants it, and delete nothing
but restic lock files: forget and prune run on the node, with the destination's secrets.
Nodes may do anything. Everything here is pure: the gateway's proxy feeds it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

# Destination ids are uuids; images and module uuids are what repository paths are made
# of. No '.', '..', empty or encoded separators: a segment is exactly what it looks like.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
_NAME = re.compile(r"[0-9a-f]{64}")  # restic file names: sha256 hex
RESTIC_TYPES = frozenset({"data", "index", "keys", "locks", "snapshots"})
READ_METHODS = frozenset({"GET", "HEAD"})


class Role(StrEnum):
    NODE = "node"
    MODULE = "module"


class PathRefused(ValueError):
    """A request path outside the layout the gateway serves."""


@dataclass(frozen=True)
class StoragePath:
    """`/<destination>/<image>/<uuid>[/<restic part>…]`, checked segment by segment."""

    destination: str
    repository: str  # "<image>/<uuid>"
    rest: tuple[str, ...]  # () repository root, ("config",), (type,), (type, name)
    directory: bool = False  # ended in '/': restic lists a directory (`GET /<repo>/keys/`)

    @property
    def is_lock_file(self) -> bool:
        return len(self.rest) == 2 and self.rest[0] == "locks"

    def backend_path(self) -> str:
        """The path on the destination's own restic server (no destination prefix)."""
        tail = "/".join(self.rest) + ("/" if self.directory and self.rest else "")
        return f"/{self.repository}/{tail}"


def parse_storage_path(path: str) -> StoragePath:
    """A request path (as sent, not yet percent-decoded) → StoragePath, or PathRefused."""
    if "%" in path or "\\" in path:
        raise PathRefused("encoded characters are not served")
    parts = path.split("/")
    if len(parts) < 4 or parts[0] != "":
        raise PathRefused("not /<destination>/<image>/<uuid>/…")
    destination, image, module_uuid, *rest = parts[1:]
    for segment in (destination, image, module_uuid):
        if not _SEGMENT.fullmatch(segment):
            raise PathRefused(f"bad path segment {segment[:40]!r}")
    directory = bool(rest) and rest[-1] == ""
    if directory:
        rest = rest[:-1]  # '/<repo>/' and '/<repo>/data/' name the directory
    listing = not rest or (len(rest) == 1 and rest[0] in RESTIC_TYPES)
    if not _restic_part(rest) or (directory and not listing):
        raise PathRefused("not a restic repository path")
    return StoragePath(destination, f"{image}/{module_uuid}", tuple(rest), directory)


def _restic_part(rest: list[str]) -> bool:
    if not rest:
        return True
    if rest == ["config"]:
        return True
    if rest[0] not in RESTIC_TYPES or len(rest) > 2:
        return False
    return len(rest) == 1 or bool(_NAME.fullmatch(rest[1]))


@dataclass(frozen=True)
class Grants:
    """What a module agent may reach: its own repository path and any restore sources."""

    own: str  # "<image>/<uuid>", "" when the module has none (no uuid recorded)
    sources: Collection[tuple[str, str]] = ()  # (destination id, "<image>/<uuid>")


def refusal(role: Role, grants: Grants, method: str, target: StoragePath) -> str:
    """Why the request is refused, or "" when it is allowed."""
    if role is Role.NODE:
        return ""
    if method == "DELETE" and not target.is_lock_file:
        return "modules delete only restic lock files (forget and prune run on the node)"
    if grants.own and target.repository == grants.own:
        if method in READ_METHODS or method in ("POST", "DELETE"):
            return ""
        return f"method {method} not served"
    if (target.destination, target.repository) in grants.sources:
        # A restore source: read it, and take (and drop) restic's non-exclusive lock.
        if method in READ_METHODS or (target.is_lock_file and method in ("POST", "DELETE")):
            return ""
        return "a restore source is read only"
    return f"repository {target.repository} is not this module's"


# --- WebDAV: the small files beside the repositories ---------------------------------
WEBDAV_PREFIX = "/_webdav/"
WEBDAV_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND"})


@dataclass(frozen=True)
class WebdavPath:
    """`/_webdav/<destination>/<segment>…[/]`: any file or directory of the destination,
    each segment checked as in a repository path (no '.', '..', empty or encoded ones)."""

    destination: str
    parts: tuple[str, ...]
    directory: bool = False

    def backend_path(self) -> str:
        """The path on the destination's own WebDAV server, which serves under the same
        base (`/_webdav/<destination>`)."""
        tail = "/".join(self.parts)
        return f"{WEBDAV_PREFIX}{self.destination}/{tail}" + (
            "/" if self.directory and tail else ""
        )


def parse_webdav_path(path: str) -> WebdavPath:
    """A request path (as sent, not yet percent-decoded) → WebdavPath, or PathRefused."""
    if "%" in path or "\\" in path:
        raise PathRefused("encoded characters are not served")
    if not path.startswith(WEBDAV_PREFIX):
        raise PathRefused(f"not {WEBDAV_PREFIX}<destination>/…")
    parts = path.removeprefix(WEBDAV_PREFIX).split("/")
    directory = len(parts) > 1 and parts[-1] == ""
    if directory:
        parts = parts[:-1]
    for segment in parts:
        if not _SEGMENT.fullmatch(segment):
            raise PathRefused(f"bad path segment {segment[:40]!r}")
    return WebdavPath(parts[0], tuple(parts[1:]), directory or len(parts) == 1)


def webdav_refusal(role: Role, grants: Grants, method: str, target: WebdavPath) -> str:
    """Why the WebDAV request is refused, or "" when it is allowed: nodes do anything,
    a module only reads below its own `<image>/<uuid>` (and its `<uuid>.json` beside it)
    or a restore source's."""
    if role is Role.NODE:
        return ""
    if method not in WEBDAV_READ_METHODS:
        return f"modules only read metadata ({method} not allowed)"
    if len(target.parts) >= 2:
        image, name = target.parts[0], target.parts[1].removesuffix(".json")
        repository = f"{image}/{name}"
        if len(target.parts) == 2 or name == target.parts[1]:
            if grants.own and repository == grants.own:
                return ""
            if (target.destination, repository) in grants.sources:
                return ""
    return "not this module's files"
