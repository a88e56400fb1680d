"""Agents' Redis users: created at add-module (and node join), removed at remove-module,
the Redis's ACL made again from cluster/acls when it restarted without it, and a module's
user widened to a restore's source while that restore runs (restore_grant)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator

from redis import exceptions as redis_errors

from agent.adapters.redis_api import Redis
from agent.adapters.redis_store import REDIS_ERRORS, Context
from agent.core import filemodes, redis_acl, redis_keys
from agent.core.errors import StoredDataError
from agent.records.acls import AgentAcl, delete_acl, read_acl, read_acls, write_acl
from agent.runtime import restore_grants
from agent.runtime.agentenv import format_env_file, read_env_file
from agent.runtime.lease import new_holder

log = logging.getLogger("agent.acl")


def create_agent_user(
    redis: Redis,
    agent_id: str,
    granted: tuple[str, ...] = (),
    *,
    image: str = "",
    module_uuid: str = "",
) -> str:
    """A new password for agent_id's Redis user (replacing any earlier one); the user is
    recorded and live when this returns. The password is returned, never stored.
    image, module_uuid: a module's own repository (<image>/<uuid>), whose lease it holds."""
    password = redis_acl.new_password()
    acl = AgentAcl(
        user=redis_acl.acl_user(agent_id),
        password_sha256=redis_acl.password_sha256(password),
        granted=granted,
        image=image,
        module_uuid=module_uuid,
    )
    with redis.pipeline(transaction=True) as pipe:
        write_acl(pipe, acl)
        pipe.execute()
    redis.execute_command("ACL", "SETUSER", *acl.setuser_args(_restore_source(redis, acl)))
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
    """Make every recorded user live as recorded, with the restore grants that are live
    (after a Redis restart, a daemon's start, or a rule that changed with this agent's
    version); stale grants (their restore died) are dropped. The number applied."""
    try:
        acls = read_acls(redis)
    except StoredDataError as exc:  # only nodes write it; still, the daemon must start
        log.error("cluster/acls not applied: %s", exc)
        return 0
    live, dropped = restore_grants.drop_stale(redis)
    for module_id in dropped:
        log.warning("dropped the restore grant of %s: its restore is gone", module_id)
    try:
        for acl in acls:
            grant = live.get(acl.module_id or "")
            redis.execute_command(
                "ACL", "SETUSER", *acl.setuser_args(grant.source if grant else None)
            )
    except redis_errors.ResponseError as exc:  # this node may not manage users there
        log.error("cannot apply the agents' Redis users from cluster/acls: %s", exc)
        return 0
    return len(acls)


def apply_module_user(redis: Redis, module_id: str) -> bool:
    """Make module_id's user live as recorded, with its restore grant if one is live;
    False when it has no recorded user (or this node may not manage users there)."""
    user = redis_keys.module_agent(module_id)
    try:
        acl = read_acl(redis, user)
    except StoredDataError as exc:
        log.error("%s: user not applied: %s", user, exc)
        return False
    if acl is None:
        return False
    try:
        redis.execute_command("ACL", "SETUSER", *acl.setuser_args(_restore_source(redis, acl)))
    except redis_errors.ResponseError as exc:
        log.error("cannot apply the Redis user %s: %s", user, exc)
        return False
    return True


def _restore_source(redis: Redis, acl: AgentAcl) -> tuple[str, str] | None:
    if acl.module_id is None:
        return None
    grant = restore_grants.live_grant(redis, acl.module_id)
    return grant.source if grant else None


def drop_stale_grants(redis: Redis) -> list[str]:
    """Drop the restore grants whose restore died and narrow those modules' users again
    (a daemon does it every minute, so a crash never leaves a grant for good)."""
    _live, dropped = restore_grants.drop_stale(redis)
    for module_id in dropped:
        log.warning("dropped the restore grant of %s: its restore is gone", module_id)
        apply_module_user(redis, module_id)
    return dropped


@contextlib.contextmanager
def restore_grant(
    redis: Redis, module_id: str, destination_id: str, repo_path: str
) -> Iterator[None]:
    """Let module_id read repo_path on destination_id through the gateways, and hold its
    lease, while the block runs (a restore from another module's repository). Renewed
    while it runs (and the user applied again: a sync that raced with it is undone);
    removed, and the user narrowed, when the block ends however it ends."""
    holder = new_holder()
    restore_grants.write(redis, module_id, destination_id, repo_path, holder)
    apply_module_user(redis, module_id)
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(restore_grants.RENEW_SECONDS):
            try:
                if not restore_grants.renew(redis, module_id, holder):
                    # Dropped as stale (this process stalled past its expiry): it runs.
                    restore_grants.write(redis, module_id, destination_id, repo_path, holder)
                apply_module_user(redis, module_id)
            except REDIS_ERRORS as exc:  # retried; the TTL covers two more beats
                log.warning("restore grant of %s not renewed: %s", module_id, exc)

    keeper = threading.Thread(target=keep, name=f"restore grant {module_id}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join(timeout=10)
        restore_grants.remove(redis, module_id, holder)
        apply_module_user(redis, module_id)


def ensure_credentials(ctx: Context, module_id: str) -> bool:
    """Give a module of this node installed before modules had Redis users (no
    credentials in its agent.env, or none recorded) its user now; did it need one?
    A recorded user that names no repository yet gets the module's uuid (cluster's)."""
    agent_id = redis_keys.module_agent(module_id)
    state = ctx.settings.state_dir(agent_id)
    env = read_env_file(state / "agent.env")
    # The uuid as the cluster recorded it; the image is not known from anything the
    # module cannot write, so such a module's own lease is any image's with its uuid.
    module_uuid = ctx.redis.hget(redis_keys.MODULE_UUID, module_id) or ""
    if not state.is_dir():
        return False
    if env.get("REDIS_USER") == agent_id and env.get("REDIS_PASSWORD"):
        try:
            acl = read_acl(ctx.redis, agent_id)
        except StoredDataError:
            acl = None  # made anew below
        if acl is not None:
            if not acl.module_uuid and module_uuid:
                with ctx.redis.pipeline(transaction=True) as pipe:
                    write_acl(pipe, acl.model_copy(update={"module_uuid": module_uuid}))
                    pipe.execute()
                apply_module_user(ctx.redis, module_id)
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
    granted = redis_acl.parse_authorizations(label, ctx.settings.node_id)
    write_credentials(ctx, module_id, granted, module_uuid=module_uuid)
    return True


def write_credentials(
    ctx: Context,
    module_id: str,
    granted: tuple[str, ...],
    *,
    image: str = "",
    module_uuid: str = "",
) -> None:
    state = ctx.settings.state_dir(redis_keys.module_agent(module_id))
    agent_id = redis_keys.module_agent(module_id)
    password = create_agent_user(ctx.redis, agent_id, granted, image=image, module_uuid=module_uuid)
    text = format_env_file({"REDIS_USER": agent_id, "REDIS_PASSWORD": password})
    # The state dir is the module's: a new file renamed over whatever agent.env is there
    # (a link is replaced, never followed).
    partial = state / f".agent.env.{os.getpid()}"
    partial.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(partial, flags, filemodes.PRIVATE_FILE), "w") as handle:
        handle.write(text)
    partial.replace(state / "agent.env")
