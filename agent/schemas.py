"""validate-input.json files generated from the pydantic models (one source of truth)."""

from __future__ import annotations

import json
from pathlib import Path

from agent.core.schema_table import SCHEMAS
from agent.core.settings import share_dir


def render_schema(model: type) -> str:
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(base: Path | None = None) -> list[Path]:
    base = base or share_dir()
    written = []
    for relative, model in SCHEMAS.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render_schema(model)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def check_schemas(base: Path | None = None) -> list[str]:
    """Relative paths whose committed schema differs from the model's."""
    base = base or share_dir()
    stale = []
    for relative, model in SCHEMAS.items():
        path = base / relative
        if not path.exists() or path.read_text() != render_schema(model):
            stale.append(relative)
    return stale
