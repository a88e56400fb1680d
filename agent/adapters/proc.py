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


# Variables that point a process at root's podman store or root's runtime files: a process
# run as a module user gets its own (RunAs.environment), never these.
_ROOT_ONLY_VARIABLES = frozenset(
    {
        *("CONTAINERS_STORAGE_CONF", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME"),
        *("XDG_CACHE_HOME", "XDG_STATE_HOME", "MAIL"),
    }
)


@dataclass(frozen=True)
class RunAs:
    """A Unix user (a rootless module's) to run a process as: the one place where an argv
    becomes "run as that user" (setpriv: no shell, no PAM, no session) with its HOME,
    XDG_RUNTIME_DIR and podman settings (its own default store)."""

    name: str
    uid: int
    gid: int
    home: str
    containers_conf: str  # CONTAINERS_CONF for the user's podman (engine settings only)

    @property
    def runtime_dir(self) -> str:
        return f"/run/user/{self.uid}"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """argv run as the user, with the user's groups and no capability left."""
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--init-groups",
            "--",
            *argv,
        ]

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """env with the user's identity and podman settings instead of root's."""
        own = {k: v for k, v in env.items() if k not in _ROOT_ONLY_VARIABLES}
        own.update(
            HOME=self.home,
            USER=self.name,
            LOGNAME=self.name,
            XDG_RUNTIME_DIR=self.runtime_dir,
            CONTAINERS_CONF=self.containers_conf,
        )
        return own


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
    stdin: int | IO[bytes] | None = None,
    umask: int = -1,
    run_as: RunAs | None = None,
) -> Result:
    """Run argv to completion; env adds to (not replaces) this process's environment;
    umask, when given, is the child's (-1: this process's); run_as: as that user."""
    full_env = merged_env(env)
    if run_as is not None:
        argv, full_env = run_as.argv(argv), run_as.environment(full_env)
        cwd = run_as.home if cwd is None else cwd  # not a directory of root's
    log.debug("run %s", shlex.join(argv))
    audit(argv)
    started = time.monotonic()
    completed = subprocess.run(
        list(argv),
        input=input,
        stdin=stdin,
        stdout=stdout,
        stderr=PIPE,
        env=full_env,
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
    run_as: RunAs | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start argv with exactly env, in its own session (so its whole group can be
    signalled); run_as: as that user (setpriv execs it: same pid, same group).
    die_with_parent: SIGTERM when the thread that started it ends (setpriv's pdeathsig):
    a child of a long-lived thread that must not outlive its process, even a SIGKILLed one."""
    full_env = dict(env)
    if run_as is not None:
        argv, full_env = run_as.argv(argv), run_as.environment(full_env)
        cwd = run_as.home if cwd is None else cwd
    if die_with_parent:
        argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
    log.debug("spawn %s", shlex.join(argv))
    audit(argv)
    return subprocess.Popen(
        list(argv),
        env=full_env,
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


def exec_replace(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, run_as: RunAs | None = None
) -> None:
    """Replace this process with argv (runagent); run_as: as that user."""
    if run_as is not None:
        argv, env = run_as.argv(argv), run_as.environment(env)
    audit(argv)
    os.chdir(cwd)
    os.execvpe(argv[0], list(argv), dict(env))
