"""podman: argv builders (pure) and the few calls the node makes."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from agent import proc
from agent.errors import AgentError

PODMAN = "podman"


def volume_names_argv() -> list[str]:
    return [PODMAN, "volume", "ls", "--format", "{{.Name}}"]


def volume_rm_argv(names: list[str]) -> list[str]:
    return [PODMAN, "volume", "rm", "--force", *names]


def create_argv(image: str, name: str) -> list[str]:
    # A scratch image has no command; create never runs it, so any path will do.
    return [PODMAN, "create", "--name", name, image, "/imageroot-extract"]


def cp_argv(container: str, source: str, target: Path) -> list[str]:
    return [PODMAN, "cp", f"{container}:{source}", str(target)]


def rm_argv(container: str) -> list[str]:
    return [PODMAN, "rm", "--force", container]


def module_volumes(module_id: str, all_names: list[str]) -> list[str]:
    """Rootfull module volumes: named '<module_id>-<name>'."""
    prefix = f"{module_id}-"
    return sorted(n for n in all_names if n.startswith(prefix) and len(n) > len(prefix))


def list_volumes(env: dict[str, str]) -> list[str]:
    result = proc.run(volume_names_argv(), env=env, check=True, timeout=60)
    return [line for line in result.text.splitlines() if line.strip()]


def remove_volumes(names: list[str], env: dict[str, str]) -> None:
    if names:
        proc.run(volume_rm_argv(names), env=env, check=True, timeout=120)


def extract_imageroot(image: str, target: Path, env: dict[str, str]) -> Path:
    """Copy the image's /imageroot into target/imageroot; raises AgentError when absent."""
    name = f"extract-{uuid.uuid4().hex[:12]}"
    created = proc.run(create_argv(image, name), env=env, timeout=300)
    if created.returncode != 0:
        raise AgentError(f"cannot use image {image}: {created.error_text.strip()}")
    try:
        copied = proc.run(cp_argv(name, "/imageroot", target / "imageroot"), env=env, timeout=300)
        if copied.returncode != 0:
            raise AgentError(f"image {image} has no /imageroot: {copied.error_text.strip()}")
    finally:
        proc.run(rm_argv(name), env=env, timeout=60)
    return target / "imageroot"


def install_imageroot(image: str, base: Path, target: Path, env: dict[str, str]) -> None:
    """target = base imageroot overlaid by the image's own (the image's file wins)."""
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        own = extract_imageroot(image, staging, env)
        tree = staging / "tree"
        shutil.copytree(base, tree, symlinks=True)
        shutil.copytree(own, tree, symlinks=True, dirs_exist_ok=True)
        tree.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
