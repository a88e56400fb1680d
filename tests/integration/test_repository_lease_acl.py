"""Under a module's own Redis credentials, the only repository leases it can hold are its
own repository's (<image>/<uuid>, any destination) and, while a restore into it runs, the
restore source's; a restore that ended, failed or died takes that grant with it. Real
Redis; the leases are taken with the agent's own lock code (agent/runtime/locks.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from agent.adapters.redis_api import Redis
from agent.adapters.redis_store import Context, connect
from agent.core import redis_acl, redis_keys
from agent.core.settings import Settings
from agent.runtime import agent_acls, locks, restore_grants
from agent.runtime.agentenv import read_env_file
from agent.runtime.lease import Holder

OWN_UUID = "0b6c4f7e-1111-4a1a-9d8e-000000000001"
OTHER_UUID = "0b6c4f7e-2222-4a1a-9d8e-000000000002"
OWN = f"minwiki/{OWN_UUID}"
OTHER = f"minwiki/{OTHER_UUID}"


@dataclass
class Module:
    id: str
    client: Redis

    def can_hold(self, destination: str, path: str) -> bool:
        """Take and release the repository's lease as module-side restic does."""
        try:
            held = locks.acquire(self.client, redis_keys.repository_lease(destination, path))
        except redis.exceptions.NoPermissionError:
            return False
        held.release()
        return True


@pytest.fixture
def module(redis_client: redis.Redis, redis_url: str) -> Iterator[Module]:
    admin = connect(redis_url)
    agent_id = "module/minwiki1"
    password = agent_acls.create_agent_user(
        admin, agent_id, ("cluster",), image="minwiki", module_uuid=OWN_UUID
    )
    client = connect(redis_acl.agent_url(redis_url, agent_id, password))
    try:
        yield Module("minwiki1", client)
    finally:
        client.close()
        agent_acls.remove_agent_user(admin, agent_id)


def test_a_module_holds_its_own_lease_and_no_other(
    module: Module, redis_client: redis.Redis
) -> None:
    assert module.can_hold("d1", OWN)
    assert module.can_hold("d2", OWN)  # its repository on any destination
    assert not module.can_hold("d1", OTHER)
    assert not module.can_hold("d1", f"other/{OWN_UUID}")  # the uuid under another image
    assert not module.can_hold("d1", f"minwiki/minwiki7@{OWN_UUID}")
    # Nor the note of written repositories (only the node's runs write it).
    with pytest.raises(redis.exceptions.NoPermissionError):
        module.client.hset(redis_keys.written_repositories("d1"), OTHER, "")
    assert not redis_client.exists(redis_keys.repository_lease("d1", OTHER))


def test_a_restore_grant_lends_the_source_lease_while_it_runs(
    module: Module, redis_client: redis.Redis, redis_url: str
) -> None:
    admin = connect(redis_url)
    with agent_acls.restore_grant(admin, module.id, "d1", OTHER):
        assert module.can_hold("d1", OTHER)
        assert not module.can_hold("d2", OTHER)  # that source only, on its destination
        assert module.can_hold("d1", OWN)
        recorded = json.loads(redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, module.id))
        assert (recorded["destination"], recorded["path"]) == ("d1", OTHER)  # the gateway's
    assert not module.can_hold("d1", OTHER)
    assert module.can_hold("d1", OWN)
    assert redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, module.id) is None

    # A restore that fails takes its grant with it as well.
    with pytest.raises(RuntimeError), agent_acls.restore_grant(admin, module.id, "d1", OTHER):
        assert module.can_hold("d1", OTHER)
        raise RuntimeError("restic failed")
    assert not module.can_hold("d1", OTHER)
    assert redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, module.id) is None


CRASHING_RESTORE = """
import sys, time
from agent.adapters.redis_store import Context, connect
from agent.runtime import agent_acls
with agent_acls.restore_grant(connect(sys.argv[1]), sys.argv[2], "d1", sys.argv[3]):
    print("granted", flush=True)
    time.sleep(600)
"""


