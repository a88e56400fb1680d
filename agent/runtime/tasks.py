"""Client side of the task protocol: submit, follow progress, collect, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from agent.adapters.redis_api import Redis, TaskClient, connection_errors
from agent.core import redis_keys
from agent.core.errors import AgentError, AgentNotRunning, RedisUnavailable, UnknownAgent
from agent.records.tasks import QueuedTask, TaskRecord
from agent.runtime import lease, task_withdraw

if TYPE_CHECKING:
    import threading

TERMINAL = ("completed", "aborted", "validation-failed")
# A watcher rides out a Redis restart (the daemon keeps the task's result for when Redis is
# back); only an outage this long makes it give up.
REDIS_OUTAGE_SECONDS = 300.0
ProgressHandler = Callable[[str, int], None]


class TaskResult(NamedTuple):
    agent_id: str
    task_id: str
    output: Any
    error: str
    exit_code: int
    raw_output: str = ""


class TaskRequest(NamedTuple):
    agent_id: str
    action: str
    data: Any = None
    parent: str = ""
    extra: Any = None  # NS8's task extra (title, description …); {} when None


def node_of_agent(redis: TaskClient, agent_id: str) -> int:
    """The node whose daemon serves agent_id."""
    try:
        agent = redis_keys.AgentId.parse(agent_id)
    except redis_keys.NotAnAgentId as exc:
        raise UnknownAgent(str(exc)) from None
    if agent.kind == "cluster":
        leader = redis.hget(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID")
        if leader is None:
            raise AgentNotRunning("the cluster has no leader yet: start it with 'agent cluster up'")
        return int(leader)
    if agent.kind == "node":
        if not redis.sismember(redis_keys.CLUSTER_NODES, agent.node_id):
            raise UnknownAgent(f"no node {agent.node_id} in this cluster")
        return agent.node_id
    node = redis.hget(redis_keys.MODULE_NODE, agent.module_id)
    if node is None:
        raise UnknownAgent(f"no module {agent.module_id!r} in this cluster")
    return int(node)


def ensure_served(redis: TaskClient, agent_id: str) -> None:
    node = node_of_agent(redis, agent_id)
    if not lease.is_served(redis, node):
        raise AgentNotRunning(
            f"no agent daemon is running for {agent_id} (node {node}): start it with "
            "'agent cluster up' or 'agent serve'"
        )


def make_task(action: str, data: Any, parent: str = "") -> dict[str, Any]:
    """A new task as queued (QueuedTask's fields, as a dict)."""
    return QueuedTask.new(action, data, parent).to_dict()


def submit(redis: TaskClient, request: TaskRequest, check: bool = True) -> str:
    """Queue the task (after checking a daemon serves its agent); returns the task id."""
    if check:
        ensure_served(redis, request.agent_id)
    task = QueuedTask.new(request.action, request.data, request.parent, request.extra)
    queue(redis, request, task.to_json())
    return task.id


def queue(redis: TaskClient, request: TaskRequest, raw: str) -> None:
    """Workers claim from the right: tasks join on the left, a cancel-task on the right."""
    key = redis_keys.task_queue(request.agent_id)
    if task_withdraw.jumps_the_queue(request.action):
        redis.rpush(key, raw)
    else:
        redis.lpush(key, raw)


def queue_entries(redis: Redis, key: str, limit: int = -1) -> list[str]:
    """The entries of a task list that decode as text, up to index limit. A poisoned entry
    (not UTF-8: any Redis client can push one) must not stop whoever reads the list."""
    try:
        return list(redis.lrange(key, 0, limit))
    except UnicodeDecodeError:
        entries = []
        last = redis.llen(key) - 1 if limit < 0 else limit
        for index in range(last + 1):
            try:
                entry = redis.lindex(key, index)
            except UnicodeDecodeError:
                continue
            if entry is not None:
                entries.append(entry)
        return entries


def fetch_result(redis: TaskClient, agent_id: str, task_id: str) -> TaskResult | None:
    """The stored result, or None while the task has not finished."""
    record = TaskRecord.from_redis(redis, agent_id, task_id)
    if record is None:
        return None
    output = record.output
    return TaskResult(
        agent_id, task_id, parse_output(output), record.error, record.exit_code, output
    )


def parse_output(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class TaskWatcher:
    """Subscribed to a task's progress channel before the task is queued (no lost events)."""

    def __init__(self, redis: TaskClient, agent_id: str, task_id: str | None = None) -> None:
        self.redis = redis
        self.agent_id = agent_id
        self.task_id = task_id or ""
        self.raw = ""  # the queued JSON, when this watcher queued the task itself
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self.outage_since: float | None = None

    def subscribe(self, task_id: str) -> None:
        self.task_id = task_id
        self.pubsub.subscribe(redis_keys.task_progress_channel(self.agent_id, task_id))

    def wait(
        self, on_progress: ProgressHandler | None = None, timeout: float | None = None
    ) -> TaskResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                result = self._poll(on_progress)
                if result is not None:
                    return result
                if deadline is not None and time.monotonic() > deadline:
                    raise AgentError(f"task {self.task_id} did not finish within {timeout}s")
        finally:
            self.pubsub.close()

    def _poll(self, on_progress: ProgressHandler | None) -> TaskResult | None:
        try:
            result = self._poll_once(on_progress)
        except connection_errors() as exc:
            self._outage(exc)
            return None
        self.outage_since = None
        return result

    def _outage(self, exc: Exception) -> None:
        """Connection trouble: wait and try again (redis-py reconnects and subscribes
        anew); raise once Redis has been unreachable for REDIS_OUTAGE_SECONDS."""
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
        elif now - self.outage_since > REDIS_OUTAGE_SECONDS:
            raise RedisUnavailable(
                f"lost Redis for over {REDIS_OUTAGE_SECONDS:.0f}s while waiting for "
                f"task {self.task_id} of {self.agent_id}: {exc}"
            ) from None
        time.sleep(1.0)

    def _poll_once(self, on_progress: ProgressHandler | None) -> TaskResult | None:
        message = self.pubsub.get_message(timeout=2.0)
        if message is not None:
            try:
                payload = json.loads(message["data"])
                status, percent = str(payload["status"]), int(payload["progress"])
            except (ValueError, KeyError, TypeError):
                return None
            if on_progress is not None:
                on_progress(status, percent)
            if status not in TERMINAL:
                return None
        # Either the task ended or we heard nothing for a while: the stored result decides.
        result = fetch_result(self.redis, self.agent_id, self.task_id)
        if result is None and message is None:
            self._withdraw_if_orphaned()
        return result

    def _withdraw_if_orphaned(self) -> None:
        """A task nobody will take (its daemon died before claiming it) is withdrawn from
        the queue and reported, instead of being waited for forever."""
        if not self.raw:
            return
        try:
            served = lease.is_served(self.redis, node_of_agent(self.redis, self.agent_id))
        except AgentError:
            served = False
        if not served and self.redis.lrem(redis_keys.task_queue(self.agent_id), 1, self.raw):
            raise AgentNotRunning(
                f"the agent daemon serving {self.agent_id} stopped before taking task "
                f"{self.task_id}; it was withdrawn and did not run"
            )


def start(redis: TaskClient, request: TaskRequest, check: bool = True) -> TaskWatcher:
    """Subscribe, then queue: the returned watcher sees every progress event."""
    if check:
        ensure_served(redis, request.agent_id)
    task = QueuedTask.new(request.action, request.data, request.parent, request.extra)
    watcher = TaskWatcher(redis, request.agent_id)
    watcher.subscribe(task.id)
    watcher.raw = task.to_json()
    queue(redis, request, watcher.raw)
    return watcher


def run(
    redis: TaskClient,
    request: TaskRequest,
    on_progress: ProgressHandler | None = None,
    timeout: float | None = None,
) -> TaskResult:
    return start(redis, request).wait(on_progress, timeout)


def cancel(redis: TaskClient, agent_id: str, task_id: str) -> None:
    """Ask the agent to SIGTERM the task's running step (fire and forget)."""
    submit(redis, TaskRequest(agent_id, "cancel-task", {"task": task_id}), check=False)


def run_parallel(
    redis: TaskClient,
    requests: list[TaskRequest],
    on_progress: ProgressHandler | None = None,
    cancel_event: threading.Event | None = None,
) -> list[TaskResult]:
    """Run requests at once; progress is the mean of theirs; cancel_event cancels them all."""
    import threading  # steps fan out with it; api-cli never does

    watchers = [start(redis, request) for request in requests]
    percents = [0] * len(watchers)
    results: list[TaskResult | None] = [None] * len(watchers)
    lock = threading.Lock()

    def follow(index: int) -> None:
        def progress(status: str, percent: int) -> None:
            with lock:
                percents[index] = percent
                overall = sum(percents) // len(percents)
            if on_progress is not None:
                on_progress("running", overall)

        try:
            results[index] = watchers[index].wait(progress)
        except Exception as exc:  # reported as that task's failure, never dropped
            results[index] = lost_result(watchers[index], exc)

    threads = [
        threading.Thread(target=follow, args=(i,), daemon=True) for i in range(len(watchers))
    ]
    for thread in threads:
        thread.start()
    cancelled = False
    while any(t.is_alive() for t in threads):
        if cancel_event is not None and cancel_event.is_set() and not cancelled:
            cancelled = True
            for watcher in watchers:
                cancel(redis, watcher.agent_id, watcher.task_id)
        for thread in threads:
            thread.join(timeout=0.2)
    return [
        result if result is not None else lost_result(watcher, None)
        for watcher, result in zip(watchers, results, strict=True)
    ]


def lost_result(watcher: TaskWatcher, exc: Exception | None) -> TaskResult:
    """What run_parallel reports for a task it could not follow to its end: a failure
    saying so (the task itself may still be running, or have ended unseen)."""
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "no result"
    return TaskResult(
        watcher.agent_id,
        watcher.task_id,
        "",
        f"lost track of task {watcher.task_id} of {watcher.agent_id}: {reason}\n",
        1,
    )
