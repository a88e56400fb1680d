"""The node daemon: serves the task queues of its node, its modules and (leader) the cluster."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from agent import lease, overdue, recovery, redis_keys
from agent.actiondirs import action_dirs, list_actions, merge_actions
from agent.agentenv import agent_environment, read_env_file
from agent.errors import AgentError
from agent.masking import mask_secrets
from agent.operations.schedule import SCHEDULE_EVENT, TimerKeeper
from agent.redis_store import REDIS_ERRORS, Redis, connect, connect_binary
from agent.runner import TaskOutcome, TaskRun, masked_context
from agent.settings import Settings
from agent.task_input import Rejected, parse_task
from agent.warmsteps import WarmSteps

log = logging.getLogger("agent.daemon")

ABORTED_BY_CRASH = (
    "task aborted: the agent daemon stopped while it was running (killed or crashed); "
    "it was not re-run because its steps may have done part of their work\n"
)
MODULE_EVENTS = ("module-added", "module-removed")
T = TypeVar("T")


class Worker(threading.Thread):
    """Claims tasks of one agent with a blocking BLMOVE into its processing list."""

    def __init__(self, daemon: Daemon, agent_id: str) -> None:
        super().__init__(name=f"worker {agent_id}", daemon=True)
        self.owner = daemon
        self.agent_id = agent_id
        self.stop_requested = threading.Event()
        self.slots = threading.Semaphore(daemon.settings.concurrency)
        # Bytes as queued: an entry that is not UTF-8 must still be claimed and dropped.
        self.conn: Redis = redis.Redis.from_url(
            daemon.settings.redis_url, decode_responses=False, single_connection_client=True
        )
        self.client_id: int | None = None

    def run(self) -> None:
        queue = redis_keys.task_queue(self.agent_id)
        processing = redis_keys.task_processing(self.agent_id)
        failures = 0
        while not self.stop_requested.is_set():
            try:
                self.client_id = self.conn.client_id()
                raw = self.conn.blmove(queue, processing, 30, "RIGHT", "LEFT")
                failures = 0
            except REDIS_ERRORS as exc:
                failures += 1
                log.warning("%s: Redis error, retrying: %s", self.agent_id, exc)
                time.sleep(min(5.0, 0.5 * 2**failures))
                continue
            if raw is not None:
                self.take(processing, raw)
        self.conn.close()

    def take(self, processing: str, raw: bytes) -> None:
        """Dispatch one claimed entry; whatever it holds, this worker goes on serving."""
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            log.error("%s: dropping a queued task that is not UTF-8: %.200r", self.agent_id, raw)
            with contextlib.suppress(*REDIS_ERRORS):
                self.conn.lrem(processing, 1, raw)
            return
        try:
            self.owner.dispatch(self, text)
        except Exception:  # the worker must outlive any one entry
            log.exception("%s: dropping a task that broke its dispatch", self.agent_id)
            with contextlib.suppress(*REDIS_ERRORS):
                self.conn.lrem(processing, 1, raw)

    def stop(self) -> None:
        self.stop_requested.set()
        if self.client_id is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                self.owner.redis.client_unblock(self.client_id)


class Daemon:
    def __init__(self, settings: Settings, shutdown_timeout: float = 60.0) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.shutdown_timeout = shutdown_timeout
        self.redis = connect(settings.redis_url)
        self.holder = lease.new_holder()
        self.stopping = threading.Event()
        self.workers: dict[str, Worker] = {}
        self.running: dict[tuple[str, str], TaskRun] = {}
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.warm_registry = settings.run_dir / "warm-steps"
        self.warm: WarmSteps | None = None

    # --- life cycle ------------------------------------------------------------------
    def serve(self) -> None:
        # Before the lease: a SIGTERM that arrives once the lease exists must stop the
        # daemon cleanly (releasing the lease), never kill it outright.
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        if not lease.acquire(self.redis, self.node_id, self.holder):
            other = lease.current_holder(self.redis, self.node_id)
            who = f"pid {other.pid} on {other.host}" if other else "another daemon"
            raise AgentError(f"node {self.node_id} is already served by {who}")
        try:
            self._register_node()
            if self.settings.warm_steps:  # forked before any thread starts
                self.warm = WarmSteps(self.warm_registry)
            # Renewed from now on: the recovery's steps get a grace longer than the lease.
            threading.Thread(target=self._heartbeat, name="lease", daemon=True).start()
            served = self.served_agents()
            self.recover(sorted(served, key=lambda a: (a != redis_keys.CLUSTER, a)))
            if redis_keys.CLUSTER in served:  # no cluster task runs yet: all are dead
                recovery.queue_removal_of_pending(self.redis)
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(
                *(redis_keys.cluster_event(name) for name in (*MODULE_EVENTS, SCHEDULE_EVENT))
            )
            self.sync_workers()
            timers = TimerKeeper(self.settings)
            timers.sync(self.redis, start_all=True)
            threading.Thread(
                target=overdue.monitor,
                args=(self.redis, self.settings, self.stopping, self.is_leader),
                name="overdue",
                daemon=True,
            ).start()
            log.info("node %s serving %s", self.node_id, ", ".join(sorted(self.workers)))
            missed = False  # events published while Redis was away are lost: look again
            while not self.stopping.is_set():
                try:
                    if missed:
                        self.sync_workers()
                        timers.sync(self.redis)
                        missed = False
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        if message["channel"] != redis_keys.cluster_event(SCHEDULE_EVENT):
                            self.sync_workers()
                        # Instances moving between nodes change which timers a node keeps.
                        timers.sync(self.redis)
                except REDIS_ERRORS as exc:
                    log.warning("event subscription lost, resubscribing: %s", exc)
                    missed = True
                    time.sleep(1.0)
            pubsub.close()
            self._shutdown()
        finally:
            if self.warm is not None:
                self.warm.close()
            with contextlib.suppress(*REDIS_ERRORS):
                lease.release(self.redis, self.node_id, self.holder)

    def _register_node(self) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(redis_keys.CLUSTER_NODES, self.node_id)
            pipe.hsetnx(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID", self.node_id)
            pipe.setnx(redis_keys.CLUSTER_UUID, str(uuid.uuid4()))
            pipe.execute()

    def _heartbeat(self) -> None:
        while not self.stopping.wait(lease.HEARTBEAT_SECONDS):
            try:
                if not lease.extend(self.redis, self.node_id, self.holder):
                    log.error("lost the lease of node %s to another daemon; stopping", self.node_id)
                    self.stopping.set()
            except REDIS_ERRORS as exc:
                log.warning("cannot renew the lease: %s", exc)

    def _shutdown(self) -> None:
        log.info(
            "stopping: no new tasks; waiting up to %ss for running ones", self.shutdown_timeout
        )
        for worker in list(self.workers.values()):
            worker.stop()
        deadline = time.monotonic() + self.shutdown_timeout
        for thread in list(self.threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.lock:
            left = list(self.running.values())
        for task in left:
            log.warning("cancelling %s/%s at shutdown", task.agent_id, task.task_id)
            task.cancel()
        for thread in list(self.threads):
            thread.join(timeout=10)

    # --- what this node serves ---------------------------------------------------------
    def is_leader(self) -> bool:
        leader = self.redis.hget(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID")
        return bool(leader == str(self.node_id))

    def served_agents(self) -> set[str]:
        agents = {redis_keys.node_agent(self.node_id)}
        if self.is_leader():
            agents.add(redis_keys.CLUSTER)
        for module_id, node in self.redis.hgetall(redis_keys.MODULE_NODE).items():
            if node == str(self.node_id):
                agents.add(redis_keys.module_agent(module_id))
        return agents

    def sync_workers(self) -> None:
        wanted = self.served_agents()
        for agent_id in wanted - set(self.workers):
            worker = Worker(self, agent_id)
            self.workers[agent_id] = worker
            worker.start()
        for agent_id in set(self.workers) - wanted:
            self.workers.pop(agent_id).stop()

    # --- tasks ---------------------------------------------------------------------------
    def dispatch(self, worker: Worker, raw: str) -> None:
        agent_id = worker.agent_id
        task = parse_task(raw)
        if isinstance(task, Rejected):
            self._reject(agent_id, raw, task)
            return
        if self.stopping.is_set() or worker.stop_requested.is_set():
            self._requeue(agent_id, raw)
            return
        task_id, action_name = task["id"], task["action"]
        log.info(
            "%s: task %s %s %s",
            agent_id,
            task_id,
            action_name,
            json.dumps(mask_secrets(task.get("data")))[:500],
        )
        if action_name == "list-actions":
            output = json.dumps(list_actions(action_dirs(self.settings, agent_id)))
            self._finish(agent_id, task, raw, TaskOutcome(output, "", 0, "completed"))
            return
        if action_name == "cancel-task":
            self._finish(agent_id, task, raw, self._cancel(agent_id, task.get("data")))
            return
        thread = threading.Thread(
            target=self._execute, args=(worker, task, raw), name=f"task {task_id}", daemon=True
        )
        with self.lock:
            self.threads.add(thread)
        thread.start()

    def _execute(self, worker: Worker, task: dict[str, Any], raw: str) -> None:
        agent_id, task_id = worker.agent_id, task["id"]
        try:
            actions = merge_actions(action_dirs(self.settings, agent_id))
            action = actions.get(task["action"])
            if action is None:
                outcome = TaskOutcome(
                    "", f"action {task['action']!r} not found for {agent_id}\n", 8, "aborted"
                )
                self._finish(agent_id, task, raw, outcome)
                return
            env = agent_environment(self.settings, agent_id)
            env.update(AGENT_TASK_ID=task_id, AGENT_TASK_ACTION=action.name)
            cwd = self.settings.state_dir(agent_id)
            cwd.mkdir(parents=True, exist_ok=True)
            run = TaskRun(
                agent_id,
                task_id,
                action,
                task.get("data"),
                env,
                cwd,
                lambda status, percent: self._publish(agent_id, task_id, status, percent),
                self.warm,
            )
            with self.lock:
                self.running[(agent_id, task_id)] = run
            self._publish(agent_id, task_id, "pending", 0)
            with worker.slots:
                if self.stopping.is_set():
                    self._requeue(agent_id, raw)
                    return
                # The context marks the task as started: recovery never re-runs it then.
                self._persist(
                    f"start of {agent_id}/{task_id}",
                    lambda: self.redis.set(
                        redis_keys.task_field(agent_id, task_id, "context"),
                        masked_context(task),
                        ex=redis_keys.TASK_TTL_SECONDS,
                    ),
                )
                outcome = run.run()
            self._finish(agent_id, task, raw, outcome)
        except Exception as exc:  # the daemon must outlive any one task
            log.exception("%s: task %s crashed the runner", agent_id, task_id)
            self._finish(
                agent_id, task, raw, TaskOutcome("", f"agent error: {exc}\n", 1, "aborted")
            )
        finally:
            with self.lock:
                self.running.pop((agent_id, task_id), None)
                self.threads.discard(threading.current_thread())

    def _cancel(self, agent_id: str, data: Any) -> TaskOutcome:
        target = data.get("task") if isinstance(data, dict) else None
        if not isinstance(target, str) or not target:
            errors = [
                {"field": "task", "parameter": "task", "value": target, "error": "task_required"}
            ]
            return TaskOutcome(json.dumps(errors), "", 10, "validation-failed")
        with self.lock:
            run = self.running.get((agent_id, target))
        if run is None:
            errors = [
                {"field": "task", "parameter": "task", "value": target, "error": "task_not_found"}
            ]
            return TaskOutcome(json.dumps(errors), "", 2, "validation-failed")
        run.cancel()
        return TaskOutcome("", "", 0, "completed")

    def _persist(self, what: str, write: Callable[[], T]) -> T:
        """write() until Redis takes it: a claimed task's record must outlive a Redis
        restart. Given up only when the daemon is stopping and Redis stays away longer
        than the shutdown time (the next daemon's recovery then settles the task)."""
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

    def _finish(self, agent_id: str, task: dict[str, Any], raw: str, outcome: TaskOutcome) -> None:
        self._persist(
            f"result of {agent_id}/{task['id']}",
            lambda: self._write_result(agent_id, task, raw, outcome),
        )
        log.info("%s: task %s %s exit %s", agent_id, task["id"], outcome.status, outcome.exit_code)

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
            if agent_id.startswith("module/"):
                self._queue_environment_copy(pipe, agent_id)
            pipe.publish(redis_keys.task_progress_channel(agent_id, task_id), json.dumps(final))
            pipe.execute()
        if agent_id == redis_keys.CLUSTER and outcome.exit_code != 0:
            # A failed add or restore that could not undo its instance: undo it now (or,
            # with Redis away, at the daemon's next start).
            try:
                recovery.queue_removal_of_pending(self.redis, agent_id, task_id)
            except REDIS_ERRORS as exc:
                log.warning("cannot check what task %s left half-made: %s", task_id, exc)

    def _queue_environment_copy(self, pipe: Any, agent_id: str) -> None:
        """Mirror the module's state/environment into module/<id>/environment."""
        module_id = agent_id.split("/", 1)[1]
        environment = read_env_file(self.settings.state_dir(agent_id) / "environment")
        if environment and self.settings.agent_home(agent_id).is_dir():
            key = redis_keys.module_environment(module_id)
            pipe.delete(key)
            pipe.hset(key, mapping=environment)

    def _reject(self, agent_id: str, raw: str, rejected: Rejected) -> None:
        """A task that cannot run: a failed record when its id is known, else dropped."""
        if rejected.task_id is None:
            log.error("%s: dropping a malformed task (%s): %.200r", agent_id, rejected.reason, raw)
            self.redis.lrem(redis_keys.task_processing(agent_id), 1, raw)
            return
        log.error("%s: task %s cannot run: %s", agent_id, rejected.task_id, rejected.reason)
        task = {"id": rejected.task_id, "action": ""}
        self._finish(agent_id, task, raw, TaskOutcome("", f"{rejected.reason}\n", 1, "aborted"))

    def _requeue(self, agent_id: str, raw: str) -> None:
        def write() -> None:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.lrem(redis_keys.task_processing(agent_id), 1, raw)
                # A retry after a lost reply must not queue the task twice.
                pipe.lrem(redis_keys.task_queue(agent_id), 0, raw)
                pipe.rpush(redis_keys.task_queue(agent_id), raw)
                pipe.execute()

        self._persist(f"requeue on {agent_id}", write)

    def _publish(self, agent_id: str, task_id: str, status: str, percent: int) -> None:
        try:
            self.redis.publish(
                redis_keys.task_progress_channel(agent_id, task_id),
                json.dumps({"status": status, "progress": percent}),
            )
        except REDIS_ERRORS as exc:
            log.warning("cannot publish progress of %s: %s", task_id, exc)

    def recover(self, agent_ids: list[str]) -> None:
        """Settle tasks a previous daemon of this node claimed (on agent_ids) and never
        finished: stop what is left of them, then mark them aborted, in agent_ids' order.

        Every leftover step is stopped before any task's end is published. A cluster
        step waits on its node sub-tasks: it must not see them end (and start its own
        clean-up) before it is stopped itself, and its end must not be published before
        their steps, told to stop, have recorded what they were doing (a module's failed
        backup status): whoever reads the status once the cluster task ended sees that."""
        claimed = [
            (agent_id, *entry) for agent_id in agent_ids for entry in self._started(agent_id)
        ]
        killed = recovery.kill_task_processes(
            [task["id"] for _, task, _ in claimed], self.warm_registry
        )
        for agent_id, task, raw in claimed:
            log.warning(
                "%s: task %s was running when the daemon died (%d leftover processes "
                "stopped); marking it aborted",
                agent_id,
                task["id"],
                killed[task["id"]],
            )
            error = ABORTED_BY_CRASH
            half_made = recovery.modules_of_task(self.redis, agent_id, task["id"])
            if half_made:
                error += f"the instances it was adding are removed: {', '.join(half_made)}\n"
            self._finish(agent_id, task, raw, TaskOutcome("", error, 1, "aborted"))

    def _started(self, agent_id: str) -> list[tuple[dict[str, Any], str]]:
        """(task, raw entry) of each task agent_id's processing list holds that had
        started; poison there is dropped or rejected, a task never started re-queued."""
        processing = redis_keys.task_processing(agent_id)
        binary = connect_binary(self.settings.redis_url)
        with contextlib.closing(binary):
            entries = binary.lrange(processing, 0, -1)
            for bad in [entry for entry in entries if not _is_utf8(entry)]:
                binary.lrem(processing, 1, bad)
        started = []
        for raw_bytes in entries:
            if not _is_utf8(raw_bytes):
                continue
            raw = raw_bytes.decode()
            task = parse_task(raw)
            if isinstance(task, Rejected):
                self._reject(agent_id, raw, task)
            elif self.redis.exists(redis_keys.task_field(agent_id, task["id"], "context")):
                started.append((task, raw))
            else:
                log.warning(
                    "%s: re-queueing task %s, claimed but never started", agent_id, task["id"]
                )
                self._requeue(agent_id, raw)
        return started


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True
