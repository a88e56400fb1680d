"""The issue-7 comparisons; each fills a section of the results and returns nothing."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import (
    REPO,
    VENV_BIN,
    Cluster,
    RawRestic,
    RssSampler,
    Series,
    agent_memory_kib,
    rss_kib,
    run,
)

MODULE_IMAGE = "localhost/minwiki:latest"


@dataclass
class Bench:
    cluster: Cluster
    raw: RawRestic
    work: Path  # repositories and scratch, removed as we go
    dataset: Path  # the generated tree (kept for raw runs)
    repeat: int
    results: dict[str, Any] = field(default_factory=dict)
    module: str = ""  # the module whose pages volume holds the dataset
    rss_peak_kib: int = 0
    pss_peak_kib: int = 0

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def sampled(self, action: Callable[[], object]) -> float:
        _settle()
        with RssSampler(self.cluster.daemon_pid()) as sampler:
            seconds = timed(action)
        self.rss_peak_kib = max(self.rss_peak_kib, sampler.peak_kib)
        self.pss_peak_kib = max(self.pss_peak_kib, sampler.peak_pss_kib)
        return seconds


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _settle() -> None:
    """Wait for what earlier runs left behind: their dirty pages (a repository is ~600 MiB
    written) go to disk and the CPUs go idle again (podman cleans up after a container in
    the background). Both would otherwise land on whichever timed run comes next."""
    os.sync()
    _wait_for_idle_cpus()


def _settled(action: Callable[[], object]) -> float:
    _settle()
    return timed(action)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _wait_for_idle_cpus(busy_below: float = 0.1, window: float = 0.2, limit: float = 3.0) -> None:
    """Until a window of CPU time is under busy_below busy, or limit seconds have passed
    (a machine shared with others may never be that quiet)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy, total = _cpu_times()
        time.sleep(window)
        busy2, total2 = _cpu_times()
        if total2 > total and (busy2 - busy) / (total2 - total) < busy_below:
            return


def _rotate(items: list[str], by: int) -> list[str]:
    by %= len(items)
    return items[by:] + items[:by]


def _order(items: list[str], rep: int) -> list[str]:
    """The systems' order in repetition rep: rotations of items, then of items reversed.
    Over 2 × len(items) repetitions each system runs right after each other one equally
    often (for 3 systems: abc bca cab cba bac acb), so none keeps inheriting the
    aftermath of a heavier one."""
    turn = rep % (2 * len(items))
    return _rotate(items if turn < len(items) else items[::-1], turn)


def setup_module(bench: Bench) -> None:
    """One module whose pages volume holds (a copy of) the dataset."""
    # The sample image as the checkout has it (rebuilt only when its sources changed):
    # a stale one would time hooks that are no longer the module's.
    run([str(REPO / "examples" / "minwiki" / "build")], bench.cluster.env)
    added = bench.cluster.api("add-module", {"image": MODULE_IMAGE, "node": 1})
    bench.module = added["module_id"]
    pages = bench.cluster.volume_path(f"{bench.module}-pages")
    run(["cp", "-a", f"{bench.dataset}/.", str(pages)])
    bench.log(f"{bench.module}: dataset copied into {pages}")


