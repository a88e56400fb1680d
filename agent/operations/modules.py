"""Module instances: add (cluster + node side) and remove, leaving nothing behind."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.adapters import module_users, podman, proc, restic
from agent.adapters.redis_store import Redis
from agent.core import filemodes, image_labels, redis_acl, redis_keys
from agent.core.errors import AgentError, ValidationFailed, validation_error
from agent.core.image_names import image_name
from agent.core.models import AddModuleRequest, NodeAddModuleRequest, RemoveModuleRequest
from agent.core.settings import Settings
from agent.operations import module_image, module_ports, volume_placement
from agent.operations.module_hold import held_from_backups
from agent.records.backups import backup_ids, read_backups
from agent.runtime import agent_acls, tasks
from agent.runtime.agentenv import format_env_file
from agent.runtime.module_pending import pending_modules
from agent.runtime.steps import Step

log = logging.getLogger("agent.modules")


def module_environment(
    module_id: str, module_uuid: str, image_url: str, node: int
) -> dict[str, str]:
    return {
        "MODULE_ID": module_id,
        "MODULE_UUID": module_uuid,
        "IMAGE_URL": image_url,
        "NODE_ID": str(node),
    }


# --- cluster side ----------------------------------------------------------------------
def cluster_add_module(step: Step, request: AddModuleRequest) -> dict[str, Any]:
    redis = step.ctx.redis
    if not redis.sismember(redis_keys.CLUSTER_NODES, request.node):
        raise validation_error("node", "node_not_found", request.node)
    image_name(request.image)  # rejects an unusable image name before any change
    module_uuid = request.module_uuid or str(uuid.uuid4())
    if module_uuid in redis.hvals(redis_keys.MODULE_UUID):
        raise validation_error("module_uuid", "module_uuid_in_use", module_uuid)
    added = install_module(step, request.image, request.node, module_uuid, volumes=request.volumes)
    settle_module(redis, added["module_id"])
    return added


def install_module(
    step: Step,
    image_url: str,
    node: int,
    module_uuid: str,
    cancelled: threading.Event | None = None,
    progress: tuple[int, int] = (0, 100),
    restore_uuid: bool = False,
    volumes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Add an instance (ids, node files, create-module); on any failure or cancel, none.
    It stays pending (removed by a daemon that finds this task dead) until the caller
    settles it; restore_uuid: its RESTORE_UUID entry goes with it if it is undone;
    volumes: NS8's placement of some volumes on directories (the node checks them).

    No check that module_uuid is unused: a restore that replaces keeps the uuid.
    """
    redis = step.ctx.redis
    name = image_name(image_url)
    module_id = f"{name}{redis.incr(redis_keys.module_sequence(name))}"
    environment = module_environment(module_id, module_uuid, image_url, node)
    low, high = progress
    pending = {
        "agent": step.agent_id,
        "task": step.task_id,
        "restore_uuid": module_uuid if restore_uuid else "",
    }
    with redis.pipeline(transaction=True) as pipe:
        pipe.hset(redis_keys.MODULE_PENDING, module_id, json.dumps(pending))
        pipe.hset(redis_keys.MODULE_NODE, module_id, node)
        pipe.hset(redis_keys.MODULE_UUID, module_id, module_uuid)
        pipe.hset(redis_keys.module_environment(module_id), mapping=environment)
        # As NS8's add-module: the first instance of an image becomes its default, in
        # the cluster and on its node (agent.resolve_agent_id("traefik@node") reads them).
        pipe.setnx(redis_keys.cluster_default_instance(name), module_id)
        pipe.setnx(redis_keys.node_default_instance(node, name), module_id)
        pipe.execute()
    try:
        node_result = run_subtask(
            step,
            tasks.TaskRequest(
                redis_keys.node_agent(node),
                "add-module",
                {
                    "module_id": module_id,
                    "module_uuid": module_uuid,
                    "image_url": image_url,
                    "volumes": dict(volumes or {}),
                },
                step.task_id,
            ),
            step.progress_range(low + (high - low) * 5 // 100, low + (high - low) // 2),
            cancelled,
        )
        if node_result.exit_code == 10 and isinstance(node_result.output, list):
            raise ValidationFailed(node_result.output)  # the node refused a placement
        if node_result.exit_code != 0:
            raise AgentError(
                f"node {node} could not install {module_id}: "
                f"{node_result.error.strip() or node_result.output}"
            )
        redis.publish(
            redis_keys.cluster_event(redis_keys.Event.MODULE_ADDED),
            json.dumps({"module_id": module_id, "node": node}),
        )
        created = run_subtask(
            step,
            tasks.TaskRequest(
                redis_keys.module_agent(module_id), "create-module", {}, step.task_id
            ),
            step.progress_range(low + (high - low) // 2, low + (high - low) * 95 // 100),
            cancelled,
        )
        if created.exit_code not in (0, 8):  # 8: the module defines no create-module
            raise AgentError(f"create-module of {module_id} failed: {created.error.strip()}")
    except BaseException:
        remove_module_everywhere(step, module_id, preserve_data=False)
        raise
    step.set_progress(high)
    return {
        "module_id": module_id,
        "module_uuid": module_uuid,
        "image_name": name,
        "image_url": image_url,
    }


def settle_module(redis: Redis, module_id: str) -> None:
    """The instance install_module added is complete: no recovery may undo it now."""
    redis.hdel(redis_keys.MODULE_PENDING, module_id)


def run_subtask(
    step: Step,
    request: tasks.TaskRequest,
    on_progress: tasks.ProgressHandler,
    cancelled: threading.Event | None,
) -> tasks.TaskResult:
    """Run a sub-task; once cancelled is set, cancel it and wait for it to end."""
    if cancelled is None:
        return tasks.run(step.ctx.redis, request, on_progress)
    if cancelled.is_set():
        raise AgentError("cancelled")
    [result] = tasks.run_parallel(step.ctx.redis, [request], on_progress, cancelled)
    if cancelled.is_set():
        raise AgentError(f"cancelled during {request.action} of {request.agent_id}")
    return result


def cluster_remove_module(step: Step, request: RemoveModuleRequest) -> None:
    if step.ctx.redis.hget(redis_keys.MODULE_NODE, request.module_id) is None:
        raise validation_error("module_id", "module_not_found", request.module_id)
    remove_module_everywhere(step, request.module_id, request.preserve_data)


def remove_module_everywhere(step: Step, module_id: str, preserve_data: bool) -> None:
    """Node files and volumes first, then every Redis trace of the module; a backup of
    it that is running ends first (its volumes are not pulled from under restic)."""
    with held_from_backups(step.ctx.redis, module_id):
        _remove_module_everywhere(step, module_id, preserve_data)


def _remove_module_everywhere(step: Step, module_id: str, preserve_data: bool) -> None:
    redis = step.ctx.redis
    node = redis.hget(redis_keys.MODULE_NODE, module_id)
    if node is not None:
        result = tasks.run(
            redis,
            tasks.TaskRequest(
                redis_keys.node_agent(int(node)),
                "remove-module",
                {"module_id": module_id, "preserve_data": preserve_data},
                step.task_id,
            ),
        )
        if result.exit_code != 0:
            raise AgentError(f"node {node} could not remove {module_id}: {result.error.strip()}")
    forget_module(redis, module_id)
    if node is not None:
        redis.publish(
            redis_keys.cluster_event(redis_keys.Event.MODULE_REMOVED),
            json.dumps({"module_id": module_id, "node": int(node)}),
        )


# Compare and delete in one step: an add-module may set the key between our GET and DEL.
_DELETE_IF_NAMES = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def clear_default_instances(redis: Redis, module_id: str) -> None:
    """Delete the cluster and node default-instance keys that name module_id (a default
    naming a removed module would make resolve_agent_id("X@node") point at nothing)."""
    for pattern in redis_keys.DEFAULT_INSTANCE_PATTERNS:
        for key in list(redis.scan_iter(match=pattern, count=500)):
            redis.eval(_DELETE_IF_NAMES, 1, key, module_id)


def forget_module(redis: Redis, module_id: str) -> None:
    agent_id = redis_keys.module_agent(module_id)
    agent_acls.remove_agent_user(redis, agent_id)  # first: its credentials stop working
    keys = [
        *redis.scan_iter(match=redis_keys.module_key_pattern(module_id), count=500),
        *redis.scan_iter(match=redis_keys.module_task_pattern(module_id), count=500),
    ]
    changed_backups = [
        backup.model_copy(
            update={"instances": tuple(i for i in backup.instances if i != module_id)}
        )
        for backup in read_backups(redis, backup_ids(redis))
        if module_id in backup.instances
    ]
    status_keys = list(redis.scan_iter(match=redis_keys.BACKUP_STATUS_PATTERN, count=500))
    status_keys += redis.scan_iter(match=redis_keys.BACKUP_DRILL_PATTERN, count=500)
    undone_uuid = pending_modules(redis).get(module_id, {}).get("restore_uuid")
    clear_default_instances(redis, module_id)
    with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(redis_keys.MODULE_PENDING, module_id)
        if undone_uuid:  # a restore that never completed: its uuid mapping goes too
            pipe.hdel(redis_keys.RESTORE_UUID, undone_uuid)
        pipe.hdel(redis_keys.MODULE_NODE, module_id)
        pipe.hdel(redis_keys.MODULE_UUID, module_id)
        pipe.hdel(redis_keys.MODULE_AUTHORIZATIONS, module_id)
        pipe.delete(redis_keys.task_queue(agent_id), redis_keys.task_processing(agent_id))
        if keys:
            pipe.delete(*keys)
        for backup in changed_backups:
            pipe.hset(backup.key, mapping=backup.stored_values("instances"))
        for status_key in status_keys:
            pipe.hdel(status_key, module_id)
        if changed_backups:
            ids = [str(backup.id) for backup in changed_backups]
            pipe.publish(
                redis_keys.cluster_event(redis_keys.Event.BACKUP_SCHEDULE_CHANGED),
                json.dumps({"backup_ids": ids}),
            )
        pipe.execute()


# --- node side -------------------------------------------------------------------------
def node_add_module(step: Step, request: NodeAddModuleRequest) -> None:
    settings = step.ctx.settings
    home = settings.module_entry(request.module_id)
    if home.exists() or home.is_symlink():
        raise validation_error("module_id", "module_dir_exists", request.module_id)
    inspected = podman.inspect_pulled_image(request.image_url, settings.podman_env())
    rootfull = module_users.is_rootfull(
        module_image.raw_label(inspected, module_users.ROOTFULL_LABEL)
    )
    placed = volume_placement.check_placement(settings, request.volumes, rootless=not rootfull)
    home.parent.mkdir(parents=True, exist_ok=True)
    step.set_progress(10)
    if rootfull:
        # Placed volumes first: what the module's create-module and a restore write to.
        volume_placement.create_placed_volumes(settings, request.module_id, placed, None)
        install_files(step, request, home, inspected)
        return
    user = module_users.create_user(settings, request.module_id)
    try:
        # The user's ~/.config holds the image's imageroot only: the agent's base steps
        # run from the node's own copy, as root (they start restic as the user).
        install = Path(user.home) / module_users.INSTALL_DIR
        install_files(step, request, install, inspected, base=False)
        module_users.give_tree(install, user)
        # After the install: podman's first use as the user makes its ~/.config.
        volume_placement.create_placed_volumes(settings, request.module_id, placed, user)
        load_restic_image(settings, user)
    except BaseException:
        module_users.remove_user(settings, request.module_id, preserve_data=False)
        raise


def load_restic_image(settings: Settings, user: proc.RunAs) -> None:
    """The restic image into a new rootless module's own store: its steps may run restic
    (agent.run_restic) before any backup of it puts the image there, and its user cannot
    reach the node's store (NS8 pulls a module's images when it installs it)."""
    env = settings.podman_env()
    if podman.image_id(restic.IMAGE, env) is None:
        log.warning("no %s on this node: %s's own restic cannot run yet", restic.IMAGE, user.name)
        return
    module_users.image_in_user_store(settings, user, restic.IMAGE, env)


def install_files(
    step: Step, request: NodeAddModuleRequest, home: Path, inspected: str, *, base: bool = True
) -> None:
    """The install dir (imageroot) and state/environment of a new module at home;
    inspected: `podman image inspect` of its image, read once for every label and id."""
    settings = step.ctx.settings
    podman.install_imageroot(
        request.image_url,
        settings.share / "imageroot" if base else None,
        home,
        settings.podman_env(),
        cache=settings.imageroot_cache,
        known_id=module_image.image_id_of(inspected),
    )
    state = home / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    facts = module_image.parse_image(request.image_url, inspected)
    env = module_environment(
        request.module_id, request.module_uuid, request.image_url, settings.node_id
    )
    env |= module_image.apply_image(step.ctx.redis, settings.node_id, request.module_id, facts)
    environment = state / "environment"
    environment.write_text(format_env_file(env))
    environment.chmod(filemodes.PRIVATE_FILE)
    label = module_image.raw_label(inspected, image_labels.AUTHORIZATIONS)
    write_agent_env(step, request, label, state)
    step.set_progress(100)


def write_agent_env(
    step: Step, request: NodeAddModuleRequest, label: str | None, state: Path
) -> None:
    """The module's own Redis user, live and recorded, and its credentials in its
    state/agent.env (NS8's names), the only place its password is kept. label: the
    image's authorizations label."""
    settings = step.ctx.settings
    granted = redis_acl.parse_authorizations(label or "", settings.node_id)
    agent_acls.write_credentials(
        step.ctx,
        request.module_id,
        granted,
        image=image_name(request.image_url),
        module_uuid=request.module_uuid,
    )


def node_remove_module(step: Step, request: RemoveModuleRequest) -> None:
    settings = step.ctx.settings
    if module_users.is_rootless(settings, request.module_id):
        # Its volumes live in its own store, in its home: preserve_data keeps the home.
        module_users.remove_user(settings, request.module_id, request.preserve_data)
        return
    env = settings.podman_env()
    if not request.preserve_data:
        installed = [*step.ctx.redis.hkeys(redis_keys.MODULE_NODE), *_node_module_ids(step)]
        volumes = podman.list_module_volumes(request.module_id, installed, env)
        podman.remove_volumes(volumes, env)
    home = settings.agent_home(redis_keys.module_agent(request.module_id))
    shutil.rmtree(home, ignore_errors=True)
    module_ports.deallocate_ports(step.ctx.redis, settings.node_id, request.module_id)


def _node_module_ids(step: Step) -> list[str]:
    """Modules with an install directory on this node (Redis may have lost some)."""
    modules = step.ctx.settings.root / "modules"
    return [entry.name for entry in modules.iterdir()] if modules.is_dir() else []
