"""Redis ACL users of the agents: the rules each kind of agent gets, built in one place.

A module agent (its steps, hooks and module-side processes) connects as `module/<id>` and
can do only what module_rules grants. Every key pattern it may touch is listed here: a
new key a module step needs is granted here or not at all (NS8 ≥ 3.20's model, narrowed
to the keys this agent's module steps really use).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from urllib.parse import quote, urlsplit, urlunsplit

from agent.core import redis_keys

# What any module may read: the public cluster keys its steps and the task client use.
# Never a key family that also holds task data (cluster/tasks, node/N/tasks) or a secret.
MODULE_PUBLIC_READS = (
    redis_keys.CLUSTER_ENVIRONMENT,  # the leader: where cluster tasks go
    redis_keys.CLUSTER_NODES,
    redis_keys.CLUSTER_UUID,
    redis_keys.MODULE_NODE,  # which node serves an agent (task client)
    redis_keys.MODULE_UUID,
    redis_keys.BACKUP_REPOSITORY_PATTERN,  # destination names and urls (no secret)
    "node/*/daemon",  # daemon leases: is an agent served (task client)
    "node/*/environment",
    "node/*/gateway",  # where the storage gateways listen (agent/adapters/gateway.py)
    *redis_keys.DEFAULT_INSTANCE_PATTERNS,  # NS8's resolve_agent_id("traefik@node")
)

# A module-side restic run (restore-module/10restore, NS8's agent.run_restic) holds the
# repository's lease, as every restic run on a repository does: a module may write the
# lease of its own repository (<image>/<uuid>, on any destination) and, while a restore
# into it runs, of the restore's source (repository_lease_patterns). Never any other
# lease: holding one would delay that repository's backups. It notes no repository as
# written (cluster/backup_repository_written/*): only the node's backup and mirror runs do.

# Command categories: reads and writes of the granted keys, MULTI, pub/sub, scripts,
# connection commands. Never admin commands (ACL, CONFIG, CLIENT LIST/KILL, DEBUG …),
# never the other dangerous ones (FLUSHALL, KEYS, MIGRATE, SORT …), never SCAN/RANDOMKEY:
# those reach key names beyond the granted patterns (task ids, private key names). Then
# back: TIME (leases are timed by Redis's clock), RESTORE (20label puts ui_name/ui_note
# back from their DUMP, into its own keys only; the embedded Redis sanitizes payloads).
MODULE_COMMANDS = (
    *("-@all", "+@read", "+@write", "+@transaction", "+@connection", "+@pubsub"),
    *("+@scripting", "-@admin", "-@dangerous", "-scan", "-randomkey", "-keys"),
    *("+time", "+restore"),
)
NODE_RULES = ("allkeys", "allchannels", "+@all")

# NS8's org.nethserver.authorizations label (image_labels.AUTHORIZATIONS): "agent:role"
# words, agent one of cluster, node, self, <image>@node, <image>@any (roles are NS8's
# api-server matter, not Redis's).
_IMAGE_AGENT = re.compile(r"([a-z][a-z0-9_-]*)@(node|any|cluster)")
_ROLE = re.compile(r"[A-Za-z0-9_.-]+")


def new_password() -> str:
    return secrets.token_hex(32)


def password_sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_user(agent_id: str) -> str:
    """The Redis user of an agent: its agent id (NS8 names: module/<id>, node/<N>)."""
    redis_keys.AgentId.parse(agent_id)  # raises NotAnAgentId
    return agent_id


def parse_authorizations(label: str, node_id: int) -> tuple[str, ...]:
    """Queue owners a module's authorizations label lets it push tasks to: agent ids
    (cluster, node/<N>) and module globs (module/<image>[0-9]*). `self` is always granted
    (its own queue); an unreadable word grants nothing."""
    granted: list[str] = []
    for word in label.split():
        agent, sep, role = word.partition(":")
        if not sep or not _ROLE.fullmatch(role):
            continue
        if agent == "cluster":
            owner = redis_keys.CLUSTER
        elif agent == "node":
            owner = redis_keys.node_agent(node_id)
        elif match := _IMAGE_AGENT.fullmatch(agent):
            # Every instance of that image (module ids are <image><number>). Redis
            # patterns cannot tell "on this node" apart: @node grants as @any does.
            owner = redis_keys.module_agent(f"{match.group(1)}[0-9]*")
        else:
            continue  # self (always granted) or a word this agent does not know
        if owner not in granted:
            granted.append(owner)
    return tuple(granted)


def glob_literal(text: str) -> str:
    """text as a Redis glob that matches text only (its *, ?, [, ] and \\ escaped)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def repository_lease_patterns(
    image: str, module_uuid: str, restore_source: tuple[str, str] | None = None
) -> list[str]:
    """The lease keys a module may write: its own repository's (image/module_uuid) on any
    destination, and restore_source's ((destination id, repository path) of a restore
    in progress). An unknown image (a module given its user before this was recorded)
    means any image with its uuid; an unknown uuid, no own lease at all."""
    patterns = []
    if module_uuid:
        own = f"{glob_literal(image) if image else '*'}/{glob_literal(module_uuid)}"
        patterns.append(redis_keys.repository_lease("*", own))
    if restore_source is not None:
        destination_id, repo_path = restore_source
        patterns.append(
            redis_keys.repository_lease(
                glob_literal(destination_id), glob_literal(repo_path.strip("/"))
            )
        )
    return patterns


def module_rules(
    module_id: str,
    granted: Iterable[str],
    *,
    image: str = "",
    module_uuid: str = "",
    restore_source: tuple[str, str] | None = None,
) -> list[str]:
    """ACL SETUSER rules of module/<module_id> (after `reset on #<hash>`): the one place
    a module's rules are made (see repository_lease_patterns for the last three)."""
    agent_id = redis_keys.module_agent(module_id)
    rules = [
        *MODULE_COMMANDS,
        f"~{redis_keys.module_key_pattern(module_id)}",  # own keys, its queue among them
        f"~{redis_keys.module_task_pattern(module_id)}",  # own task records
        *(f"%R~{pattern}" for pattern in MODULE_PUBLIC_READS),
        *(f"~{p}" for p in repository_lease_patterns(image, module_uuid, restore_source)),
        "resetchannels",
        f"&progress/{agent_id}/*",
        f"&{agent_id}/event/*",
    ]
    for owner in granted:
        if owner == agent_id:
            continue
        # Push only (no reading the queue: queued tasks carry their data in clear), and
        # follow and collect what it pushed.
        rules += [
            f"%W~{redis_keys.task_queue(owner)}",
            f"%R~task/{owner}/*",
            f"&{redis_keys.task_progress_channel(owner, '*')}",
        ]
    return rules


def setuser_args(user: str, password_hash: str, rules: Sequence[str]) -> list[str]:
    """Arguments of `ACL SETUSER` that make user exactly this (reset first: idempotent)."""
    if not re.fullmatch(r"[0-9a-f]{64}", password_hash):
        raise ValueError("a password hash is 64 hex digits")
    return [user, "reset", "on", f"#{password_hash}", *rules]


def agent_url(base_url: str, user: str, password: str) -> str:
    """base_url (the node's Redis URL) with user and password in place of its own."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def anonymous_url(base_url: str) -> str:
    """base_url without credentials: the `default` user (NS8's unprivileged connection)."""
    parts = urlsplit(base_url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
