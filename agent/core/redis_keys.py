"""Every Redis key, channel and event name, and agent id, built (and parsed) in one place
(NS8-compatible names)."""

from __future__ import annotations

import enum
import re
from typing import Literal, NamedTuple

CLUSTER = "cluster"
TASK_TTL_SECONDS = 8 * 3600


def node_agent(node_id: int | str) -> str:
    """node/<N> (the text of a NODE_ID as the environment spells it, or a number)."""
    return f"node/{node_id}"


def module_agent(module_id: str) -> str:
    return f"module/{module_id}"


# --- agent ids -----------------------------------------------------------------------
# Canonical only: node/01 would name a queue that node 1 does not serve.
_NODE_NUMBER = re.compile(r"[1-9][0-9]{0,8}")
_MODULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
AgentKind = Literal["cluster", "node", "module"]


class NotAnAgentId(ValueError):
    """Text that is not cluster, node/N or module/ID."""


class AgentId(NamedTuple):  # not a dataclass: api-cli's import time
    """Whose task queue: the cluster, node N or module ID, parsed once from its text."""

    kind: AgentKind
    name: str = ""  # the node's number or the module's id; "" for the cluster

    @classmethod
    def parse(cls, text: str) -> AgentId:
        if text == CLUSTER:
            return cls("cluster")
        kind, _, name = text.partition("/")
        if kind == "node" and _NODE_NUMBER.fullmatch(name):
            return cls("node", name)
        if kind == "module" and _MODULE_ID.fullmatch(name):
            return cls("module", name)
        raise NotAnAgentId(f"not an agent id: {text!r} (use cluster, node/N or module/ID)")

    @classmethod
    def of_node(cls, node_id: int) -> AgentId:
        return cls("node", str(node_id))

    @classmethod
    def of_module(cls, module_id: str) -> AgentId:
        return cls.parse(module_agent(module_id))

    @property
    def node_id(self) -> int:
        if self.kind != "node":
            raise ValueError(f"{self} is not a node")
        return int(self.name)

    @property
    def module_id(self) -> str:
        if self.kind != "module":
            raise ValueError(f"{self} is not a module")
        return self.name

    def __str__(self) -> str:
        return CLUSTER if self.kind == "cluster" else f"{self.kind}/{self.name}"


def split_action(name: str, default_agent: str = CLUSTER) -> tuple[str, str]:
    """'node/1/run-backup' → ('node/1', 'run-backup'); a bare name goes to default_agent."""
    agent_id, _, action = name.rpartition("/")
    return agent_id or default_agent, action


# --- tasks -------------------------------------------------------------------------
def task_queue(agent_id: str) -> str:
    return f"{agent_id}/tasks"


def task_processing(agent_id: str) -> str:
    """Tasks a daemon has claimed and not finished (BLMOVE target)."""
    return f"{agent_id}/tasks/processing"


def agent_of_processing(key: str) -> str:
    """<agent>/tasks/processing (as TASK_PROCESSING_PATTERN finds) → the agent id text."""
    return key.removesuffix("/tasks/processing")


def task_path(agent_id: str, task_id: str) -> str:
    """task/<agent>/<id>: NS8's name of a task, the prefix of its fields' keys."""
    return f"task/{agent_id}/{task_id}"


def task_field(agent_id: str, task_id: str, field: str) -> str:
    if field not in ("context", "output", "error", "exit_code"):
        raise ValueError(f"unknown task field {field!r}")
    return f"{task_path(agent_id, task_id)}/{field}"


def task_progress_channel(agent_id: str, task_id: str) -> str:
    return f"progress/{agent_id}/task/{task_id}"


# --- cluster and nodes ---------------------------------------------------------------
CLUSTER_ENVIRONMENT = "cluster/environment"  # NODE_ID of the leader
CLUSTER_UUID = "cluster/uuid"
CLUSTER_NODES = "cluster/nodes"  # set of node ids
# Hash: agent id (its Redis user) → JSON {password_sha256, granted}: every agent's Redis
# ACL user, from which the Redis's own ACL is (re)applied (agent/records/acls.py).
CLUSTER_ACLS = "cluster/acls"


def node_daemon_lease(node_id: int) -> str:
    """Heartbeat of the daemon serving a node (value: instance id, with a TTL)."""
    return f"node/{node_id}/daemon"


def node_environment(node_id: int) -> str:
    return f"node/{node_id}/environment"


