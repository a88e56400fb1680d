"""The only module that starts processes: argv in, result out, secrets kept off logs."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.core.errors import CommandFailed

log = logging.getLogger(__name__)

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
Popen = subprocess.Popen
TimeoutExpired = subprocess.TimeoutExpired
CompletedProcess = subprocess.CompletedProcess
CalledProcessError = subprocess.CalledProcessError


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode(errors="replace")


def last_line(text: str) -> str:
    """The last non-blank line of a process's (or a task's) error output, for a one-line
    message."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def audit(argv: Sequence[str]) -> None:
    """Append argv to $AGENT_ARGV_LOG when set: tests prove no secret reaches a command line."""
    path = os.environ.get("AGENT_ARGV_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(list(argv)) + "\n")


def merged_env(
    extra: Mapping[str, str] | None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | str | None = None,
    timeout: float | None = None,
    check: bool = False,
    stdout: int | IO[bytes] | None = PIPE,
    umask: int = -1,
) -> Result:
    """Run argv to completion; env adds to (not replaces) this process's environment;
    umask, when given, is the child's (-1: this process's)."""
    log.debug("run %s", shlex.join(argv))
    audit(argv)
    started = time.monotonic()
    completed = subprocess.run(
        list(argv),
        input=input,
        stdout=stdout,
        stderr=PIPE,
        env=merged_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
        umask=umask,
    )
    result = Result(tuple(argv), completed.returncode, completed.stdout or b"", completed.stderr)
    log.debug("%s: exit %d after %.3fs", argv[0], result.returncode, time.monotonic() - started)
    if check and result.returncode != 0:
        raise CommandFailed(argv[0], result.returncode, result.error_text)
    return result


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    stdin: int | IO[bytes] | None = PIPE,
    stdout: int | IO[bytes] | None = PIPE,
    stderr: int | IO[bytes] | None = PIPE,
    pass_fds: Sequence[int] = (),
    new_session: bool = True,
    umask: int = -1,
) -> subprocess.Popen[bytes]:
    """Start argv with exactly env, in its own session (so its whole group can be signalled)."""
    log.debug("spawn %s", shlex.join(argv))
    audit(argv)
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        start_new_session=new_session,
        umask=umask,
    )


def module_popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen with the caller's own keywords: NS8's module-author API (agent.run_helper,
    agent.run_restic) hands its callers' Popen options through unchanged."""
    log.debug("spawn %s", shlex.join(argv))
    audit(argv)
    return subprocess.Popen(list(argv), **kwargs)


def module_run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """subprocess.run with the caller's own keywords (see module_popen)."""
    log.debug("run %s", shlex.join(argv))
    audit(argv)
    return subprocess.run(list(argv), **kwargs)


def exec_replace(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
    """Replace this process with argv (runagent)."""
    audit(argv)
    os.chdir(cwd)
    os.execvpe(argv[0], list(argv), dict(env))
