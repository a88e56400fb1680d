"""What api-cli shows while a task runs: a progress bar on a terminal, nothing when piped."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.last = -1

    def update(self, status: str, percent: int) -> None:
        if not self.enabled or (percent == self.last and status == "running"):
            return
        self.last = percent
        width = max(10, min(40, shutil.get_terminal_size().columns - len(self.label) - 20))
        filled = width * max(0, min(100, percent)) // 100
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r[{bar}] {percent:3d}% {self.label} ({status})")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.last >= 0:
            self.stream.write("\r\033[K")
            self.stream.flush()
