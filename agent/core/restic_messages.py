"""restic's --json output, parsed once: each line's message by its `message_type`, and
the JSON documents of `forget` and `snapshots`.

restic writes JSON with its keys in struct order, but nothing here depends on order or
spacing. A message of an unexpected shape (a field missing or of another type) is read
with that field empty, never raised on: the item names in it come from a snapshot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def parse_json_lines(text: str) -> Iterator[dict[str, Any]]:
    """restic --json prints one object a line; other lines (warnings) are skipped."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    return value if isinstance(value, str) else ""


def _number(fields: Mapping[str, Any], key: str) -> float:
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return value


@dataclass(frozen=True)
class Status:
    """Progress of a backup or a restore."""

    percent_done: float  # 0 to 1
    fields: Mapping[str, Any]

    @property
    def percent(self) -> int:
        return int(self.percent_done * 100)


@dataclass(frozen=True)
class Summary:
    """The last message of a backup (snapshot_id, total_bytes_processed, …) or a restore
    (total_files, files_restored, …); fields holds it whole."""

    fields: Mapping[str, Any]

    def count(self, key: str) -> int:
        return int(_number(self.fields, key))

    def text(self, key: str) -> str:
        return _text(self.fields, key)


@dataclass(frozen=True)
class ItemError:
    """A file restic could not read (backup) or write (restore); the run goes on."""

    item: str
    message: str
    during: str


@dataclass(frozen=True)
class VerboseStatus:
    """One item a restore (with -vv) restored, would restore, or left alone."""

    action: str
    item: str


@dataclass(frozen=True)
class ExitError:
    """The fatal error restic ended with."""

    code: int
    message: str


@dataclass(frozen=True)
class Initialized:
    """`init`: the new repository's config id."""

    id: str


@dataclass(frozen=True)
class Other:
    """Any other message: `ls` gives 'snapshot' and 'node', older restic none at all."""

    message_type: str
    fields: Mapping[str, Any]


Message = Status | Summary | ItemError | VerboseStatus | ExitError | Initialized | Other


def _item_error(fields: Mapping[str, Any]) -> ItemError:
    error = fields.get("error")
    message = _text(error, "message") if isinstance(error, dict) else ""
    return ItemError(_text(fields, "item"), message, _text(fields, "during"))


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Message]] = {
    "status": lambda f: Status(float(_number(f, "percent_done")), f),
    "summary": Summary,
    "error": _item_error,
    "verbose_status": lambda f: VerboseStatus(_text(f, "action"), _text(f, "item")),
    "exit_error": lambda f: ExitError(int(_number(f, "code")), _text(f, "message")),
    "initialized": lambda f: Initialized(_text(f, "id")),
}


def parse_message(fields: Mapping[str, Any]) -> Message:
    """The typed message of one JSON object restic printed."""
    kind = _text(fields, "message_type")
    parse = _PARSERS.get(kind)
    return parse(fields) if parse is not None else Other(kind, fields)


def parse_messages(text: str) -> Iterator[Message]:
    """Every message in restic's --json output, in order."""
    for fields in parse_json_lines(text):
        yield parse_message(fields)


def parse_init_id(init_output: str) -> str:
    """The new repository's config id from `init --json` ('' when it is not there)."""
    for message in parse_messages(init_output):
        if isinstance(message, Initialized):
            return message.id
    return ""


def parse_forget(forget_output: str) -> tuple[int, list[str]]:
    """(snapshots kept, ids removed), from `forget --json` (one JSON array line among
    prune's text)."""
    for line in forget_output.splitlines():
        if line.startswith("["):
            try:
                groups = json.loads(line)
            except ValueError:
                continue
            groups = [group for group in groups if isinstance(group, dict)]
            kept = sum(len(group.get("keep") or []) for group in groups)
            removed = [
                str(item.get("id", ""))
                for group in groups
                for item in group.get("remove") or []
                if isinstance(item, dict) and item.get("id")
            ]
            return kept, removed
    return 0, []


def parse_snapshot_ids(snapshots_output: str) -> list[str] | None:
    """The ids `snapshots --json` listed; None when the output is no such list."""
    try:
        listed = json.loads(snapshots_output)
    except ValueError:
        return None
    if not isinstance(listed, list):
        return None
    return [str(item.get("id", "")) for item in listed if isinstance(item, dict)]


_NANOSECONDS = re.compile(r"(\.\d{6})\d+")


def parse_time(text: str) -> float:
    """restic's RFC 3339 time (nanoseconds, Z or an offset) → seconds since the epoch;
    ValueError for anything else."""
    moment = datetime.fromisoformat(_NANOSECONDS.sub(r"\1", text.strip()).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"no time zone in {text!r}")
    return moment.timestamp()


@dataclass(frozen=True)
class CheckVerdict:
    """What `check --json` found: its summary's error count and damaged packs, and the
    error messages it printed (restic's own words, none from the data)."""

    summarized: bool  # False: no summary (restic ended before the check's end)
    num_errors: int
    broken_packs: tuple[str, ...]
    errors: tuple[str, ...]


def parse_check(stdout: str, stderr: str) -> CheckVerdict:
    """The verdict of `check --json` from its two outputs."""
    summarized, count = False, 0
    broken: tuple[str, ...] = ()
    for fields in parse_json_lines(stdout):
        if _text(fields, "message_type") == "summary":
            summarized = True
            count = int(_number(fields, "num_errors"))
            packs = fields.get("broken_packs")
            if isinstance(packs, list):
                broken = tuple(str(p) for p in packs if isinstance(p, str))
    errors = []
    for fields in parse_json_lines(stderr):
        if _text(fields, "message_type") in ("error", "exit_error"):
            message = _text(fields, "message").strip()
            if message:
                errors.append(message[:500])
    return CheckVerdict(summarized, count, broken, tuple(errors))
