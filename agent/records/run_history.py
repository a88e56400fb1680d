"""Each module's last runs, kept by the cluster: what happened, and the run's log lines."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

from agent.adapters.redis_api import Redis
from agent.core import redis_keys
from agent.core.masking import redact_text
from agent.records.backup_status import ModuleStatus
from agent.records.repository_checks import CheckRecord

HISTORY_LENGTH = 200  # runs kept per module
LOG_LINES = 200  # lines kept per run
LOG_LINE_CHARS = 500


@dataclass(frozen=True)
class RunRecord:
    backup_id: int
    node: int
    start: int
    end: int
    outcome: str
    reason: str
    snapshot_id: str
    total_size: int
    bytes_added: int
    total_file_count: int
    snapshots_count: int
    unreadable: list[str]
    log: list[str]
    kind: str = "backup"  # or "check" (an integrity check) or "drill" (a restore drill:
    # total_size and total_file_count are what was restored, restore_seconds the RTO)
    restore_seconds: float | None = None

    @property
    def duration(self) -> int:
        return max(0, self.end - self.start)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def listing(self) -> dict[str, Any]:
        return {**asdict(self), "duration": self.duration}


def make_record(
    backup_id: int, node: int, status: ModuleStatus, log: list[str], secrets: list[str]
) -> RunRecord:
    """A status as a history entry, every secret value masked out of its texts."""

    def clean(text: str) -> str:
        return redact_text(text, secrets)

    return RunRecord(
        backup_id=backup_id,
        node=node,
        start=status.start,
        end=status.end,
        outcome=status.outcome.value,
        reason=clean(status.reason)[:2000],
        snapshot_id=status.snapshot_id,
        total_size=status.total_size,
        bytes_added=status.bytes_added,
        total_file_count=status.total_file_count,
        snapshots_count=status.snapshots_count,
        unreadable=[clean(u)[:LOG_LINE_CHARS] for u in status.unreadable[:50]],
        log=[clean(line)[:LOG_LINE_CHARS] for line in log[-LOG_LINES:]],
    )


def check_record(record: CheckRecord, log: list[str], secrets: list[str]) -> RunRecord:
    """A repository check as a history entry, every secret value masked out of its texts."""

    def clean(text: str) -> str:
        return redact_text(text, secrets)

    return RunRecord(
        backup_id=record.backup_id,
        node=record.node,
        start=record.start,
        end=record.end,
        outcome=record.outcome.value,
        reason=clean(record.reason)[:2000],
        snapshot_id="",
        total_size=0,
        bytes_added=0,
        total_file_count=0,
        snapshots_count=0,
        unreadable=[clean(e)[:LOG_LINE_CHARS] for e in record.errors[:50]],
        log=[clean(line)[:LOG_LINE_CHARS] for line in log[-LOG_LINES:]],
        kind="check",
    )


def append(redis: Redis, module_id: str, record: RunRecord) -> None:
    key = redis_keys.backup_history(module_id)
    with redis.pipeline(transaction=True) as pipe:
        pipe.lpush(key, record.to_json())
        pipe.ltrim(key, 0, HISTORY_LENGTH - 1)
        pipe.execute()


def read(redis: Redis, module_id: str, limit: int) -> list[dict[str, Any]]:
    """Newest first; an entry that does not parse is shown as such, never dropped silently."""
    rows: list[dict[str, Any]] = []
    for text in redis.lrange(redis_keys.backup_history(module_id), 0, max(0, limit - 1)):
        try:
            rows.append(RunRecord(**json.loads(text)).listing())
        except (ValueError, TypeError):
            rows.append({"malformed": text[:200]})
    return rows


class LogCollector(logging.Handler):
    """Keeps the log lines that one thread writes while it backs up one module."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and len(self.lines) < LOG_LINES * 2:
            self.lines.append(self.format(record))

    def __enter__(self) -> LogCollector:
        logger = logging.getLogger("agent")
        # Records at INFO must be made for us; the console's handlers keep their own level.
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
            for handler in logging.getLogger().handlers:
                if handler.level == logging.NOTSET:
                    handler.setLevel(logging.getLogger().getEffectiveLevel())
        logger.addHandler(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        logging.getLogger("agent").removeHandler(self)
