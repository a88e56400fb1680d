"""cluster/acls: the Redis ACL user of each agent, as the cluster recorded it.

One hash field per agent id (its Redis user name): the SHA-256 of its password (never the
password: a module's lives in its own state/agent.env, a node's in its agent.json) and,
for a module, the task queues its image's authorizations let it push to and the image
and uuid naming its own repository (whose lease it may hold). The Redis's own ACL is made
from this record (agent/runtime/agent_acls.py), so a Redis restarted without its ACL
gets it back from here.
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
    # Modules: its own repository is <image>/<module_uuid> (as add-module installed it;
    # never read from the module's own keys or files, which it can write).
    image: str = ""
    module_uuid: str = ""

    @property
    def module_id(self) -> str | None:
        agent = redis_keys.AgentId.parse(self.user)
        return agent.module_id if agent.kind == "module" else None

    def rules(self, restore_source: tuple[str, str] | None = None) -> list[str]:
        """Its ACL rules; restore_source: (destination, path) a restore into it reads."""
        if self.module_id is None:
            return list(redis_acl.NODE_RULES)
        return redis_acl.module_rules(
            self.module_id,
            self.granted,
            image=self.image,
            module_uuid=self.module_uuid,
            restore_source=restore_source,
        )

    def setuser_args(self, restore_source: tuple[str, str] | None = None) -> list[str]:
        return redis_acl.setuser_args(self.user, self.password_sha256, self.rules(restore_source))

    def stored_value(self) -> str:
        value: dict[str, object] = {
            "password_sha256": self.password_sha256,
            "granted": self.granted,
        }
        if self.module_id is not None:
            value |= {"image": self.image, "module_uuid": self.module_uuid}
        return json.dumps(value)


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


def read_acl(redis: Redis, user: str) -> AgentAcl | None:
    """One agent's recorded user, None when it has none."""
    text = redis.hget(redis_keys.CLUSTER_ACLS, user)
    if text is None:
        return None
    return parse_stored(AgentAcl, redis_keys.CLUSTER_ACLS, _with_user(user, text))


def write_acl(pipe: Pipeline, acl: AgentAcl) -> None:
    pipe.hset(redis_keys.CLUSTER_ACLS, acl.user, acl.stored_value())


def delete_acl(pipe: Pipeline, user: str) -> None:
    pipe.hdel(redis_keys.CLUSTER_ACLS, user)
