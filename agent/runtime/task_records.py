"""A claimed task's record in Redis: its result, its leaving the processing list, its
progress events, its return to the queue. Each is written until Redis takes it: a claimed
task's record must outlive a Redis restart."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agent.adapters.redis_api import Pipeline, Redis
from agent.adapters.redis_store import REDIS_ERRORS, connect_binary
from agent.core import redis_keys
from agent.core.settings import Settings
from agent.runtime import module_pending
from agent.runtime.agentenv import read_env_file
from agent.runtime.runner import TaskOutcome, masked_context
from agent.runtime.task_input import Rejected

log = logging.getLogger("agent.daemon")

T = TypeVar("T")


class TaskRecords:
    """The daemon's writes about its tasks (one per daemon, shared by its workers)."""

    def __init__(
        self, redis: Redis, settings: Settings, stopping: threading.Event, shutdown_timeout: float
    ) -> None:
        self.redis = redis
        # Reads what may not be UTF-8 (queued entries), as sent.
        self.binary = connect_binary(settings.redis_url)
        self.settings = settings
        self.stopping = stopping
        self.shutdown_timeout = shutdown_timeout

    def persist(self, what: str, write: Callable[[], T]) -> T:
        """write() until Redis takes it. Given up only when the daemon is stopping and Redis
        stays away longer than the shutdown time (the next daemon's recovery then settles
        the task)."""
        delay, give_up = 0.5, None
        while True:
            try:
                return write()
            except REDIS_ERRORS as exc:
                if self.stopping.is_set():
                    give_up = give_up or time.monotonic() + self.shutdown_timeout
                    if time.monotonic() > give_up:
                        raise
                log.warning("%s: Redis error, retrying in %.1fs: %s", what, delay, exc)
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    def mark_started(self, agent_id: str, task: dict[str, Any]) -> None:
        """The context marks the task as started: recovery never re-runs it then."""
        self.persist(
            f"start of {agent_id}/{task['id']}",
            lambda: self.redis.set(
                redis_keys.task_field(agent_id, task["id"], "context"),
                masked_context(task),
                ex=redis_keys.TASK_TTL_SECONDS,
            ),
        )

    def finish(self, agent_id: str, task: dict[str, Any], raw: str, outcome: TaskOutcome) -> None:
        self.persist(
            f"result of {agent_id}/{task['id']}",
            lambda: self._write_result(agent_id, task, raw, outcome),
        )
        log.info("%s: task %s %s exit %s", agent_id, task["id"], outcome.status, outcome.exit_code)
        if agent_id == redis_keys.CLUSTER and outcome.exit_code != 0:
            # A failed add or restore that could not undo its instance: undo it now (or,
            # with Redis away, at the daemon's next start).
            try:
                module_pending.queue_removal_of_pending(self.redis, agent_id, task["id"])
            except REDIS_ERRORS as exc:
                log.warning("cannot check what task %s left half-made: %s", task["id"], exc)

    def _write_result(
        self, agent_id: str, task: dict[str, Any], raw: str, outcome: TaskOutcome
    ) -> None:
        """The task's record, its removal from the processing list and its end event, at
        once (written again whole when a retry follows a lost reply)."""
        task_id = task["id"]
        ttl = redis_keys.TASK_TTL_SECONDS
        final = {"status": outcome.status, "progress": 100 if outcome.exit_code == 0 else 0}
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                redis_keys.task_field(agent_id, task_id, "context"), masked_context(task), ex=ttl
            )
            pipe.set(redis_keys.task_field(agent_id, task_id, "output"), outcome.output, ex=ttl)
            pipe.set(redis_keys.task_field(agent_id, task_id, "error"), outcome.error, ex=ttl)
            pipe.set(
                redis_keys.task_field(agent_id, task_id, "exit_code"), outcome.exit_code, ex=ttl
            )
            pipe.lrem(redis_keys.task_processing(agent_id), 1, raw)
            agent = redis_keys.AgentId.parse(agent_id)
            if agent.kind == "module":
                self._queue_environment_copy(pipe, agent)
            pipe.publish(redis_keys.task_progress_channel(agent_id, task_id), json.dumps(final))
            pipe.execute()

    def _queue_environment_copy(self, pipe: Pipeline, agent: redis_keys.AgentId) -> None:
        """Mirror the module's state/environment into module/<id>/environment."""
        environment = read_env_file(self.settings.state_dir(str(agent)) / "environment")
        if environment and self.settings.agent_home(str(agent)).is_dir():
            key = redis_keys.module_environment(agent.module_id)
            pipe.delete(key)
            pipe.hset(key, mapping=environment)

    def reject(self, agent_id: str, raw: str, rejected: Rejected) -> None:
        """A task that cannot run: a failed record when its id is known, else dropped."""
        if rejected.task_id is None:
            log.error("%s: dropping a malformed task (%s): %.200r", agent_id, rejected.reason, raw)
            self.redis.lrem(redis_keys.task_processing(agent_id), 1, raw)
            return
        log.error("%s: task %s cannot run: %s", agent_id, rejected.task_id, rejected.reason)
        task = {"id": rejected.task_id, "action": ""}
        self.finish(agent_id, task, raw, TaskOutcome("", f"{rejected.reason}\n", 1, "aborted"))

    def requeue(self, agent_id: str, raw: str) -> None:
        def write() -> None:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.lrem(redis_keys.task_processing(agent_id), 1, raw)
                # A retry after a lost reply must not queue the task twice.
                pipe.lrem(redis_keys.task_queue(agent_id), 0, raw)
                pipe.rpush(redis_keys.task_queue(agent_id), raw)
                pipe.execute()

        self.persist(f"requeue on {agent_id}", write)

    def publish(self, agent_id: str, task_id: str, status: str, percent: int) -> None:
        try:
            self.redis.publish(
                redis_keys.task_progress_channel(agent_id, task_id),
                json.dumps({"status": status, "progress": percent}),
            )
        except REDIS_ERRORS as exc:
            log.warning("cannot publish progress of %s: %s", task_id, exc)
