"""Validated inputs of the actions; their JSON schemas are the validate-input.json files."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ModuleId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*[0-9]+$", max_length=64)]
Uuid = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
]
ImageUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"),
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AddModuleRequest(Request):
    image: ImageUrl
    node: int = Field(ge=1)
    module_uuid: Uuid | None = None


class NodeAddModuleRequest(Request):
    module_id: ModuleId
    module_uuid: Uuid
    image_url: ImageUrl


class RemoveModuleRequest(Request):
    module_id: ModuleId
    preserve_data: bool = False


# Every action whose validate-input.json is generated from a model: path → model.
SCHEMAS: dict[str, type[Request]] = {
    "actions/cluster/add-module/validate-input.json": AddModuleRequest,
    "actions/cluster/remove-module/validate-input.json": RemoveModuleRequest,
    "actions/node/add-module/validate-input.json": NodeAddModuleRequest,
    "actions/node/remove-module/validate-input.json": RemoveModuleRequest,
}
