"""restic's command lines: every argument list the agent gives restic, built by pure
functions (what follows the image in `podman run`; see restic.podman_run_argv)."""

from __future__ import annotations

from collections.abc import Sequence


def snapshot_arg(snapshot: str) -> str:
    """NS8: an empty snapshot means the latest one."""
    return snapshot or "latest"


def init_args() -> list[str]:
    """`init`, its config id on stdout as JSON."""
    return ["init", "--json"]


def unlock_args() -> list[str]:
    """Remove every lock, live or not: only a lease holder that knows no restic of its
    own is at work on the repository may ask this."""
    return ["unlock", "--remove-all"]


def backup_args(
    *, tags: Sequence[str] = (), host: str | None = None, exclude_file: str | None = None
) -> list[str]:
    """`restic backup` with JSON output; the paths and patterns come on standard input."""
    args = ["backup", "--json"]
    for tag in tags:
        args += ["--tag", tag]
    if host:
        args += ["--host", host]
    args += ["--files-from", "-"]
    if exclude_file:
        args += ["--exclude-file", exclude_file]
    return args


def forget_args(
    keep_last: int,
    *,
    tags: Sequence[str] = (),
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    keep_monthly: int | None = None,
    keep_yearly: int | None = None,
    keep_within: str | None = None,
    group_by: str = "",
    prune: bool = True,
) -> list[str]:
    """`forget` of the snapshots carrying tags, in one group: grouping by paths (restic's
    default) would strand old snapshots out of retention's reach when an include list
    changes, and grouping by host when a module is restored under a new id."""
    args = ["forget", "--json", f"--group-by={group_by}", f"--keep-last={keep_last}"]
    for flag, value in (
        ("--keep-daily", keep_daily),
        ("--keep-weekly", keep_weekly),
        ("--keep-monthly", keep_monthly),
        ("--keep-yearly", keep_yearly),
    ):
        if value:
            args.append(f"{flag}={value}")
    if keep_within:
        args.append(f"--keep-within={keep_within}")
    for tag in tags:
        args += ["--tag", tag]
    if prune:
        args.append("--prune")
    return args


def snapshots_args(*, tags: Sequence[str] = ()) -> list[str]:
    """The snapshots (of tags, when given) as one JSON list, without locking."""
    args = ["snapshots", "--no-lock", "--json"]
    for tag in tags:
        args += ["--tag", tag]
    return args


def restore_args(
    snapshot: str,
    target: str,
    *,
    includes: Sequence[str] = (),
    excludes: Sequence[str] = (),
    dry_run: bool = False,
) -> list[str]:
    """`restore --json` of snapshot under target; security.* xattrs belong to the host,
    not the data. restic takes includes or excludes, not both. A dry run takes no lock
    and names each item it would restore (verbose_status messages)."""
    if includes and excludes:
        raise ValueError("restic restore takes --include or --exclude, not both")
    args = ["restore", "--json"]
    if dry_run:
        args += ["--no-lock", "--dry-run", "-vv"]
    args += [snapshot_arg(snapshot), "--target", target, "--exclude-xattr", "security.*"]
    for path in excludes:
        args += ["--exclude", path]
    for path in includes:
        args += ["--include", path]
    return args


def ls_args(snapshot: str, directory: str | None = None) -> list[str]:
    """`ls --json` of a snapshot, or of one directory in it (with its whole subtree)."""
    args = ["ls", "--json", "--no-lock", snapshot_arg(snapshot)]
    return args if directory is None else [*args, directory]


def dump_args(snapshot: str, item: str, archive: str = "raw") -> list[str]:
    """`dump` of a file (raw) or a folder (archive 'tar' or 'zip') to stdout."""
    args = ["dump", "--no-lock"]
    if archive != "raw":
        args += ["--archive", archive]
    return [*args, snapshot_arg(snapshot), item]


def rolling_subset(share: str, run: int) -> str:
    """The --read-data-subset of check run number run (0, 1, …): "n/t" rolls so that t runs
    read every pack once (run k reads part (k mod t)+1 of t); "x%" stays as it is."""
    if share.endswith("%"):
        return share
    _part, _, total_text = share.partition("/")
    total = int(total_text)
    if total < 1:
        raise ValueError(f"not a subset: {share!r}")
    return f"{run % total + 1}/{total}"


def check_args(subset: str) -> list[str]:
    """`check` reading subset of the data packs ("" reads none, only the structure)."""
    args = ["check", "--json"]
    if subset:
        args.append(f"--read-data-subset={subset}")
    return args


def copy_args(*, tags: Sequence[str] = (), snapshots: Sequence[str] = ()) -> list[str]:
    """`copy` from the repository in RESTIC_FROM_REPOSITORY (password RESTIC_FROM_PASSWORD)
    of the snapshots with tags that the target lacks (restic skips those it already has)."""
    args = ["copy"]
    for tag in tags:
        args += ["--tag", tag]
    return [*args, *snapshots]


def init_copy_args() -> list[str]:
    """`init` of a mirror with the chunker parameters of RESTIC_FROM_REPOSITORY, so that
    copied data deduplicates as it did in the source."""
    return ["init", "--json", "--copy-chunker-params"]
