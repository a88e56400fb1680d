"""Agents' Redis users: created at add-module (and node join), removed at remove-module,
and the Redis's ACL made again from cluster/acls when it restarted without it."""

from __future__ import annotations

import contextlib
import json
import logging
import os

from redis import exceptions as redis_errors

from agent.adapters.redis_api import Redis
from agent.adapters.redis_store import Context
from agent.core import filemodes, redis_acl, redis_keys
from agent.core.errors import StoredDataError
from agent.records.acls import AgentAcl, delete_acl, read_acls, write_acl
from agent.runtime.agentenv import format_env_file, read_env_file

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


def ensure_credentials(ctx: Context, module_id: str) -> bool:
    """Give a module of this node installed before modules had Redis users (no
    credentials in its agent.env, or none recorded) its user now; did it need one?"""
    agent_id = redis_keys.module_agent(module_id)
    state = ctx.settings.state_dir(agent_id)
    env = read_env_file(state / "agent.env")
    if not state.is_dir() or (
        env.get("REDIS_USER") == agent_id
        and env.get("REDIS_PASSWORD")
        and ctx.redis.hexists(redis_keys.CLUSTER_ACLS, agent_id)
    ):
        return False
    # The grants come from what add-module recorded in a cluster key, never from the
    # module's own files: its state/environment (IMAGE_URL) is the module's to write, and
    # an image it named would grant it whatever that image's label says.
    recorded = ctx.redis.hget(redis_keys.MODULE_AUTHORIZATIONS, module_id) or "[]"
    try:
        words = json.loads(recorded)
    except ValueError:
        words = []
    label = " ".join(w for w in words if isinstance(w, str)) if isinstance(words, list) else ""
    write_credentials(ctx, module_id, redis_acl.parse_authorizations(label, ctx.settings.node_id))
    return True


def write_credentials(ctx: Context, module_id: str, granted: tuple[str, ...]) -> None:
    state = ctx.settings.state_dir(redis_keys.module_agent(module_id))
    agent_id = redis_keys.module_agent(module_id)
    password = create_agent_user(ctx.redis, agent_id, granted)
    text = format_env_file({"REDIS_USER": agent_id, "REDIS_PASSWORD": password})
    # The state dir is the module's: a new file renamed over whatever agent.env is there
    # (a link is replaced, never followed).
    partial = state / f".agent.env.{os.getpid()}"
    partial.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(partial, flags, filemodes.PRIVATE_FILE), "w") as handle:
        handle.write(text)
    partial.replace(state / "agent.env")
