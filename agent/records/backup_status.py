"""Backup outcomes, as stored in Redis, exposed to Prometheus and written beside a repository."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.core.errors import StoredDataError
from agent.records.statuses import Outcome as Outcome  # re-exported: its old home
from agent.records.statuses import StatusRecord

log = logging.getLogger("agent.backup_status")


@dataclass(frozen=True)
class ModuleStatus:
    """One module's last backup run: the value of node/<N>/backup_status/<id> [module]."""

    module_id: str
    outcome: Outcome
    start: int
    end: int
    reason: str = ""
    snapshot_id: str = ""
    total_size: int = 0
    total_file_count: int = 0
    snapshots_count: int = 0
    bytes_added: int = 0
    errors: int = 0
    unreadable: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # include/exclude lines that named more than the module
    last_success: int = 0  # end of the last ok/partial run, carried over failures
    coalesced: bool = False  # satisfied by a run of the same backup that finished meanwhile
    mirrored: tuple[str, ...] = ()  # mirror destinations that got this run's snapshot
    finished: float = field(default_factory=time.time)  # precise end, for coalescing

    @property
    def partial(self) -> bool:
        return self.outcome is Outcome.PARTIAL

    def to_record(self) -> str:
        record = asdict(self)
        del record["module_id"]
        return StatusRecord(**record).to_json()

    @classmethod
    def parse_record(cls, key: str, module_id: str, text: str) -> ModuleStatus:
        """The status stored at key for module_id; StoredDataError naming key if malformed."""
        record = StatusRecord.from_json(f"{key} [{module_id}]", text)
        return cls(
            module_id=module_id,
            outcome=record.resolved_outcome,
            start=record.start,
            end=record.end,
            reason=record.reason,
            snapshot_id=record.snapshot_id,
            total_size=record.total_size,
            total_file_count=record.total_file_count,
            snapshots_count=record.snapshots_count,
            bytes_added=record.bytes_added,
            errors=record.errors,
            unreadable=record.unreadable,
            ignored=record.ignored,
            last_success=record.last_success,
            mirrored=record.mirrored,
            finished=record.finished if record.finished is not None else float(record.end),
        )

    @classmethod
    def from_record(
        cls, module_id: str, text: str, key: str = "backup status"
    ) -> ModuleStatus | None:
        """parse_record for the backup path: a malformed previous status is logged and the
        run starts afresh, as if there were none; it must not stop the backup."""
        try:
            return cls.parse_record(key, module_id, text)
        except StoredDataError as exc:
            log.warning("%s", exc)
            return None


def overall(outcomes: list[Outcome]) -> Outcome:
    if Outcome.FAILED in outcomes:
        return Outcome.FAILED
    if Outcome.PARTIAL in outcomes:
        return Outcome.PARTIAL
    return Outcome.OK


@dataclass(frozen=True)
class RunSummary:
    backup_id: int
    name: str
    node_id: int
    modules: list[ModuleStatus] = field(default_factory=list)
    destination: str = ""  # the destination's name, for reports
    free_bytes: int | None = None  # free space where the storage tells it (local disks)

    @property
    def outcome(self) -> Outcome:
        return overall([m.outcome for m in self.modules])

    def to_output(self) -> dict[str, Any]:
        return {
            "id": self.backup_id,
            "node": self.node_id,
            "outcome": self.outcome.value,
            "modules": {m.module_id: json.loads(m.to_record()) for m in self.modules},
            "destination": self.destination,
            "free_bytes": self.free_bytes,
        }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(summary: RunSummary) -> str:
    """node_exporter textfile for one backup on one node (gauges, Prometheus naming)."""
    ident = f'id="{summary.backup_id}",name="{_label(summary.name)}"'
    lines = [
        "# HELP node_backup_status Status of the backup (0 = failure, 1 = success or partial)",
        "# TYPE node_backup_status gauge",
        f"node_backup_status{{{ident}}} {0 if summary.outcome is Outcome.FAILED else 1}",
        "# HELP node_backup_partial 1 when some files could not be read in the last run",
        "# TYPE node_backup_partial gauge",
        f"node_backup_partial{{{ident}}} {1 if summary.outcome is Outcome.PARTIAL else 0}",
    ]
    series: list[tuple[str, str, Callable[[ModuleStatus], int]]] = [
        (
            "last_success_timestamp_seconds",
            "End of the last successful backup of the module",
            lambda m: m.last_success,
        ),
        (
            "duration_seconds",
            "Duration of the last backup run of the module",
            lambda m: max(0, m.end - m.start),
        ),
        ("added_bytes", "Bytes added to the repository by the last run", lambda m: m.bytes_added),
        ("size_bytes", "Total size of the files in the last snapshot", lambda m: m.total_size),
        ("files", "Number of files in the last snapshot", lambda m: m.total_file_count),
        (
            "snapshots",
            "Snapshots kept for this backup in the repository",
            lambda m: m.snapshots_count,
        ),
        ("errors", "Errors in the last run (unreadable files, failed steps)", lambda m: m.errors),
    ]
    for suffix, help_text, value in series:
        lines += [f"# HELP node_backup_{suffix} {help_text}", f"# TYPE node_backup_{suffix} gauge"]
        for module in summary.modules:
            labels = f'{ident},module="{_label(module.module_id)}"'
            lines.append(f"node_backup_{suffix}{{{labels}}} {value(module)}")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def metadata(
    module: ModuleStatus,
    *,
    module_uuid: str,
    label: str,
    node_id: int,
    node_fqdn: str,
    cluster_uuid: str,
) -> dict[str, Any]:
    """The <repo>.json written next to each repository (NS8 fields plus outcome)."""
    return {
        "module_id": module.module_id,
        "module_ui_name": label,
        "node": node_id,
        "node_fqdn": node_fqdn,
        "cluster_uuid": cluster_uuid,
        "uuid": module_uuid,
        "timestamp": module.end,
        "success": module.outcome is not Outcome.FAILED,
        "outcome": module.outcome.value,
    }
