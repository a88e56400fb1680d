"""What Redis stores, as models: each record is parsed and written in one place, and
stored data that does not parse is a StoredDataError naming its key."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.errors import StoredDataError

__all__ = ["StoredDataError", "StoredRecord", "parse_stored"]


class StoredRecord(BaseModel):
    """Base of the stored models. Unknown fields are ignored, not refused: NS8's tools and
    other versions of this agent write the same keys, and each writer sets only the fields
    it owns, so a field one does not know stays in Redis untouched."""

    model_config = ConfigDict(frozen=True, extra="ignore")


Record = TypeVar("Record", bound=BaseModel)


def describe(exc: ValidationError) -> str:
    """The first problem of a validation error in one line (field: message)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse_stored(model: type[Record], key: str, data: object) -> Record:
    """data (as read from key) as a model; StoredDataError naming key when it is not one."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise StoredDataError(key, describe(exc)) from None
