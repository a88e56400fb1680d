"""cluster/acls: the Redis ACL user of each agent, as the cluster recorded it.

One hash field per agent id (its Redis user name): the SHA-256 of its password (never the
password: a module's lives in its own state/agent.env, a node's in its agent.json) and,
for a module, the task queues its image's authorizations let it push to. The Redis's own
ACL is made from this record (agent/runtime/agent_acls.py), so a Redis restarted
without its ACL gets it back from here.
"""

from __future__ import annotations

import json

from pydantic import Field

from agent.adapters.redis_api import Pipeline, Redis
from agent.core import redis_acl, redis_keys
from agent.records.stored import StoredRecord, parse_stored


class AgentAcl(StoredRecord):
    """One agent's Redis user."""

    user: str
    password_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    granted: tuple[str, ...] = ()  # modules: queue owners it may push tasks to

    def rules(self) -> list[str]:
        agent = redis_keys.AgentId.parse(self.user)
        if agent.kind == "module":
            return redis_acl.module_rules(agent.module_id, self.granted)
        return list(redis_acl.NODE_RULES)

    def setuser_args(self) -> list[str]:
        return redis_acl.setuser_args(self.user, self.password_sha256, self.rules())

    def stored_value(self) -> str:
        return json.dumps({"password_sha256": self.password_sha256, "granted": self.granted})


def read_acls(redis: Redis) -> list[AgentAcl]:
    """Every recorded agent user, in user order."""
    return [
        parse_stored(AgentAcl, redis_keys.CLUSTER_ACLS, _with_user(user, text))
        for user, text in sorted(redis.hgetall(redis_keys.CLUSTER_ACLS).items())
    ]


def _with_user(user: str, text: str) -> object:
    try:
        data = json.loads(text)
    except ValueError:
        return text  # refused by parse_stored, naming the key
    return {**data, "user": user} if isinstance(data, dict) else data


def write_acl(pipe: Pipeline, acl: AgentAcl) -> None:
    pipe.hset(redis_keys.CLUSTER_ACLS, acl.user, acl.stored_value())


def delete_acl(pipe: Pipeline, user: str) -> None:
    pipe.hdel(redis_keys.CLUSTER_ACLS, user)
