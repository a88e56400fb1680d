"""What a test session leaves behind: processes, containers, volumes, images and users.

The controller marks its environment with a session id before any worker starts; every
process a test starts inherits it (workers, daemons, redis-server, rclone, podman and its
conmon), so a process still carrying the mark after the run is one a test left behind,
whatever other work shares the machine. Workers report what is left in their private
podman store just before it is deleted, since deletion would hide it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

SESSION_VARIABLE = "BACKUP_AGENT_TEST_SESSION"
# Set to 0 to skip the check, e.g. while other test runs share the machine's store.
CHECK_VARIABLE = "BACKUP_AGENT_LEAK_CHECK"


def enabled() -> bool:
    return os.environ.get(CHECK_VARIABLE, "1") != "0"


def report_dir(session: str) -> Path:
    return Path("/tmp") / f"backup-agent-leaks-{session}"


def marked_processes(session: str, exclude: set[int]) -> dict[int, str]:
    """Live (non-zombie) processes whose environment carries this session's mark."""
    marker = f"{SESSION_VARIABLE}={session}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = command.strip()[:200]
    return found


def wait_for_marked_processes(session: str, exclude: set[int], grace: float) -> dict[int, str]:
    """What still carries the mark after grace seconds (workers need a moment to exit)."""
    deadline = time.monotonic() + grace
    while True:
        found = marked_processes(session, exclude)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# Images the tests build or tag in the machine's store and keep there on purpose: cached
# build artefacts that every later session (and every private store, which reads its
# images from the machine's) reuses instead of building again. A build whose sources did
# not change gives the same image id, so a session leaves nothing new; a tag outside this
# list is a leak. Repositories, any tag (the agent's own images carry a version tag too).
CACHED_IMAGES = frozenset(
    {
        "localhost/backup-agent-node",  # containers/node/build: e2e systemd node
        "localhost/backup-agent-redis",  # containers/redis/build: the test Redis
        "localhost/backup-agent-restic",  # containers/restic/build: restic + rclone
        "localhost/minwiki",  # examples/minwiki/build: the sample module (:latest, :1.0)
        "localhost/minwiki-hooked",  # test_restore_cases: a restore step tests steer
        "localhost/minwiki-stall",  # faults/test_restore_faults: steps a test can hold
        "localhost/minwiki-authorized",  # test_module_isolation: an authorizations label
        "localhost/hostile-snapshots/minwiki",  # test_hostile_snapshots: this checkout's
        "localhost/otherwiki",  # test_hostile_snapshots: a second name for the same image
    }
)

_PODMAN_LISTS = {
    # What names one thing in a store: a container or volume re-created under an old name
    # during the session is a new one (id, creation time), not the one seen before.
    "ps": ["podman", "ps", "--all", "--format", "{{.Names}} ({{.ID}})"],
    "volume": ["podman", "volume", "ls", "--format", "{{.Name}} ({{.CreatedAt}})"],
    "image": ["podman", "images", "--format", "{{.Repository}}:{{.Tag}} ({{.ID}})"],
}


def podman_names(kind: str, env: dict[str, str] | None = None) -> set[str]:
    """Containers ('ps'), volumes ('volume') or images ('image') in the store that env
    points at, each as its name with what tells it from an earlier one of that name."""
    argv = _PODMAN_LISTS[kind]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    if result.returncode != 0:
        return set()
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def uncached_images(images: set[str]) -> set[str]:
    """The tagged images among podman_names('image') outside CACHED_IMAGES."""
    return {
        image
        for image in images
        if not image.startswith("<none>:")
        and image.split(" (", 1)[0].rsplit(":", 1)[0] not in CACHED_IMAGES
    }


def untagged_images(images: set[str]) -> set[str]:
    """Images without a tag: what a rebuild from other sources left of the one it replaced."""
    return {image for image in images if image.startswith("<none>:")}


def temp_mounts() -> set[str]:
    """Mount points under /tmp, where every test keeps its clusters and podman stores."""
    points = set()
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[1].startswith("/tmp/"):
            points.add(fields[1].encode().decode("unicode_escape"))
    return points


def users() -> set[str]:
    return {line.split(":", 1)[0] for line in Path("/etc/passwd").read_text().splitlines()}


def write_report(session: str, name: str, leftovers: dict[str, list[str]]) -> None:
    directory = report_dir(session)
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(leftovers))


def read_reports(session: str) -> dict[str, dict[str, list[str]]]:
    directory = report_dir(session)
    if not directory.is_dir():
        return {}
    return {path.stem: json.loads(path.read_text()) for path in directory.glob("*.json")}