def backups(bench: Bench) -> None:
    """Items 1 and 2: full and no-change backup, raw restic (a) vs NS8 sequence (b) vs agent (c)."""
    raw, cluster = bench.raw, bench.cluster
    pages = cluster.volume_path(f"{bench.module}-pages")
    uuid = cluster.module_uuid(bench.module)
    full = {k: Series(k) for k in "abc"}
    again = {k: Series(k) for k in "abc"}
    # Warm-up (not counted): page cache, image layers, the restic cache volume.
    scratch = bench.work / "warmup"
    raw.init(scratch)
    raw.backup(scratch, pages)
    spent = [scratch]  # removed once every timed run is done: see _remove_later
    for rep in range(bench.repeat):
        for system in _order(["a", "b", "c"], rep):
            repo = bench.work / f"{system}{rep}"
            if system == "a":
                raw.init(repo)
                full["a"].samples.append(_settled(partial(raw.backup, repo, pages)))
                again["a"].samples.append(_settled(partial(raw.backup, repo, pages)))
            elif system == "b":
                raw.init(repo)
                full["b"].samples.append(_settled(partial(raw.ns8_sequence, repo, pages)))
                again["b"].samples.append(_settled(partial(raw.ns8_sequence, repo, pages)))
            else:
                destination, password = cluster.add_destination(repo)
                # An empty repository exists for (a) and (b) too: creating it is not timed.
                raw.init(repo / "minwiki" / uuid, password)
                backup_id = cluster.add_backup(destination, [bench.module], f"full{rep}")

                def agent_backup(backup_id: int = backup_id) -> None:
                    cluster.api("run-backup", {"id": backup_id})

                full["c"].samples.append(bench.sampled(agent_backup))
                again["c"].samples.append(bench.sampled(agent_backup))
            bench.log(
                f"rep {rep} {system}: full {full[system].samples[-1]:.2f}s, "
                f"no-change {again[system].samples[-1]:.2f}s"
            )
            spent.append(repo)
    _remove_later(bench, spent)
    bench.results["full_backup"] = _abc(full)
    bench.results["nochange_backup"] = _abc(again)