def node_gateway(node_id: int) -> str:
    """Hash: where the node's storage gateway listens (`loopback`, `cluster`: host:port)."""
    return f"node/{node_id}/gateway"


# Hash: module id → JSON {destination, path, holder, expires}: the repository a restore
# in progress lets that module read through the storage gateway and hold the lease of
# (written and renewed by the node that dispatches it; agent/runtime/restore_grants.py).
GATEWAY_RESTORE_GRANTS = "private/gateway_restore_grants"


# --- modules -------------------------------------------------------------------------
MODULE_NODE = "cluster/module_node"
MODULE_UUID = "cluster/module_uuid"
# <restored module uuid> → <uuid of the module whose backup it came from> (NS8 name).
RESTORE_UUID = "private/nodes/restore_uuid"
# <module id> → JSON {agent, task, restore_uuid}: an instance being added (or restored) by
# that task, not yet complete. A daemon that finds its task dead removes the instance.
MODULE_PENDING = "cluster/module_pending"


def module_sequence(image_name: str) -> str:
    return f"cluster/module_sequence/{image_name}"


def module_environment(module_id: str) -> str:
    return f"module/{module_id}/environment"


def module_ui_name(module_id: str) -> str:
    return f"module/{module_id}/ui_name"


def module_ui_note(module_id: str) -> str:
    return f"module/{module_id}/ui_note"


def module_key_prefix(module_id: str) -> str:
    """What every key a module owns starts with."""
    return f"module/{module_id}/"


def module_key_pattern(module_id: str) -> str:
    """Glob matching every key a module owns."""
    return module_key_prefix(module_id) + "*"


def module_task_pattern(module_id: str) -> str:
    return f"task/module/{module_id}/*"


# --- backups -------------------------------------------------------------------------
BACKUP_SEQUENCE = "cluster/backup_sequence"
BACKUP_REPOSITORY_PATTERN = "cluster/backup_repository/*"
BACKUP_PATTERN = "cluster/backup/*"


def id_in_key(key: str) -> str:
    """The id a family key ends with: cluster/backup/<id>, cluster/backup_repository/<id>,
    cluster/notification_target/<name> (as their *_PATTERN finds them)."""
    return key.rpartition("/")[2]


def backup_repository(repository_id: str) -> str:
    return f"cluster/backup_repository/{repository_id}"


def backup_repository_private(repository_id: str) -> str:
    return f"private/backup_repository/{repository_id}"


def backup_repository_candidate(token: str) -> str:
    """A destination being probed before it is saved (JSON with secrets, short TTL)."""
    return f"private/backup_repository_candidate/{token}"


def module_flags(module_id: str) -> str:
    return f"module/{module_id}/flags"


# NS8's default instances: `X@node` / `X@cluster` in agent.resolve_agent_id.
def node_default_instance(node_id: int | str, image_name: str) -> str:
    return f"node/{node_id}/default_instance/{image_name}"


def cluster_default_instance(image_name: str) -> str:
    return f"cluster/default_instance/{image_name}"


# Every default-instance key, cluster and node: remove-module clears those naming it.
DEFAULT_INSTANCE_PATTERNS = ("cluster/default_instance/*", "node/*/default_instance/*")


# Hash: module id → JSON list of "agent:role" from the image's org.nethserver.authorizations
# label, "self:selfadm" always first. A cluster key: a module must not grant itself roles.
MODULE_AUTHORIZATIONS = "cluster/module_authorizations"


def node_tcp_ports(node_id: int) -> str:
    """Hash: module id → "first-last", the TCP ports allocated to it on the node."""
    return f"node/{node_id}/tcp_ports"


def node_udp_ports(node_id: int) -> str:
    """Hash: module id → "first-last", the UDP ports allocated to it on the node."""
    return f"node/{node_id}/udp_ports"


def backup(backup_id: int) -> str:
    return f"cluster/backup/{backup_id}"


def backup_id_of(key: str) -> int | None:
    """cluster/backup/<id> (as BACKUP_PATTERN finds) → id; None when the tail is no number."""
    tail = key.removeprefix("cluster/backup/")
    return int(tail) if tail.isdigit() and "/" not in tail else None


def backup_private(backup_id: int) -> str:
    """Hash: the backup's secrets (ping_url: a healthchecks-style URL is its own password)."""
    return f"private/backup/{backup_id}"


def backup_status(node_id: int, backup_id: int) -> str:
    return f"node/{node_id}/backup_status/{backup_id}"


BACKUP_STATUS_PATTERN = "node/*/backup_status/*"