def test_a_restore_that_died_leaves_no_grant_past_the_next_sync(
    module: Module, redis_client: redis.Redis, redis_url: str
) -> None:
    admin = connect(redis_url)
    # A restore step killed outright (SIGKILL: no finally runs) while it held the grant.
    restore = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RESTORE, redis_url, module.id, OTHER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert restore.stdout is not None
        assert restore.stdout.readline().strip() == "granted"
        assert module.can_hold("d1", OTHER)
    finally:
        restore.kill()
        restore.wait()
    assert module.can_hold("d1", OTHER)  # left behind by the crash
    # The next daemon start (or Redis-restart sync) applies the users: its holder is
    # gone, so the grant goes and the user is narrowed again.
    assert agent_acls.apply_acls(admin) == 1
    assert redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, module.id) is None
    assert not module.can_hold("d1", OTHER)
    assert module.can_hold("d1", OWN)


def test_a_grant_its_holder_stopped_renewing_goes_at_the_next_sweep(
    module: Module, redis_client: redis.Redis, redis_url: str
) -> None:
    admin = connect(redis_url)
    # A holder on another node (its pid means nothing here) that died: it renews no more.
    holder = Holder("another-node", 4242, "dead", "otherboot.4026531836")
    restore_grants.write(admin, module.id, "d1", OTHER, holder)
    assert agent_acls.apply_module_user(admin, module.id)
    assert module.can_hold("d1", OTHER)
    assert agent_acls.drop_stale_grants(admin) == []  # live until it expires
    # ... TTL seconds later (the expiry set back rather than waited for):
    grant = json.loads(redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, module.id))
    grant["expires"] -= restore_grants.TTL_SECONDS + 1
    redis_client.hset(redis_keys.GATEWAY_RESTORE_GRANTS, module.id, json.dumps(grant))
    assert agent_acls.drop_stale_grants(admin) == [module.id]  # a daemon's sweep
    assert not module.can_hold("d1", OTHER)
    assert redis_client.hget(redis_keys.GATEWAY_RESTORE_GRANTS, module.id) is None
    # A grant of an older agent (no holder, no expiry) is not honoured either.
    old = json.dumps({"destination": "d1", "path": OTHER})
    redis_client.hset(redis_keys.GATEWAY_RESTORE_GRANTS, module.id, old)
    assert agent_acls.apply_module_user(admin, module.id)
    assert not module.can_hold("d1", OTHER)


def test_a_module_given_its_user_late_holds_its_uuid_lease(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    ctx = Context(Settings(tmp_path, 1, redis_url), connect(redis_url))
    state = ctx.settings.state_dir("module/minwiki3")
    state.mkdir(parents=True)
    redis_client.hset(redis_keys.MODULE_UUID, "minwiki3", OWN_UUID)
    try:
        # Installed before modules had users: one now, its uuid from the cluster's record
        # (the image is known from nothing the module cannot write: any image's).
        assert agent_acls.ensure_credentials(ctx, "minwiki3")
        env = read_env_file(state / "agent.env")
        module = Module(
            "minwiki3",
            connect(redis_acl.agent_url(redis_url, env["REDIS_USER"], env["REDIS_PASSWORD"])),
        )
        assert module.can_hold("d1", OWN)
        assert not module.can_hold("d1", OTHER)
        # A user recorded before records named the repository gets its uuid at the next
        # daemon start, password unchanged.
        recorded = json.loads(redis_client.hget(redis_keys.CLUSTER_ACLS, "module/minwiki3"))
        del recorded["module_uuid"]
        redis_client.hset(redis_keys.CLUSTER_ACLS, "module/minwiki3", json.dumps(recorded))
        agent_acls.apply_acls(ctx.redis)
        assert not module.can_hold("d1", OWN)
        assert not agent_acls.ensure_credentials(ctx, "minwiki3")
        assert module.can_hold("d1", OWN)
        assert read_env_file(state / "agent.env") == env
        module.client.close()
    finally:
        agent_acls.remove_agent_user(ctx.redis, "module/minwiki3")
