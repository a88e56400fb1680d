"""GNU tar's argv (the adapter of the one tar this code runs)."""

from __future__ import annotations

from pathlib import Path


def unpack_argv(archive: Path, tree: Path, exclude: str) -> list[str]:
    """Unpack a zstd archive into tree keeping owners by number, modes, exact times and
    xattrs; the member named exclude stays out."""
    return [
        "tar", "--zstd", "-x", "-f", str(archive), "-C", str(tree),
        "--numeric-owner", "--same-owner", "--same-permissions",
        "--xattrs", "--xattrs-include=*", "--exclude", exclude,
    ]  # fmt: skip
