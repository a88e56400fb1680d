"""A module's backup hooks (module-dump-state, module-cleanup-state) and what restic
reads on its standard input once the dump hook ran."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from agent.adapters import proc
from agent.adapters.module_users import module_user
from agent.adapters.redis_store import Context
from agent.core import redis_keys
from agent.core.errors import AgentError
from agent.runtime.agentenv import agent_environment

HOOK_TIMEOUT = 3600


class HookFailed(AgentError):
    """A module hook ended with an error; the message is the recorded reason."""


def run_hook(ctx: Context, module_id: str, hook: str, backup_id: int) -> proc.Result | None:
    """Run a module hook as the module; None when the module does not ship it."""
    agent_id = redis_keys.module_agent(module_id)
    env = agent_environment(ctx.settings, agent_id)
    path = shutil.which(hook, path=env["PATH"])
    if path is None:
        return None
    return proc.run(
        [path, str(backup_id)],
        env=env,
        cwd=ctx.settings.state_dir(agent_id),
        timeout=HOOK_TIMEOUT,
        run_as=module_user(ctx.settings, module_id),
    )


class DumpHook:
    """The module's module-dump-state; ran tells whether its cleanup is due."""

    def __init__(self, ctx: Context, module_id: str, backup_id: int) -> None:
        self.ctx, self.module_id, self.backup_id = ctx, module_id, backup_id
        self.ran = False  # the module ships the hook and it was started

    def run(self) -> None:
        dumped = run_hook(self.ctx, self.module_id, "module-dump-state", self.backup_id)
        self.ran = dumped is not None
        if dumped is not None and dumped.returncode != 0:
            raise HookFailed(
                f"module-dump-state failed (exit {dumped.returncode}): "
                f"{proc.last_line(dumped.error_text)}"
            )

    def cleanup(self) -> str | None:
        """Run module-cleanup-state; why it failed, or None."""
        cleaned = run_hook(self.ctx, self.module_id, "module-cleanup-state", self.backup_id)
        if cleaned is not None and cleaned.returncode != 0:
            return (
                f"module-cleanup-state failed (exit {cleaned.returncode}): "
                f"{proc.last_line(cleaned.error_text)}"
            )
        return None


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


class BackupSources:
    """restic's standard input: the paths to back up, known once the dump hook ran (it
    runs while restic's container starts, at most once however often restic starts);
    environment is the module's state/environment as it was then."""

    def __init__(self, dump: DumpHook, environment_file: Path, paths: Callable[[], str]) -> None:
        self.dump, self.environment_file, self.paths = dump, environment_file, paths
        self.environment = ""
        self._text: str | None = None
        self.failure: HookFailed | None = None

    def __call__(self) -> str:
        """The paths; none when the dump hook failed (failure tells why): restic then
        ends on its own, without opening the repository."""
        if self._text is None and self.failure is None:
            try:
                self.dump.run()
            except HookFailed as failed:
                self.failure = failed
                return ""
            self.environment = read_text(self.environment_file)
            self._text = self.paths()
        return self._text or ""
