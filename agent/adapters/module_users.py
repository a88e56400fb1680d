"""Rootless modules' Unix users: created with the module, removed with it, and the
identity (proc.RunAs) their steps, hooks and restic containers run under.

A module is rootless on this node when its install entry `<root>/modules/<id>` is a link
to `~<id>/.config` (NS8's AGENT_INSTALL_DIR); the link lives in the node's own data dir,
so a module cannot make itself rootfull or point the node at another user's home.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

from agent.adapters import podman, proc
from agent.core import redis_keys
from agent.core.errors import AgentError
from agent.core.settings import Settings

log = logging.getLogger("agent.users")

ROOTFULL_LABEL = "org.nethserver.rootfull"
INSTALL_DIR = ".config"  # NS8: AGENT_INSTALL_DIR=%E, the user's ~/.config
HOME_BASE = Path("/home")  # NS8's default HOME_BASEDIR
NOLOGIN = "/usr/sbin/nologin"


class ModuleUserError(AgentError):
    """A rootless module's user or home is missing or not as the node made it."""


def is_rootfull(labels_value: str | None) -> bool:
    """NS8: org.nethserver.rootfull = "1" is rootfull; anything else, or none, rootless."""
    return labels_value == "1"


def user_name(module_id: str) -> str:
    """The module's Unix user: named as the module, as NS8 names it."""
    return module_id


def run_as_entry(settings: Settings, entry: pwd.struct_passwd) -> proc.RunAs:
    return proc.RunAs(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        home=entry.pw_dir,
        containers_conf=str(settings.share / "containers" / "containers.conf"),
    )


def install_link(settings: Settings, module_id: str) -> Path:
    return settings.module_entry(module_id)


def module_user_of(settings: Settings, agent_id: str) -> proc.RunAs | None:
    """module_user of a module agent; None for the cluster and node agents."""
    agent = redis_keys.AgentId.parse(agent_id)
    return module_user(settings, agent.module_id) if agent.kind == "module" else None


def is_rootless(settings: Settings, module_id: str) -> bool:
    return install_link(settings, module_id).is_symlink()


def module_user(settings: Settings, module_id: str) -> proc.RunAs | None:
    """The user a rootless module runs as (its runtime dir made), None for a rootfull
    module; ModuleUserError when its user or install dir is not the one the node made
    (a link where a directory belongs would send the node's own reads elsewhere)."""
    link = install_link(settings, module_id)
    if not link.is_symlink():
        return None
    try:
        entry = pwd.getpwnam(user_name(module_id))
    except KeyError:
        raise ModuleUserError(f"the user of rootless module {module_id} is missing") from None
    install = Path(entry.pw_dir) / INSTALL_DIR
    if os.readlink(link) != str(install):
        raise ModuleUserError(f"{link} does not lead to {install}")
    for path in (install, install / "state"):
        try:
            seen = os.lstat(path)
        except FileNotFoundError:
            raise ModuleUserError(f"{path} is missing") from None
        if not stat.S_ISDIR(seen.st_mode) or seen.st_uid != entry.pw_uid:
            raise ModuleUserError(f"{path} is not a directory of {entry.pw_name}: refused")
    user = run_as_entry(settings, entry)
    make_runtime_dir(user)
    return user


def make_runtime_dir(user: proc.RunAs) -> None:
    """/run/user/<uid> as logind would make it (no logind here): rootless podman keeps
    its runtime state there."""
    path = Path(user.runtime_dir)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    seen = os.lstat(path)
    if not stat.S_ISDIR(seen.st_mode):
        raise ModuleUserError(f"{path} is not a directory")
    if seen.st_uid != user.uid or stat.S_IMODE(seen.st_mode) != 0o700:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)
        os.chmod(path, 0o700, follow_symlinks=False)


def create_user(settings: Settings, module_id: str) -> proc.RunAs:
    """useradd (home HOME_BASE/<name>, 0700, subordinate ids from /etc/login.defs, no login
    shell), refused when a user of that name exists: it is someone else's. The node's link
    to ~/.config is made first, so a node that dies in between still knows the user is the
    module's, and remove_user finds it."""
    name = user_name(module_id)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        raise ModuleUserError(f"a Unix user named {name} exists already")
    home = HOME_BASE / name
    link = install_link(settings, module_id)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(home / INSTALL_DIR)
    done = proc.run(useradd_argv(name, home), timeout=120)
    if done.returncode != 0:
        link.unlink()
        raise ModuleUserError(f"cannot create user {name}: {proc.last_line(done.error_text)}")
    entry = pwd.getpwnam(name)
    os.chmod(entry.pw_dir, 0o700)
    user = run_as_entry(settings, entry)
    make_runtime_dir(user)
    return user


def useradd_argv(name: str, home: Path) -> list[str]:
    return [
        *("useradd", "--create-home", "--home-dir", str(home)),
        *("--user-group", "--shell", NOLOGIN, name),
    ]


