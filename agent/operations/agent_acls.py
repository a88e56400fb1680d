"""Agents' Redis users: created at add-module (and node join), removed at remove-module,
and the Redis's ACL made again from cluster/acls when it restarted without it."""

from __future__ import annotations

import contextlib
import logging

from redis import exceptions as redis_errors

from agent.adapters.redis_api import Redis
from agent.core import redis_acl
from agent.core.errors import StoredDataError
from agent.records.acls import AgentAcl, delete_acl, read_acls, write_acl

log = logging.getLogger("agent.acl")


def create_agent_user(redis: Redis, agent_id: str, granted: tuple[str, ...] = ()) -> str:
    """A new password for agent_id's Redis user (replacing any earlier one); the user is
    recorded and live when this returns. The password is returned, never stored."""
    password = redis_acl.new_password()
    acl = AgentAcl(
        user=redis_acl.acl_user(agent_id),
        password_sha256=redis_acl.password_sha256(password),
        granted=granted,
    )
    with redis.pipeline(transaction=True) as pipe:
        write_acl(pipe, acl)
        pipe.execute()
    redis.execute_command("ACL", "SETUSER", *acl.setuser_args())
    save_acl_file(redis)
    return password


def remove_agent_user(redis: Redis, agent_id: str) -> None:
    """Forget agent_id's user: its record, then the live user (its connections drop)."""
    user = redis_acl.acl_user(agent_id)
    with redis.pipeline(transaction=True) as pipe:
        delete_acl(pipe, user)
        pipe.execute()
    redis.execute_command("ACL", "DELUSER", user)
    save_acl_file(redis)


def save_acl_file(redis: Redis) -> None:
    """ACL SAVE, for a Redis run with an aclfile (an operator's): it then keeps the users
    over a restart by itself. Without one (the embedded Redis) the record is what counts."""
    with contextlib.suppress(redis_errors.ResponseError):
        redis.execute_command("ACL", "SAVE")


def apply_acls(redis: Redis) -> int:
    """Make every recorded user live as recorded (after a Redis restart, or a rule that
    changed with this agent's version); the number applied."""
    try:
        acls = read_acls(redis)
    except StoredDataError as exc:  # only nodes write it; still, the daemon must start
        log.error("cluster/acls not applied: %s", exc)
        return 0
    try:
        for acl in acls:
            redis.execute_command("ACL", "SETUSER", *acl.setuser_args())
    except redis_errors.ResponseError as exc:  # this node may not manage users there
        log.error("cannot apply the agents' Redis users from cluster/acls: %s", exc)
        return 0
    return len(acls)
