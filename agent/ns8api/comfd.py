"""Status, weight and progress sent to the agent on the step's AGENT_COMFD, and the
journald priority prefixes NS8 steps put on their stderr lines."""

from __future__ import annotations

import csv
import inspect
import io
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

SD_EMERG = "<0>"
SD_ALERT = "<1>"
SD_CRIT = "<2>"
SD_ERR = "<3>"
SD_WARNING = "<4>"
SD_NOTICE = "<5>"
SD_INFO = "<6>"
SD_DEBUG = "<7>"


def format_command(*fields: object) -> bytes:
    """One record as NS8 writes it: space-separated CSV, '"' quoting where needed, CRLF."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=" ", quotechar='"', lineterminator="\r\n").writerow(fields)
    return buffer.getvalue().encode()


def comfd() -> int:
    """The descriptor the agent reads commands on: int($AGENT_COMFD), else stderr."""
    value = os.environ.get("AGENT_COMFD")
    return int(value) if value else 2


def send_command(*fields: object) -> None:
    """Write one command record to the COMFD (never closing it)."""
    data = format_command(*fields)
    fd = comfd()
    while data:
        data = data[os.write(fd, data) :]


def set_status(value: str) -> None:
    """`set-status <value>`: the agent acts on `validation-failed` only."""
    send_command("set-status", value)


def set_progress(value: int) -> None:
    """`set-progress <value>`: this step's progress, 0..100."""
    send_command("set-progress", value)


def set_weight(step_name: str, weight: int) -> None:
    """`set-weight <step> <weight>`: how much one step of the action counts in its progress."""
    send_command("set-weight", step_name, weight)


def get_progress_callback(low: int, high: int) -> Callable[[int], None]:
    """f(p) for p in 0..100 sending set_progress(low + int((high-low)*p/100))."""
    assert low < high

    def callback(percent: int) -> None:
        set_progress(low + int((high - low) * percent / 100))

    return callback


def assert_exp(exp: Any, message: str = "Assertion failed") -> None:
    """If exp is falsy: print message and the caller's stack on stderr, exit 2."""
    if exp:
        return
    _fail(message, inspect.currentframe())


def _fail(message: str, frame: Any) -> NoReturn:
    print(message, file=sys.stderr)
    caller = frame.f_back if frame is not None else None
    traceback.print_stack(caller, file=sys.stderr)
    sys.exit(2)
