"""podman: argv builders (pure) and the few calls the node makes."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path

from agent.adapters import proc
from agent.core.errors import AgentError

PODMAN = "podman"
MODULE_LABEL = "org.nethserver.module"  # set on a volume by the module that created it


def volume_names_argv() -> list[str]:
    return [PODMAN, "volume", "ls", "--format", "{{.Name}}"]


def volume_owners_argv() -> list[str]:
    """Each volume's name and module label, tab-separated (a name never holds a tab)."""
    return [
        PODMAN,
        "volume",
        "ls",
        "--format",
        f'{{{{.Name}}}}\t{{{{index .Labels "{MODULE_LABEL}"}}}}',
    ]


def volume_bind_argv(name: str, device: str, module_id: str) -> list[str]:
    """A volume whose data is the host directory device (NS8's volume on another disk)."""
    return [
        *(PODMAN, "volume", "create", "--label", f"{MODULE_LABEL}={module_id}"),
        *("--opt", "type=none", "--opt", "o=bind", "--opt", f"device={device}", name),
    ]


def create_bind_volume(
    name: str, device: str, module_id: str, env: dict[str, str], run_as: proc.RunAs | None = None
) -> None:
    """Create volume name on device (run_as: in that user's own store); AgentError when
    podman refuses (a volume of that name exists already, among others)."""
    done = proc.run(volume_bind_argv(name, device, module_id), env=env, timeout=60, run_as=run_as)
    if done.returncode != 0:
        raise AgentError(
            f"cannot create volume {name} on {device}: {proc.last_line(done.error_text)}"
        )


def volume_place_argv(name: str) -> list[str]:
    """A volume's mount point, its device and its mount options, tab-separated."""
    fields = '{{.Mountpoint}}\t{{index .Options "device"}}\t{{index .Options "o"}}'
    return [PODMAN, "volume", "inspect", "--format", fields, name]


def parse_volume_place(text: str) -> tuple[str, str | None]:
    """volume_place_argv's output → (mount point, the directory it binds, or None)."""
    mountpoint, _, rest = text.strip("\n").partition("\t")
    device, _, options = rest.partition("\t")
    bound = device not in ("", "<no value>") and "bind" in options.split(",")
    return mountpoint, device if bound else None


def volume_rm_argv(names: list[str]) -> list[str]:
    return [PODMAN, "volume", "rm", "--force", *names]


def create_argv(image: str, name: str) -> list[str]:
    # A scratch image has no command; create never runs it, so any path will do.
    return [PODMAN, "create", "--name", name, image, "/imageroot-extract"]


def cp_argv(container: str, source: str, target: Path) -> list[str]:
    return [PODMAN, "cp", f"{container}:{source}", str(target)]


def rm_argv(container: str) -> list[str]:
    return [PODMAN, "rm", "--force", container]


def module_volumes(
    module_id: str,
    all_names: Collection[str],
    module_ids: Collection[str] = (),
    owners: Mapping[str, str] | None = None,
) -> list[str]:
    """Rootfull volumes of module_id, named '<module_id>-<name>', and never another's:
    'foo1-bar1-data' belongs to module foo1-bar1 when that id is in module_ids, and a
    volume whose module label (owners) names another module is that module's."""
    prefix = f"{module_id}-"
    longer = [f"{other}-" for other in module_ids if other.startswith(prefix)]
    owners = owners or {}
    return sorted(
        name
        for name in all_names
        if name.startswith(prefix)
        and len(name) > len(prefix)
        and not any(name.startswith(other) for other in longer)
        and owners.get(name, module_id) in (module_id, "")
    )


def parse_volume_owners(text: str) -> dict[str, str]:
    """volume_owners_argv's output → {volume name: module label, '' when none}."""
    owners = {}
    for line in text.splitlines():
        name, _, owner = line.partition("\t")
        if name.strip():
            owners[name.strip()] = "" if owner.strip() == "<no value>" else owner.strip()
    return owners