def userdel_argv(name: str) -> list[str]:
    return ["userdel", "--force", name]


def give_tree(path: Path, user: proc.RunAs) -> None:
    """path and everything below it owned by user (links themselves, never followed)."""
    os.lchown(path, user.uid, user.gid)
    for top, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(top, name), user.uid, user.gid)


def user_processes(uid: int) -> list[int]:
    """The pids of every process whose real or effective uid is uid."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                ids = line.split()[1:3]
                if str(uid) in ids:
                    pids.append(int(entry.name))
                break
    return pids


def stop_user_processes(uid: int, timeout: float = 30.0) -> None:
    """SIGKILL every process of the user (its podman pause process, a container's conmon
    …) until none is left: a user is removed only once nothing runs as it."""
    deadline = time.monotonic() + timeout
    while True:
        pids = user_processes(uid)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise ModuleUserError(f"processes of uid {uid} keep running: {pids[:10]}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_user(settings: Settings, module_id: str, preserve_data: bool) -> None:
    """Undo create_user: its processes killed; its runtime dir, home (unless preserve_data:
    the volumes live there), user, subordinate ids and the node's link gone."""
    link = install_link(settings, module_id)
    name = user_name(module_id)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    if entry is not None:
        stop_user_processes(entry.pw_uid)
        shutil.rmtree(f"/run/user/{entry.pw_uid}", ignore_errors=True)
        if not preserve_data:
            remove_home(Path(entry.pw_dir))
        done = proc.run(userdel_argv(name), timeout=120)
        if done.returncode != 0:
            raise ModuleUserError(f"cannot remove user {name}: {proc.last_line(done.error_text)}")
    link.unlink(missing_ok=True)


def remove_home(home: Path) -> None:
    """rm -rf of the home (root may delete in the read-only directories of a vfs store)."""
    shutil.rmtree(home, ignore_errors=True)
    if home.exists():
        raise ModuleUserError(f"cannot remove {home}")


# --- the restic image in the user's store ----------------------------------------------
def image_in_user_store(
    settings: Settings, user: proc.RunAs, image: str, root_env: dict[str, str]
) -> None:
    """Make image (by the same id as in the node's store) present in the user's own
    store: `podman save` once per image id into the node's cache, `podman load` as the
    user once per user and id."""
    wanted = podman.image_id(image, root_env)
    if wanted is None:
        raise AgentError(f"image {image} is not on this node")
    if podman.image_id(image, {}, run_as=user) == wanted:
        return
    archive = settings.root / "cache" / "images" / f"{wanted}.tar"
    if not archive.is_file():
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(f".{os.getpid()}.part")
        saved = proc.run(
            [podman.PODMAN, "save", "--quiet", "--output", str(partial), image],
            env=root_env,
            timeout=900,
        )
        if saved.returncode != 0:
            partial.unlink(missing_ok=True)
            raise AgentError(f"cannot save {image}: {proc.last_line(saved.error_text)}")
        partial.rename(archive)
    with archive.open("rb") as stream:  # read by root: the user cannot reach the cache
        loaded = proc.run(
            [podman.PODMAN, "load", "--quiet"],
            stdin=stream,
            cwd=user.home,
            timeout=900,
            run_as=user,
        )
    if loaded.returncode != 0:
        raise AgentError(
            f"cannot load {image} for {user.name}: {proc.last_line(loaded.error_text)}"
        )


# --- owners as the module's containers see them ----------------------------------------
SUBUID_FILE = Path("/etc/subuid")
SUBGID_FILE = Path("/etc/subgid")


def subordinate_range(name: str, text: str) -> tuple[int, int] | None:
    """(first id, count) of name's line in /etc/subuid or /etc/subgid text."""
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == name and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def inside_id(host_id: int, own_id: int, subordinate: tuple[int, int] | None) -> int | None:
    """The id a host id has in a rootless user namespace (own id → 0, the subordinate
    range → 1…); None when the namespace does not map it."""
    if host_id == own_id:
        return 0
    if subordinate is not None:
        first, count = subordinate
        if first <= host_id < first + count:
            return host_id - first + 1
    return None


def namespace_owner(user: proc.RunAs) -> Callable[[int, int], str]:
    """'uid:gid' of a host owner as seen inside the user's containers ('?host' when the
    namespace does not map it)."""
    uids = subordinate_range(user.name, SUBUID_FILE.read_text())
    gids = subordinate_range(user.name, SUBGID_FILE.read_text())

    def owner(uid: int, gid: int) -> str:
        inside_uid, inside_gid = inside_id(uid, user.uid, uids), inside_id(gid, user.gid, gids)
        return (
            f"{inside_uid if inside_uid is not None else f'?{uid}'}:"
            f"{inside_gid if inside_gid is not None else f'?{gid}'}"
        )

    return owner