def backup_history(module_id: str) -> str:
    """List, newest first: JSON of the module's last runs (agent/run_history.py). A
    cluster key, not module/<id>/…: a module must not be able to rewrite its record."""
    return f"cluster/backup_history/{module_id}"


BACKUP_DRILL_PATTERN = "cluster/backup_drill/*"


def backup_drill(backup_id: int) -> str:
    """Hash: source module id → JSON of the last restore drill of that module's backup
    (agent/records/drills.py). A cluster key: the scratch instance cannot rewrite it."""
    return f"cluster/backup_drill/{backup_id}"


BACKUP_WATCH_PATTERN = "cluster/backup_watch/*"


def backup_watch(backup_id: int) -> str:
    """Hash: module id → JSON {since, due, next_run, last_success, overdue}, kept by the
    leader's overdue monitor (agent/overdue.py)."""
    return f"cluster/backup_watch/{backup_id}"


def snapshot_environments(node_id: int) -> str:
    """Hash: snapshot id → JSON {repository, path, time, snapshot_time, environment} of
    the snapshots this node's backups wrote; a restore of one of them learns its image
    from here (agent/snapshot_environments.py)."""
    return f"node/{node_id}/snapshot_environment"


def module_backup_lock(module_id: str) -> str:
    """Held while a module is being backed up: one backup of a module at a time."""
    return f"module/{module_id}/backup_lock"


def repository_lease(destination_id: str, repo_path: str) -> str:
    """Held while restic works on one repository; left behind by a crashed holder."""
    return f"cluster/repository_lease/{destination_id}/{repo_path}"


def repository_check(destination_id: str) -> str:
    """Hash: repository path → JSON of its last `restic check` (agent/records/
    repository_checks.py), with the run count that rolls the read data subset."""
    return f"cluster/repository_check/{destination_id}"


def written_repositories(destination_id: str) -> str:
    """Hash: repository path → restic config id ('' when not read) of each repository this
    cluster has written on a destination; one that then reads as missing has vanished."""
    return f"cluster/backup_repository_written/{destination_id}"


# --- events --------------------------------------------------------------------------
class Event(enum.StrEnum):
    """The events the agent publishes (NS8 names), on cluster/event/<name> unless said."""

    BACKUP_SCHEDULE_CHANGED = "backup-schedule-changed"  # {"backup_ids": [...]}
    BACKUP_DESTINATION_CHANGED = "backup-destination-changed"  # {"destination_ids": [...]}
    BACKUP_STATUS_CHANGED = "backup-status-changed"  # node/<N>/event/…: {"id", "instance"}
    MODULE_ADDED = "module-added"  # {"module_id", "node"}
    MODULE_REMOVED = "module-removed"  # {"module_id", "node"}


def cluster_event(event: Event) -> str:
    return f"cluster/event/{event}"


def node_event(node_id: int, event: Event) -> str:
    return f"node/{node_id}/event/{event}"


def parse_event_channel(channel: str) -> tuple[str, str]:
    """cluster/event/<name> or node/<N>/event/<name> → (source, name); ("", "") else."""
    source, sep, name = channel.partition("/event/")
    return (source, name) if sep else ("", "")


def parse_progress_channel(channel: str) -> tuple[str, str] | None:
    """progress/<agent>/task/<id> → (agent id text, task id); None for anything else."""
    head, sep, task_id = channel.rpartition("/task/")
    if not sep or not head.startswith("progress/"):
        return None
    return head.removeprefix("progress/"), task_id


# --- notifications -------------------------------------------------------------------
NOTIFICATION_TARGET_PATTERN = "cluster/notification_target/*"


def notification_target(name: str) -> str:
    """Hash: name, events, backups, and the outcome of the last send (no secret)."""
    return f"cluster/notification_target/{name}"


def notification_target_private(name: str) -> str:
    """Hash: url (apprise URLs carry tokens and passwords)."""
    return f"private/notification_target/{name}"


# --- web console (issue #17) ---------------------------------------------------------
WEB_SESSION_PATTERN = "private/web_session/*"
# Channels the console streams to the browser: task progress and cluster/node events.
PROGRESS_PATTERN = "progress/*"
EVENT_PATTERNS = ("cluster/event/*", "node/*/event/*")
TASK_PROCESSING_PATTERN = "*/tasks/processing"


def web_session(token_digest: str) -> str:
    """A console session, by the SHA-256 of its cookie (the cookie itself is never stored)."""
    return f"private/web_session/{token_digest}"