def list_module_volumes(
    module_id: str, module_ids: Collection[str], env: dict[str, str]
) -> list[str]:
    """The volumes of module_id on this node (module_ids: every installed module)."""
    result = proc.run(volume_owners_argv(), env=env, check=True, timeout=60)
    owners = parse_volume_owners(result.text)
    return module_volumes(module_id, list(owners), module_ids, owners)


def list_volumes(env: dict[str, str], run_as: proc.RunAs | None = None) -> list[str]:
    """Every volume of the store (run_as: that user's own)."""
    result = proc.run(volume_names_argv(), env=env, check=True, timeout=60, run_as=run_as)
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


def image_id(image: str, env: dict[str, str], run_as: proc.RunAs | None = None) -> str | None:
    """The id of the image a name points to on this node (in run_as's own store); None
    when it is not here."""
    done = proc.run(
        [PODMAN, "image", "inspect", "--format", "{{.Id}}", image],
        env=env,
        timeout=60,
        run_as=run_as,
    )
    found = done.text.strip()
    return found if done.returncode == 0 and found and "/" not in found else None


def install_imageroot(
    image: str,
    base: Path | None,
    target: Path,
    env: dict[str, str],
    cache: Path | None = None,
    known_id: str | None = None,
) -> None:
    """target = base imageroot (if any) overlaid by the image's own (the image's file
    wins). known_id: the image's id when the caller has just inspected it."""
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        own = _image_imageroot(image, staging, env, cache, known_id)
        tree = staging / "tree"
        if base is not None:
            shutil.copytree(base, tree, symlinks=True)
        shutil.copytree(own, tree, symlinks=True, dirs_exist_ok=True)
        tree.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _image_imageroot(
    image: str, staging: Path, env: dict[str, str], cache: Path | None, known_id: str | None
) -> Path:
    """The image's /imageroot, to copy from and never to change: extracted under staging,
    or kept in cache/<id>. An image id names fixed content, so what was extracted once
    for an id serves the next install too (a restore, a second instance): no container
    to create, copy out of and remove."""
    known = (known_id or image_id(image, env)) if cache is not None else None
    if cache is None or known is None:  # not on this node yet: podman create pulls it
        return extract_imageroot(image, staging, env)
    kept = cache / known / "imageroot"
    if not kept.is_dir():
        _keep(known, cache / known, env)
    return kept


def _keep(known: str, entry: Path, env: dict[str, str]) -> None:
    """Image known's /imageroot into entry/imageroot, whole or not at all (two installs
    may race). By id, not by name: a name moved to another image cannot land here."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".part-", dir=entry.parent))
    try:
        extract_imageroot(known, partial, env)
        try:
            partial.rename(entry)
        except OSError:
            if not (entry / "imageroot").is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def image_inspect_argv(image: str) -> list[str]:
    return [PODMAN, "image", "inspect", image]


def inspect_pulled_image(image: str, env: dict[str, str]) -> str:
    """`podman image inspect`'s JSON for image, pulled first when it is not here: one
    podman call for every label and id add-module reads (each call costs ~0.2 s)."""
    done = proc.run(image_inspect_argv(image), env=env, timeout=60)
    if done.returncode != 0:
        pulled = proc.run([PODMAN, "pull", "--quiet", image], env=env, timeout=900)
        if pulled.returncode != 0:
            raise AgentError(f"cannot use image {image}: {proc.last_line(pulled.error_text)}")
        done = proc.run(image_inspect_argv(image), env=env, timeout=60, check=True)
    return done.text


def inspect_image(image: str, env: dict[str, str]) -> str:
    """`podman image inspect`'s JSON for an image on this node (agent/core/image_labels.py
    reads it); raises AgentError when the image is not here."""
    done = proc.run(image_inspect_argv(image), env=env, timeout=60)
    if done.returncode != 0:
        raise AgentError(f"cannot inspect image {image}: {done.error_text.strip()}")
    return done.text
