"""A deterministic benchmark dataset: many small text files and a few large, half-random ones.

Same seed and size → byte-identical tree with identical mtimes, so every run and every
machine backs up the same thing. `python -m bench.dataset DIR [--size 600M]`.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
DEFAULT_SIZE = 600 * MIB
MTIME = 1_700_000_000  # fixed mtimes: restic's change detection sees the same tree each time
WORDS = [
    "backup",
    "restore",
    "snapshot",
    "module",
    "volume",
    "restic",
    "repository",
    "node",
    "cluster",
    "agent",
    "timer",
    "schedule",
    "retention",
    "prune",
    "forget",
    "index",
    "pack",
    "blob",
    "tree",
    "chunk",
    "cache",
    "lock",
    "lease",
    "queue",
    "redis",
    "podman",
    "container",
    "image",
    "state",
    "dump",
    "hook",
    "progress",
    "status",
    "summary",
    "error",
]


@dataclass(frozen=True)
class Shape:
    """How a total size splits: small_files in directories, plus large_files big ones."""

    small_files: int
    directories: int
    small_bytes: int  # total of the small files
    large_files: int
    large_bytes: int  # total of the large files

    @property
    def total(self) -> int:
        return self.small_bytes + self.large_bytes


def make_shape(size: int) -> Shape:
    """The default shape (20 000 files in 200 dirs, ~100 MiB; 4 large files) scaled to size."""
    scale = size / DEFAULT_SIZE
    small_files = max(10, round(20_000 * scale))
    directories = max(1, round(200 * scale))
    small_bytes = size // 6
    return Shape(small_files, directories, small_bytes, 4, size - small_bytes)


def parse_size(text: str) -> int:
    """'600M', '1G', '50m', or plain bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _text(rng: random.Random, length: int) -> bytes:
    words: list[str] = []
    total = 0
    while total < length:
        word = rng.choice(WORDS)
        words.append(word)
        total += len(word) + 1
        if rng.random() < 0.08:
            words.append("\n")
    return " ".join(words).encode()[:length]


def _large(rng: random.Random, path: Path, length: int) -> None:
    """Half random bytes (incompressible, unique), half repeated text (compressible)."""
    block = 4 * MIB
    filler = _text(rng, 64 * 1024) * (block // (64 * 1024))
    with path.open("wb") as out:
        written = 0
        index = 0
        while written < length:
            chunk = min(block, length - written)
            out.write(rng.randbytes(chunk) if index % 2 == 0 else filler[:chunk])
            written += chunk
            index += 1


def generate(directory: Path, size: int = DEFAULT_SIZE, seed: int = 7) -> Shape:
    """Fill directory (created, must be empty or absent) with the dataset of size bytes."""
    shape = make_shape(size)
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    average = shape.small_bytes // shape.small_files
    for number in range(shape.small_files):
        sub = directory / f"dir{number % shape.directories:03d}"
        sub.mkdir(exist_ok=True)
        # sizes spread 1/4 .. 7/4 of the average, as text pages tend to be
        length = max(16, int(average * (0.25 + 1.5 * rng.random())))
        path = sub / f"page{number:05d}.txt"
        path.write_bytes(_text(rng, length))
        os.utime(path, (MTIME, MTIME))
    large = directory / "large"
    large.mkdir(exist_ok=True)
    for number in range(shape.large_files):
        path = large / f"blob{number}.bin"
        _large(rng, path, shape.large_bytes // shape.large_files)
        os.utime(path, (MTIME, MTIME))
    for sub in [*directory.iterdir(), directory]:
        if sub.is_dir():
            os.utime(sub, (MTIME, MTIME))
    return shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--size", default="600M", help="total size, e.g. 600M (default), 60M")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    shape = generate(args.directory, parse_size(args.size), args.seed)
    print(
        f"{args.directory}: {shape.small_files} small files in {shape.directories} dirs "
        f"({shape.small_bytes / MIB:.0f} MiB) + {shape.large_files} large files "
        f"({shape.large_bytes / MIB:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
