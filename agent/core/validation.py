"""JSON Schema checks that answer with NS8-style error lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from agent.core.errors import ConfigError, ValidationFailed
from agent.core.masking import MASK, is_secret, mask_secrets

# jsonschema validator names → the gojsonschema error types NS8 clients know.
_ERROR_TYPES = {
    "type": "invalid_type",
    "required": "required",
    "minLength": "string_gte",
    "maxLength": "string_lte",
    "minimum": "number_gte",
    "maximum": "number_lte",
    "exclusiveMinimum": "number_gt",
    "exclusiveMaximum": "number_lt",
    "pattern": "pattern",
    "enum": "enum",
    "const": "const",
    "format": "format",
    "additionalProperties": "additional_property_not_allowed",
    "minItems": "array_min_items",
    "maxItems": "array_max_items",
    "uniqueItems": "unique",
    "anyOf": "number_any_of",
    "oneOf": "number_one_of",
}


def _error_row(error: ValidationError) -> dict[str, Any]:
    path = [str(p) for p in error.absolute_path]
    value: Any = error.instance
    if error.validator == "required":
        # jsonschema reports the parent object; NS8 names the missing property.
        missing = str(error.message).split("'")[1] if "'" in error.message else ""
        path = [*path, missing]
        value = None
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        extras = sorted(set(error.instance) - set(schema.get("properties", {})))
        if extras:
            path = [*path, extras[0]]
            value = error.instance.get(extras[0])
    field = ".".join(path)
    parameter = path[-1] if path else "(root)"
    error_type = _ERROR_TYPES.get(str(error.validator), str(error.validator))
    if isinstance(value, str) and len(value) > 256:
        value = value[:256] + "…"
    # Rejected secrets must not come back in the task output (it is stored and shown).
    value = MASK if is_secret(parameter, value) and value not in ("", None) else mask_secrets(value)
    return {
        "field": field,
        "parameter": parameter,
        "value": value,
        "error": f"{parameter}_{error_type}",
    }


def load_schema(path: Path) -> dict[str, Any]:
    try:
        schema = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"bad schema {path}: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"bad schema {path}: not an object")
    return schema


def validate(data: Any, schema: dict[str, Any]) -> None:
    """Raise ValidationFailed (exit 10) listing every way data breaks schema."""
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ValidationFailed([_error_row(e) for e in errors])
