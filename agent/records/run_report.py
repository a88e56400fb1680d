"""One backup run as one message: what each module did, and the destination's free space."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from agent.records.backup_status import Outcome, RunSummary

Text = Annotated[str, StringConstraints(max_length=2000)]
Count = Annotated[int, Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModuleReport(_Frozen):
    module_id: Annotated[str, StringConstraints(max_length=64)]
    node: Annotated[int, Field(ge=0)]
    outcome: Literal["ok", "partial", "failed"]
    reason: Text = ""
    snapshot_id: Annotated[str, StringConstraints(max_length=64)] = ""
    total_size: Count = 0
    bytes_added: Count = 0
    snapshots_count: Count = 0


class NodeFailure(_Frozen):
    """A node whose run ended without a word about its modules (daemon gone, crash)."""

    node: Annotated[int, Field(ge=0)]
    error: Text


class RunReport(_Frozen):
    backup_id: Annotated[int, Field(ge=1)]
    name: Annotated[str, StringConstraints(max_length=256)]
    destination: Annotated[str, StringConstraints(max_length=256)] = ""
    free_bytes: Count | None = None
    modules: Annotated[list[ModuleReport], Field(max_length=10000)] = Field(default_factory=list)
    node_failures: Annotated[list[NodeFailure], Field(max_length=1000)] = Field(
        default_factory=list
    )

    @property
    def outcome(self) -> Outcome:
        if self.node_failures or any(m.outcome == "failed" for m in self.modules):
            return Outcome.FAILED
        if any(m.outcome == "partial" for m in self.modules):
            return Outcome.PARTIAL
        return Outcome.OK

    @property
    def event(self) -> str:
        return {Outcome.OK: "success", Outcome.PARTIAL: "partial", Outcome.FAILED: "failure"}[
            self.outcome
        ]


def from_summary(summary: RunSummary) -> RunReport:
    """A node's run as a report; modules satisfied by another run are that run's news."""
    return RunReport(
        backup_id=summary.backup_id,
        name=summary.name,
        destination=summary.destination,
        free_bytes=summary.free_bytes,
        modules=[
            ModuleReport(
                module_id=m.module_id,
                node=summary.node_id,
                outcome=m.outcome.value,
                reason=m.reason[:2000],
                snapshot_id=m.snapshot_id,
                total_size=m.total_size,
                bytes_added=m.bytes_added,
                snapshots_count=m.snapshots_count,
            )
            for m in summary.modules
            if not m.coalesced
        ],
    )


def merge(backup_id: int, name: str, parts: list[RunReport | NodeFailure]) -> RunReport:
    """The nodes' reports of one cluster run as one report."""
    reports = [p for p in parts if isinstance(p, RunReport)]
    free = [r.free_bytes for r in reports if r.free_bytes is not None]
    return RunReport(
        backup_id=backup_id,
        name=name,
        destination=next((r.destination for r in reports if r.destination), ""),
        free_bytes=min(free) if free else None,
        modules=[m for r in reports for m in r.modules],
        node_failures=[p for p in parts if isinstance(p, NodeFailure)],
    )


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def render(report: RunReport) -> tuple[str, str]:
    """(title, body) of the run's message, in plain text."""
    failed = sum(1 for m in report.modules if m.outcome == "failed") + len(report.node_failures)
    partial = sum(1 for m in report.modules if m.outcome == "partial")
    counts = f"{len(report.modules)} module(s)"
    if failed or partial:
        counts += f", {failed} failed, {partial} partial"
    title = f"Backup {report.backup_id} {report.name!r}: {report.outcome.value} ({counts})"
    lines = []
    for module in report.modules:
        line = (
            f"{module.module_id} (node {module.node}): {module.outcome}, "
            f"size {human_bytes(module.total_size)}, added {human_bytes(module.bytes_added)}, "
            f"{module.snapshots_count} snapshot(s)"
        )
        if module.reason:
            line += f" — {module.reason}"
        lines.append(line)
    lines += [f"node {f.node}: failed — {f.error}" for f in report.node_failures]
    if report.destination:
        free = f", {human_bytes(report.free_bytes)} free" if report.free_bytes is not None else ""
        lines.append(f"destination: {report.destination}{free}")
    return title, "\n".join(lines) or "no module of this backup runs on the nodes that ran it"


def as_task_data(event: str, report: RunReport) -> dict[str, Any]:
    return {"event": event, "report": report.model_dump()}


def ping_task_data(backup_id: int, ping: str) -> dict[str, Any]:
    return {"event": "ping", "backup_id": backup_id, "ping": ping}


class SendNotificationRequest(_Frozen):
    """Input of the internal cluster action send-notification: a run's report to the
    targets, or one ping to a backup's ping_url."""

    event: Literal["failure", "partial", "success", "overdue", "report", "ping"]
    report: RunReport | None = None
    backup_id: Annotated[int, Field(ge=1)] | None = None
    ping: Literal["start", "success", "fail"] | None = None
    title: Annotated[str, StringConstraints(max_length=500)] | None = None
    body: Annotated[str, StringConstraints(max_length=20000)] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SendNotificationRequest:
        if self.event == "ping":
            if self.ping is None or self.backup_id is None:
                raise ValueError("a ping needs backup_id and ping")
        elif (self.event == "overdue" or self.report is None) and (
            self.title is None or self.body is None or self.backup_id is None
        ):
            # overdue, and a failed restore drill: a message that is not a run's report
            raise ValueError("a message without a report needs backup_id, title and body")
        return self
