"""The pydantic base of the stored models and the one parse that names the key on error."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from agent.core.errors import StoredDataError

__all__ = ["StoredDataError", "StoredRecord", "parse_stored", "parse_stored_json"]


class StoredRecord(BaseModel):
    """Base of the stored models. Unknown fields are ignored, not refused: NS8's tools and
    other versions of this agent write the same keys, and each writer sets only the fields
    it owns, so a field one does not know stays in Redis untouched."""

    model_config = ConfigDict(frozen=True, extra="ignore")


Record = TypeVar("Record")


def describe(exc: ValidationError) -> str:
    """The first problem of a validation error in one line (field: message)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(model: Any) -> TypeAdapter[Any]:
    if model not in _ADAPTERS:  # building one compiles a validator: once per model
        _ADAPTERS[model] = TypeAdapter(model)
    return _ADAPTERS[model]


def parse_stored(model: type[Record], key: str, data: object) -> Record:
    """data (as read from key) as a model (or pydantic dataclass); StoredDataError naming
    key when it is not one."""
    try:
        parsed: Record = _adapter(model).validate_python(data)
        return parsed
    except ValidationError as exc:
        raise StoredDataError(key, describe(exc)) from None


def parse_stored_json(model: type[Record], key: str, text: str) -> Record:
    """JSON text (as read from key) as a model; StoredDataError naming key if it is not."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StoredDataError(key, f"not JSON: {exc}") from None
    return parse_stored(model, key, data)