def _remove_later(bench: Bench, paths: list[Path]) -> None:
    """Delete what the timed runs wrote only after the last of them. On this machine's
    ext4 (mounted with `discard`), writing right after deleting some 600 MiB is about
    twice as slow (a restore: 2.6 s, 5.4 s after a deletion, most of it system time),
    and a deletion between runs charged that to whichever system came next."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    let_deletions_settle(bench)


DELETION_SETTLE_S = 90.0


def let_deletions_settle(bench: Bench) -> None:
    """Wait out the slow spell that follows a big deletion before the next timed item.
    It fades with time: restic restores measured on the host ran 2.4-2.9 s with nothing
    deleted before them, 5.4 s right after a deletion, 3.7 s ten seconds after one (with
    a sync), and 2.8 s forty seconds after; after the bench's own deletions (some 10 GiB)
    the first minute of restores still ran 3.4-3.9 s, hence a minute and a half."""
    bench.log(f"waiting {DELETION_SETTLE_S:.0f} s for the disk to settle after deletions")
    os.sync()
    time.sleep(DELETION_SETTLE_S)


def _abc(series: dict[str, Series]) -> dict[str, Any]:
    a, b, c = series["a"].median, series["b"].median, series["c"].median
    return {
        "a_raw_restic": series["a"].to_json(),
        "b_ns8_sequence": series["b"].to_json(),
        "c_agent": series["c"].to_json(),
        "c_over_a": c / a,
        "c_over_a_paired": _paired(series["c"], series["a"]),
        "c_over_b": c / b,
        "c_minus_a": c - a,
    }


def _paired(mine: Series, theirs: Series) -> dict[str, float]:
    """The ratio within each repetition (run minutes apart, so slow drift of the machine
    cancels), its median and range: a second reading beside the ratio of medians."""
    ratios = sorted(m / t for m, t in zip(mine.samples, theirs.samples, strict=True))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}


def restore(bench: Bench) -> None:
    """Item 3: cluster/restore-module to a new instance vs raw `restic restore`."""
    try:
        _restore(bench)
    except RuntimeError as exc:  # the restore action is young: record, go on with the rest
        bench.results["restore"] = {"error": str(exc)[-600:]}
        bench.log(f"restore failed: {exc}")


def _restore(bench: Bench) -> None:
    """By snapshot id, as the UI asks after listing the snapshots; by `latest`; and by id
    of a snapshot the cluster has no record of (another cluster's, say: the record is
    removed before each run), which makes the agent read the environment back."""
    from agent.adapters import podman
    from agent.adapters.redis_store import connect
    from agent.core import redis_keys
    from agent.core.settings import load_settings

    redis = connect(load_settings(bench.cluster.root).redis_url)
    cluster, raw = bench.cluster, bench.raw
    actions = VENV_BIN.parent.parent / "actions" / "cluster" / "restore-module"
    if not actions.is_dir():
        bench.results["restore"] = {"pending": "cluster/restore-module has not landed"}
        bench.log("restore: skipped, cluster/restore-module not there yet")
        return
    uuid = cluster.module_uuid(bench.module)
    repo = bench.work / "restore"
    destination, password = cluster.add_destination(repo)
    backup_id = cluster.add_backup(destination, [bench.module], "restore")
    cluster.api("run-backup", {"id": backup_id})
    path = f"minwiki/{uuid}"
    [listed] = cluster.api("read-backup-snapshots", {"repository": destination, "path": path})
    snapshot = str(listed["id"])
    record = redis.hgetall(redis_keys.snapshot_environments(1))
    module_repo = repo / path
    env = raw.env | {"RESTIC_PASSWORD": password}
    series = {name: Series(name) for name in ("raw", "agent", "agent_latest", "unrecorded")}
    targets: list[str] = []
    restored_modules: list[str] = []
    for rep in range(bench.repeat):
        for system in _order(list(series), rep):
            if system == "raw":
                # Into a volume of the node's storage, as the agent restores, so that both
                # write under one directory: on this machine, where on the disk 600 MiB
                # land changed a restore's time by up to a second (system time).
                targets.append(f"bench-raw-restored{rep}")
                target = cluster.new_volume(targets[-1])
                argv = raw.argv(module_repo, target, ["restore", snapshot, "--target", "/data"])
                series[system].samples.append(_settled(partial(run, argv, env)))
            else:
                data = {
                    "node": 1,
                    "repository": destination,
                    "path": path,
                    "snapshot": "" if system == "agent_latest" else snapshot,
                }
                if system == "unrecorded":
                    redis.delete(redis_keys.snapshot_environments(1))
                else:
                    redis.hset(redis_keys.snapshot_environments(1), mapping=record)
                output: dict[str, Any] = {}

                def restore_module(
                    data: dict[str, Any] = data, out: dict[str, Any] = output
                ) -> None:
                    out["result"] = cluster.api("cluster/restore-module", data)

                series[system].samples.append(bench.sampled(restore_module))
                restored = (output.get("result") or {}).get("module_id")
                if restored:
                    restored_modules.append(restored)
            bench.log(f"restore rep {rep} {system}: {series[system].samples[-1]:.2f}s")
    for module_id in restored_modules:  # not timed, and after every timed run
        cluster.api("remove-module", {"module_id": module_id})
    podman.remove_volumes(targets, cluster.podman_env)
    _remove_later(bench, [repo])
    plain, agent = series["raw"], series["agent"]
    latest, unrecorded = series["agent_latest"], series["unrecorded"]
    bench.results["restore"] = {
        "raw_restic_restore": plain.to_json(),
        "agent_restore_module": agent.to_json(),
        "ratio": agent.median / plain.median,
        "ratio_paired": _paired(agent, plain),
        "agent_restore_module_latest": latest.to_json(),
        "ratio_latest": latest.median / plain.median,
        "ratio_latest_paired": _paired(latest, plain),
        "agent_restore_module_unrecorded": unrecorded.to_json(),
        "ratio_unrecorded": unrecorded.median / plain.median,
        "ratio_unrecorded_paired": _paired(unrecorded, plain),
    }


def daemon_rss(bench: Bench, when: str) -> None:
    pid = bench.cluster.daemon_pid()
    bench.results.setdefault("daemon_rss_mib", {})[when] = rss_kib(pid) / 1024
    rss, pss = agent_memory_kib(pid)
    memory = bench.results.setdefault("agent_memory_mib", {})
    memory[when] = {"rss": rss / 1024, "pss": pss / 1024}
