"""Action directories: merge them (later wins per file name) and list an action's steps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.core import redis_keys
from agent.core.settings import Settings

BUILTIN_ACTIONS = ("list-actions", "cancel-task")
INPUT_SCHEMA = "validate-input.json"
OUTPUT_SCHEMA = "validate-output.json"


@dataclass(frozen=True)
class Action:
    name: str
    files: dict[str, Path]  # file name → winning path

    @property
    def steps(self) -> list[tuple[str, Path]]:
        """Executable files in name order; a non-executable file is a skipped placeholder."""
        return [
            (name, path)
            for name, path in sorted(self.files.items())
            if path.is_file() and os.access(path, os.X_OK)
        ]

    @property
    def input_schema(self) -> Path | None:
        return self.files.get(INPUT_SCHEMA)


def action_dirs(settings: Settings, agent_id: str) -> list[Path]:
    """Base directory first, the agent's own last."""
    share = settings.share
    home = settings.agent_home(agent_id)
    kind = redis_keys.AgentId.parse(agent_id).kind
    if kind == "module":
        return [share / "imageroot" / "actions", home / "actions"]
    return [share / "actions" / kind, home / "actions"]


def merge_actions(dirs: list[Path]) -> dict[str, Action]:
    """All actions found in dirs; for the same action and file name the later dir wins."""
    merged: dict[str, dict[str, Path]] = {}
    for base in dirs:
        if not base.is_dir():
            continue
        for action_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            files = merged.setdefault(action_dir.name, {})
            for entry in action_dir.iterdir():
                if entry.is_file():
                    files[entry.name] = entry
    return {name: Action(name, files) for name, files in merged.items()}


def list_actions(dirs: list[Path]) -> list[str]:
    return sorted({*merge_actions(dirs), *BUILTIN_ACTIONS})
