"""NS8's subprocess helper and its agent/image/module id lookups."""

from __future__ import annotations

import csv
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.ns8api.comfd import SD_INFO, SD_WARNING

ProgressCallback = Callable[[int], None]


def progress_values(lines: Sequence[str]) -> list[int]:
    """The set-progress figures among COMFD records, as run_helper passes them on: each
    larger than the one before; every other command dropped."""
    values: list[int] = []
    for fields in csv.reader(lines, delimiter=" ", quotechar='"'):
        if len(fields) < 2 or fields[0] != "set-progress":
            continue
        try:
            value = int(float(fields[1]))
        except ValueError:
            continue
        if not values or value > values[-1]:
            values.append(value)
    return values


def run_helper(
    *args: str,
    log_command: bool = True,
    progress_callback: ProgressCallback | None = None,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    stdout: Any = None,
    **popen_kwargs: Any,
) -> Any:
    """Run args with a COMFD of its own whose increasing set-progress figures go to
    progress_callback (a final 100 if it sent none); child stdout to our stderr.
    Returns CompletedProcess(args, returncode); a non-zero exit does not raise."""
    from agent.adapters import proc

    if log_command:
        print(SD_INFO + shlex.join(args), file=sys.stderr, flush=True)
    com_read, com_write = os.pipe()
    child_env = dict(os.environ if env is None else env, AGENT_COMFD=str(com_write))
    try:
        child = proc.module_popen(
            args,
            env=child_env,
            pass_fds=(com_write, *pass_fds),
            stdout=sys.stderr if stdout is None else stdout,
            **popen_kwargs,
        )
    except BaseException:
        os.close(com_read)
        raise
    finally:
        os.close(com_write)
    last = -1
    with os.fdopen(com_read, "r", encoding="utf-8", errors="replace", newline="") as commands:
        for line in commands:  # read to EOF whatever the callback: the child must not block
            for value in progress_values([line]):
                if value > last:
                    last = value
                    if progress_callback is not None:
                        progress_callback(value)
    returncode = child.wait()
    if progress_callback is not None and last < 100:
        progress_callback(100)
    return proc.CompletedProcess(list(args), returncode)


_AT = re.compile(r"(?P<name>.+)@(?P<where>node|cluster)")


def resolve_agent_id(agent_selector: str, node_id: int | str | None = None) -> str | None:
    """'node' → node/<n>, 'self' → $AGENT_ID, 'X@node'/'X@cluster' → the default
    instance of X there, digits → node/<digits>, cluster|module/…|node/… unchanged,
    anything else → module/<selector>; None (and a warning) when nothing is found."""
    from agent.core import redis_keys  # light: key names only

    node = str(node_id if node_id is not None else os.environ.get("NODE_ID", ""))
    if agent_selector == "node":
        return redis_keys.node_agent(int(node) if node.isdigit() else node)
    if agent_selector == "self":
        return os.environ["AGENT_ID"]
    if agent_selector.isdigit():
        return redis_keys.node_agent(int(agent_selector))
    if agent_selector == "cluster" or agent_selector.startswith(("module/", "node/")):
        return agent_selector
    at = _AT.fullmatch(agent_selector)
    if at is None:
        return redis_keys.module_agent(agent_selector)
    from agent.ns8api.redisconn import redis_connect

    if at["where"] == "node":
        key = redis_keys.node_default_instance(node, at["name"])
    else:
        key = redis_keys.cluster_default_instance(at["name"])
    module_id = redis_connect(use_replica=True).get(key)
    if not module_id:
        print(
            f"{SD_WARNING}resolve_agent_id: no default instance for {agent_selector}",
            file=sys.stderr,
        )
        return None
    return redis_keys.module_agent(module_id)


def get_image_name_from_url(image_url: str) -> str:
    """'ghcr.io/org/mail:1.2' → 'mail': the last path part without tag or digest.
    ValueError when the URL has no '/' or neither a tag nor a digest."""
    from agent.core.image_names import bare_name  # light: string work only

    if "/" not in image_url:
        raise ValueError(f"image URL without a '/': {image_url!r}")
    last = image_url.rsplit("/", 1)[1]
    if "@" not in last and ":" not in last:
        raise ValueError(f"image URL without a tag or digest: {image_url!r}")
    return bare_name(image_url)


def get_module_seq(module_id: str) -> int:
    """The number a module id ends with ('mail12' → 12), or -1."""
    found = re.search(r"[0-9]+$", module_id)
    return int(found.group()) if found else -1
