"""Runs one task's steps as child processes, following the NS8 action protocol."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.adapters import proc
from agent.core import filemodes
from agent.core.errors import ConfigError, ValidationFailed
from agent.core.masking import mask_secrets, redact_text, secret_values
from agent.core.validation import load_schema, validate
from agent.runtime import warmsteps
from agent.runtime.actiondirs import Action
from agent.runtime.warmsteps import WarmChild, WarmSteps

log = logging.getLogger("agent.task")

ProgressCallback = Callable[[str, int], None]
StepProcess = proc.Popen[bytes] | WarmChild
HEARTBEAT_SECONDS = 5.0


# bash moves the descriptor to 3, closes the original and becomes the step (same pid,
# session and group): a few milliseconds, and only when the pipe did not land on 3.
_MOVE_COMFD = 'n=$1; shift; exec 3>&"$n" {n}>&-; exec "$@"'


def at_step_comfd(path: Path, fd: int) -> list[str]:
    """argv that runs the step at path with descriptor fd as its descriptor 3."""
    return ["/bin/bash", "-c", _MOVE_COMFD, "agent-step", str(fd), str(path)]


@dataclass(frozen=True)
class TaskOutcome:
    output: str
    error: str
    exit_code: int
    status: str  # completed | aborted | validation-failed


class StepProgress:
    """Overall progress = Σ(weight × progress) / Σ(100 × weight), per the NS8 rule."""

    def __init__(self, step_names: list[str]) -> None:
        self.weights = {name: 1 for name in step_names}
        self.done: dict[str, int] = {name: 0 for name in step_names}

    def set_weight(self, step: str, weight: int) -> None:
        if step in self.weights:
            self.weights[step] = max(0, weight)

    def update(self, step: str, percent: int) -> None:
        self.done[step] = max(0, min(100, percent))

    @property
    def percent(self) -> int:
        total = sum(100 * w for w in self.weights.values())
        if total == 0:
            return 0
        return int(sum(self.weights[s] * self.done[s] for s in self.weights) * 100 / total)


class TaskRun:
    """A task of one agent being run; cancel() may be called from another thread."""

    def __init__(
        self,
        agent_id: str,
        task_id: str,
        action: Action,
        data: Any,
        env: Callable[[], dict[str, str]],
        cwd: Path,
        on_progress: ProgressCallback,
        warm: WarmSteps | None = None,
        run_as: proc.RunAs | None = None,
        base_dir: Path | None = None,
    ) -> None:
        """run_as: the user a rootless module's own steps run as; the agent's base steps
        (those under base_dir, root's files) run as root and start restic as that user."""
        self.run_as = run_as
        self.base_dir = base_dir
        self.agent_id = agent_id
        self.task_id = task_id
        self.action = action
        self.data = data
        # Built anew before each step: NS8 reads the env files again, so a set_env in
        # one step reaches the next.
        self.env = env
        self.cwd = cwd
        self.on_progress = on_progress
        self.warm = warm
        # What the task was given as a secret never comes back in its output, error or log.
        self.secrets = secret_values(data)
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._child: StepProcess | None = None
        self._reported = -1
        # A step ended by a signal (SIGKILL, the OOM killer) may have left its children
        # working: the daemon stops them before it records the task's end.
        self.step_killed = False

    def _report(self, percent: int, *, always: bool = True) -> None:
        """Progress to on_progress; a step's set-progress only when the figure changed
        (each publish wakes every process waiting on the task)."""
        if always or percent != self._reported:
            self._reported = percent
            self.on_progress("running", percent)

    def cancel(self) -> None:
        """SIGTERM to the running step's whole process group; no later step starts."""
        self.cancelled.set()
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    def run(self) -> TaskOutcome:
        try:
            schema_path = self.action.input_schema
            if schema_path is not None:
                validate(self.data, load_schema(schema_path))
        except ValidationFailed as exc:
            rows = redact_text(json.dumps(exc.errors), self.secrets)
            return TaskOutcome(rows, "", exc.exit_code, "validation-failed")
        except ConfigError as exc:
            return TaskOutcome("", f"{exc}\n", 1, "aborted")

        steps = self.action.steps
        progress = StepProgress([name for name, _ in steps])
        stdin_bytes = json.dumps(self.data).encode()
        output: list[bytes] = []
        errors: list[bytes] = []
        self._report(0)
        for name, path in steps:
            if self.cancelled.is_set():
                errors.append(b"task cancelled\n")
                return self._outcome(output, errors, 1, "aborted")
            code, validation_failed = self._run_step(
                name, path, stdin_bytes, progress, output, errors
            )
            if validation_failed:
                return self._outcome(output, errors, code or 10, "validation-failed")
            if code != 0:
                if self.cancelled.is_set():
                    errors.append(b"task cancelled\n")
                return self._outcome(output, errors, code, "aborted")
            progress.update(name, 100)
            self._report(progress.percent)
        return self._outcome(output, errors, 0, "completed")

    def _outcome(
        self, output: list[bytes], errors: list[bytes], code: int, status: str
    ) -> TaskOutcome:
        return TaskOutcome(
            redact_text(b"".join(output).decode(errors="replace"), self.secrets),
            redact_text(b"".join(errors).decode(errors="replace"), self.secrets),
            code,
            status,
        )

    def _run_step(
        self,
        name: str,
        path: Path,
        stdin_bytes: bytes,
        progress: StepProgress,
        output: list[bytes],
        errors: list[bytes],
    ) -> tuple[int, bool]:
        com_read, com_write = os.pipe()
        env = dict(self.env(), AGENT_COMFD=str(com_write), AGENT_TASK_STEP=name)
        try:
            child = self._start(path, env, com_write)
        except OSError as exc:
            os.close(com_read)
            errors.append(f"cannot run step {name}: {exc}\n".encode())
            return 1, False
        finally:
            os.close(com_write)  # the child holds its own copy
        with self._lock:
            self._child = child
        if self.cancelled.is_set():
            self.cancel()
        writer = threading.Thread(target=_feed_stdin, args=(child, stdin_bytes), daemon=True)
        writer.start()
        validation_failed = self._pump(child, com_read, name, progress, output, errors)
        code = child.wait()
        self.step_killed = self.step_killed or code < 0
        writer.join(timeout=5)
        with self._lock:
            self._child = None
        if validation_failed and code == 0:
            code = 10
        return code, validation_failed

    def _start(self, path: Path, env: dict[str, str], com_write: int) -> StepProcess:
        """Fork a Python step from the warm helper when it can; start it cold otherwise."""
        run_as = self.run_as
        if run_as is not None and self.base_dir is not None and path.is_relative_to(self.base_dir):
            run_as = None
        if run_as is None and self.warm is not None and warmsteps.runs_warm(path, env):
            proc.audit([str(path)])
            child = self.warm.spawn(path, env, self.cwd, com_write)
            if child is not None:
                return child
        if com_write != warmsteps.COMFD:
            # NS8's agent gives every step COMFD 3; /bin/sh cannot write above 9 at all.
            argv = at_step_comfd(path, com_write)
            env = dict(env, AGENT_COMFD=str(warmsteps.COMFD))
        else:
            argv = [str(path)]
        return proc.spawn(
            argv,
            env=env,
            cwd=self.cwd,
            pass_fds=[com_write],
            umask=filemodes.STEP_UMASK,
            run_as=run_as,
        )

    def _pump(
        self,
        child: StepProcess,
        com_read: int,
        step: str,
        progress: StepProgress,
        output: list[bytes],
        errors: list[bytes],
    ) -> bool:
        """Collect stdout, stderr and COMFD commands until all three are closed."""
        assert child.stdout is not None and child.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(child.stdout, selectors.EVENT_READ, "out")
        selector.register(child.stderr, selectors.EVENT_READ, "err")
        com = os.fdopen(com_read, "rb", buffering=0)
        selector.register(com, selectors.EVENT_READ, "com")
        pending_err = b""
        pending_com = b""
        validation_failed = False
        open_streams = 3
        while open_streams:
            events = selector.select(timeout=HEARTBEAT_SECONDS)
            if not events:
                self._report(progress.percent)  # a heartbeat, changed or not
                continue
            for key, _ in events:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                if key.data == "out":
                    output.append(chunk)
                elif key.data == "err":
                    errors.append(chunk)
                    pending_err += chunk
                    *lines, pending_err = pending_err.split(b"\n")
                    for line in lines:
                        self._log_stderr(step, line)
                else:
                    pending_com += chunk
                    *lines, pending_com = pending_com.split(b"\n")
                    for line in lines:
                        if self._command(line.decode(errors="replace"), step, progress):
                            validation_failed = True
        if pending_err:
            self._log_stderr(step, pending_err)
        selector.close()
        com.close()
        return validation_failed

    def _log_stderr(self, step: str, line: bytes) -> None:
        text = redact_text(line.decode(errors="replace"), self.secrets)
        log.warning("%s/%s %s: %s", self.agent_id, self.task_id, step, text)

    def _command(self, line: str, step: str, progress: StepProgress) -> bool:
        """Apply one COMFD command; True when it marks the task validation-failed."""
        words = line.replace(",", " ").split()
        if not words:
            return False
        if words[0] == "set-status" and words[1:2] == ["validation-failed"]:
            return True
        try:
            if words[0] == "set-progress" and len(words) == 2:
                progress.update(step, int(float(words[1])))
                self._report(progress.percent, always=False)
            elif words[0] == "set-weight" and len(words) == 3:
                progress.set_weight(words[1], int(words[2]))
        except ValueError:
            log.warning("%s/%s %s: bad COMFD command %r", self.agent_id, self.task_id, step, line)
        return False


def _feed_stdin(child: StepProcess, data: bytes) -> None:
    assert child.stdin is not None
    try:
        child.stdin.write(data)
    except (BrokenPipeError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            child.stdin.close()


def masked_context(task: dict[str, Any]) -> str:
    """The task as stored in task/…/context: secrets in data replaced."""
    return json.dumps(mask_secrets(task))
