"""The node daemon: serves the task queues of its node, its modules and (leader) the cluster."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import uuid
from typing import Any

from agent.adapters import gateway
from agent.adapters.module_users import module_user_of
from agent.adapters.redis_api import BinaryRedis
from agent.adapters.redis_store import REDIS_ERRORS, Context, connect, connect_binary
from agent.core import redis_keys
from agent.core.errors import AgentError
from agent.core.masking import mask_secrets
from agent.core.redis_keys import Event
from agent.core.settings import Settings
from agent.runtime import agent_acls, lease, module_pending, overdue, recovery, task_withdraw
from agent.runtime.actiondirs import Action, action_dirs, list_actions, merge_actions
from agent.runtime.agentenv import agent_environment, task_variables
from agent.runtime.runner import TaskOutcome, TaskRun
from agent.runtime.task_input import Rejected, parse_task
from agent.runtime.task_records import TaskRecords
from agent.runtime.timers import TimerKeeper
from agent.runtime.warmsteps import WarmSteps

log = logging.getLogger("agent.daemon")

# Which agents a node serves changes with these; the timers it keeps, with all of them.
WORKER_EVENTS = (Event.MODULE_ADDED, Event.MODULE_REMOVED)
TIMER_EVENTS = (*WORKER_EVENTS, Event.BACKUP_SCHEDULE_CHANGED)
GRANT_SWEEP_SECONDS = 60.0


class Worker(threading.Thread):
    """Claims tasks of one agent with a blocking BLMOVE into its processing list."""

    def __init__(self, daemon: Daemon, agent_id: str) -> None:
        super().__init__(name=f"worker {agent_id}", daemon=True)
        self.owner = daemon
        self.agent_id = agent_id
        self.stop_requested = threading.Event()
        self.slots = threading.Semaphore(daemon.settings.concurrency)
        # Bytes as queued: an entry that is not UTF-8 must still be claimed and dropped.
        self.conn = connect_binary(daemon.settings.redis_url, single_connection=True)
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
        # Claimed and dispatched, not yet in running: a cancel-task meanwhile sets the event
        # and the task is cancelled as it registers (never "task_not_found").
        self.claimed: dict[tuple[str, str], threading.Event] = {}
        self.threads: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.warm_registry = settings.run_dir / "warm-steps"
        self.warm: WarmSteps | None = None
        self.records = TaskRecords(self.redis, settings, self.stopping, shutdown_timeout)

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
        started_gateway = False
        try:
            self._register_node()
            agent_acls.apply_acls(self.redis)
            self._ensure_module_credentials()
            if self.settings.warm_steps:  # forked before any thread starts
                self.warm = WarmSteps(self.warm_registry)
            # Renewed from now on (a saturated node's gateway took > 15 s to start: api-cli
            # withdraws tasks when the lease lapses); recovery's grace outlasts it.
            threading.Thread(target=self._heartbeat, name="lease", daemon=True).start()
            started_gateway = gateway.start_for_daemon(self.settings, self.stopping)
            served = self.served_agents()
            # All of them at once, the cluster's first (see recovery.recover).
            recovery.recover(
                self.records,
                sorted(served, key=lambda a: (a != redis_keys.CLUSTER, a)),
                self.warm_registry,
            )
            if redis_keys.CLUSTER in served:  # no cluster task runs yet: all are dead
                module_pending.queue_removal_of_pending(self.redis)
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(*(redis_keys.cluster_event(event) for event in TIMER_EVENTS))
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
            next_sweep = time.monotonic() + GRANT_SWEEP_SECONDS
            while not self.stopping.is_set():
                try:
                    if time.monotonic() >= next_sweep:
                        # A restore grant whose restore died (here or on another node)
                        # must not widen its module's user until some daemon restarts.
                        next_sweep = time.monotonic() + GRANT_SWEEP_SECONDS
                        agent_acls.drop_stale_grants(self.redis)
                    if missed:
                        # Redis may have restarted: its keys come back, its ACL does not.
                        agent_acls.apply_acls(self.redis)
                        self.sync_workers()
                        timers.sync(self.redis)
                        missed = False
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        worker_channels = {redis_keys.cluster_event(e) for e in WORKER_EVENTS}
                        if message["channel"] in worker_channels:
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
            if started_gateway:
                gateway.stop_node_gateway(self.settings)
            with contextlib.suppress(*REDIS_ERRORS):
                lease.release(self.redis, self.node_id, self.holder)
            self.records.binary.close()

    def _register_node(self) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(redis_keys.CLUSTER_NODES, self.node_id)
            pipe.hsetnx(redis_keys.CLUSTER_ENVIRONMENT, "NODE_ID", self.node_id)
            pipe.setnx(redis_keys.CLUSTER_UUID, str(uuid.uuid4()))
            pipe.execute()

    def _ensure_module_credentials(self) -> None:
        """Modules of this node installed before modules had Redis users get theirs."""
        ctx = Context(self.settings, self.redis)
        for agent_id in self.served_agents():
            agent = redis_keys.AgentId.parse(agent_id)
            if agent.kind == "module" and agent_acls.ensure_credentials(ctx, agent.module_id):
                log.warning("%s had no Redis user of its own: made one", agent_id)

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
            outcome = self._cancel(agent_id, task.get("data"), worker.conn)
            self._finish(agent_id, task, raw, outcome)
            return
        thread = threading.Thread(
            target=self._execute, args=(worker, task, raw), name=f"task {task_id}", daemon=True
        )
        with self.lock:
            # Before this worker can claim a cancel of it (the same worker claims both).
            self.claimed[(agent_id, task_id)] = threading.Event()
            self.threads.add(thread)
        thread.start()

    def _actions(self, agent_id: str) -> dict[str, Action]:
        """agent_id's actions, read as a claimed task is prepared (before it is registered
        as running)."""
        return merge_actions(action_dirs(self.settings, agent_id))

    def _execute(self, worker: Worker, task: dict[str, Any], raw: str) -> None:
        agent_id, task_id = worker.agent_id, task["id"]
        try:
            actions = self._actions(agent_id)
            action = actions.get(task["action"])
            if action is None:
                outcome = TaskOutcome(
                    "", f"action {task['action']!r} not found for {agent_id}\n", 8, "aborted"
                )
                self._finish(agent_id, task, raw, outcome)
                return
            task_env = task_variables(task_id, action.name, task.get("user"))

            def env() -> dict[str, str]:
                return agent_environment(self.settings, agent_id) | task_env

            cwd = self.settings.state_dir(agent_id)
            run_as = module_user_of(self.settings, agent_id)
            if run_as is None:
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
                run_as,
                self.settings.share,
            )
            with self.lock:
                self.running[(agent_id, task_id)] = run
                claimed = self.claimed.pop((agent_id, task_id), None)
                if claimed is not None and claimed.is_set():
                    run.cancel()  # asked while it was being prepared: it ends cancelled
            self._publish(agent_id, task_id, "pending", 0)
            with worker.slots:
                if self.stopping.is_set():
                    self._requeue(agent_id, raw)
                    return
                self.records.mark_started(agent_id, task)
                outcome = run.run()
            if run.step_killed:
                # What the killed step started (a podman client, its restic) stops now,
                # before anyone waiting on the task acts on its end (removes the volumes
                # that restic writes into). SIGTERM first: restic removes its own lock.
                left = recovery.kill_task_processes([task_id], self.warm_registry)[task_id]
                log.warning(
                    "%s: task %s: a step was killed; %d processes it left stopped",
                    agent_id,
                    task_id,
                    left,
                )
            self._finish(agent_id, task, raw, outcome)
        except Exception as exc:  # the daemon must outlive any one task
            log.exception("%s: task %s crashed the runner", agent_id, task_id)
            self._finish(
                agent_id, task, raw, TaskOutcome("", f"agent error: {exc}\n", 1, "aborted")
            )
        finally:
            with self.lock:
                self.running.pop((agent_id, task_id), None)
                self.claimed.pop((agent_id, task_id), None)
                self.threads.discard(threading.current_thread())

    def _cancel(self, agent_id: str, data: Any, binary: BinaryRedis) -> TaskOutcome:
        target = data.get("task") if isinstance(data, dict) else None
        if not isinstance(target, str) or not target:
            errors = [
                {"field": "task", "parameter": "task", "value": target, "error": "task_required"}
            ]
            return TaskOutcome(json.dumps(errors), "", 10, "validation-failed")
        with self.lock:
            run = self.running.get((agent_id, target))
            claimed = self.claimed.get((agent_id, target))
            if run is None and claimed is not None:
                claimed.set()  # being prepared: cancelled as it registers (see _execute)
                return TaskOutcome("", "", 0, "completed")
        if run is None and (queued := task_withdraw.withdraw_queued(binary, agent_id, target)):
            # Never claimed: it is recorded as cancelled, so whoever waits on it returns.
            stopped = TaskOutcome("", task_withdraw.NOT_STARTED, 1, "aborted")
            self._finish(agent_id, queued.task, queued.raw, stopped)
            return TaskOutcome("", "", 0, "completed")
        if run is None:
            errors = [
                {"field": "task", "parameter": "task", "value": target, "error": "task_not_found"}
            ]
            return TaskOutcome(json.dumps(errors), "", 2, "validation-failed")
        run.cancel()
        return TaskOutcome("", "", 0, "completed")

    # The task's record (agent/task_records.py).
    def _finish(self, agent_id: str, task: dict[str, Any], raw: str, outcome: TaskOutcome) -> None:
        self.records.finish(agent_id, task, raw, outcome)

    def _reject(self, agent_id: str, raw: str, rejected: Rejected) -> None:
        self.records.reject(agent_id, raw, rejected)

    def _requeue(self, agent_id: str, raw: str) -> None:
        self.records.requeue(agent_id, raw)

    def _publish(self, agent_id: str, task_id: str, status: str, percent: int) -> None:
        self.records.publish(agent_id, task_id, status, percent)
