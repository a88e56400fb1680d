"""Validated inputs of issue #18 (restore confidence): a backup's check and drill
settings, run-check, and list-backups' refresh; models.py takes them from here."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)


class Request(BaseModel):
    """Base of every action input (models.py, which imports this module, re-exports it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


CalendarSpec = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\n\r\t\x00]+$")
]
# restic's --read-data-subset: "n/t" (rolled: run k reads part (k mod t)+1 of t) or "x%".
DataSubset = Annotated[
    str,
    StringConstraints(
        max_length=16, pattern=r"^([1-9][0-9]{0,5}/[1-9][0-9]{0,5}|[0-9]{1,3}(\.[0-9]{1,3})?%)$"
    ),
]


class CheckSettings(Request):
    """A scheduled `restic check` of each module repository of the backup."""

    schedule: CalendarSpec
    read_data_subset: DataSubset = "1/1"

    @model_validator(mode="after")
    def _share(self) -> CheckSettings:
        share = self.read_data_subset
        if share.endswith("%"):
            if not 0 < float(share[:-1]) <= 100:
                raise ValueError("read_data_subset: a percentage above 0 and at most 100")
        else:
            part, total = (int(n) for n in share.split("/"))
            if part > total:
                raise ValueError("read_data_subset: n/t needs n <= t")
        return self


class DrillSettings(Request):
    """A scheduled restore drill of the backup's modules (run-drill), on node if given."""

    schedule: CalendarSpec
    node: Annotated[int, Field(ge=1, le=100000)] | None = None


class RunCheckRequest(Request):
    """Check the backup's module repositories now."""

    id: int = Field(ge=1, le=2**31)


class NodeRunCheckRequest(RunCheckRequest):
    """notify=false: the cluster run that started this node run sends one report for all."""

    notify: StrictBool = True


class ListBackupsRequest(Request):
    """refresh: read each module's newest snapshot from its repositories."""

    # api-cli sends null when given no --data: the schema must take it, as before.
    model_config = ConfigDict(json_schema_extra={"type": ["object", "null"]})
    refresh: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: object) -> object:
        return {} if data is None else data
