"""Module-side storage: a repository as a module step opens it, through a node's storage
gateway with the module's own credentials. Nothing here reads a destination's secrets
(private/*): the node's gateway holds them."""

from __future__ import annotations

from agent.adapters import gateway
from agent.adapters.redis_store import Context
from agent.core import redis_keys
from agent.core.errors import validation_error
from agent.operations.restore_source import Repository, parse_repo_path
from agent.records.destinations import Destination
from agent.runtime.agentenv import read_env_file


def module_credentials(ctx: Context, agent_id: str) -> gateway.Credentials:
    """The module's own user and password, from its state/agent.env (never the node's)."""
    return gateway.Credentials.from_env(
        read_env_file(ctx.settings.state_dir(agent_id) / "agent.env")
    )


def open_module_repository(
    ctx: Context, agent_id: str, destination_id: str, path: str
) -> Repository:
    """The repository at path ('<image>/<uuid>') as module agent_id reaches it: a `rest:`
    target on the gateway that serves it (see gateway.module_restic_target)."""
    repo_path = parse_repo_path(path)
    name = ctx.redis.hget(redis_keys.backup_repository(destination_id), "name")
    if name is None:
        raise validation_error("repository", "backup_repository_not_found", destination_id)
    found = gateway.module_restic_target(
        ctx.redis,
        ctx.settings.node_id,
        module_credentials(ctx, agent_id),
        destination_id,
        repo_path.path,
    )
    # What the restore code knows of the destination: a restic REST server (the gateway)
    # and restic's password; its provider and secrets stay on the node.
    destination = Destination(
        id=destination_id,
        name=name,
        provider="rest",
        url=f"rest:http://{found.address}/{destination_id}",
        password=found.password,
    )
    return Repository(destination, repo_path, found.target)
