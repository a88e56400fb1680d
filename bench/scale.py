"""Items 5 and 6: many modules in one backup, and the schedule sync of many backups."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import RawRestic, Series, run
from bench.scenarios import MODULE_IMAGE, Bench, timed


def scale(bench: Bench, modules: int, repeat: int = 1) -> None:
    """Item 5: one backup naming `modules` small modules, backup_concurrency 1 and 2."""
    cluster, raw = bench.cluster, bench.raw
    start = time.perf_counter()
    names = []
    for _ in range(modules):
        names.append(cluster.api("add-module", {"image": MODULE_IMAGE, "node": 1})["module_id"])
    bench.log(f"scale: {modules} modules added in {time.perf_counter() - start:.0f}s")
    repo = bench.work / "scale"
    destination, password = cluster.add_destination(repo)
    backup_id = cluster.add_backup(destination, names, "scale")
    results: dict[str, Any] = {"modules": modules}
    # First run creates the repositories (init included): counted apart, at concurrency 2.
    cluster.set_setting("backup_concurrency", 2)
    results["first_run_concurrency_2"] = bench.sampled(
        lambda: cluster.api("run-backup", {"id": backup_id})
    )
    bench.log(f"scale: first run (repositories created) {results['first_run_concurrency_2']:.1f}s")
    totals = {1: Series("concurrency 1"), 2: Series("concurrency 2")}
    for rep in range(repeat):
        for concurrency in (1, 2) if rep % 2 == 0 else (2, 1):
            cluster.set_setting("backup_concurrency", concurrency)
            seconds = bench.sampled(lambda: cluster.api("run-backup", {"id": backup_id}))
            totals[concurrency].samples.append(seconds)
            bench.log(f"scale: concurrency {concurrency}: {seconds:.1f}s")
    cluster.set_setting("backup_concurrency", 1)
    # restic's own cost per module: one raw `podman run restic backup` of a module's data.
    module_repo = repo / "minwiki" / cluster.module_uuid(names[0])
    data = cluster.volume_path(f"{names[0]}-pages")
    env = raw.env | {"RESTIC_PASSWORD": password}
    parts = _component_times(raw, module_repo, data, env)
    per_restic = parts["restic_backup_nochange"]
    results["raw_components_s"] = parts
    for concurrency, series in totals.items():
        # module-seconds: at concurrency 2 two modules share the wall clock
        per_module = series.median * concurrency / modules
        results[f"concurrency_{concurrency}"] = series.to_json() | {
            "per_module": series.median / modules,
            "module_seconds": per_module,
            "overhead_per_module": per_module - per_restic,
        }
    results["speedup_2_over_1"] = totals[1].median / totals[2].median
    bench.results["scale"] = results


def _component_times(
    raw: RawRestic, repo: Path, data: Path, env: dict[str, str]
) -> dict[str, float]:
    """Median of 5 of each container run the agent makes per module, run raw."""

    def median(argv: list[str], input: str | None = None) -> float:
        series = Series("x")
        for _ in range(5):
            series.samples.append(timed(lambda: run(argv, env, input)))
        return series.median

    backup = raw.argv(repo, data, ["backup", "--host", "bench", "/data"])
    forget = raw.argv(repo, None, ["forget", "--json", "--keep-last=3", "--tag=none", "--prune"])
    version = ["podman", "run", "--rm", "localhost/backup-agent-restic:latest", "version"]
    rclone = [
        "podman",
        "run",
        "--rm",
        "-i",
        "--entrypoint=/usr/bin/rclone",
        "-v",
        f"{repo.parent}:/d",
    ]
    rclone += ["localhost/backup-agent-restic:latest", "rcat", "/d/bench.json"]
    return {
        "container_start_restic_version": median(version),
        "restic_backup_nochange": median(backup),
        "restic_forget_prune": median(forget),
        "rclone_rcat_metadata": median(rclone, "{}"),
    }


def schedules(bench: Bench, count: int = 1000) -> None:
    """Item 6: render and apply the units of `count` backups (systemctl stood in by `true`)."""
    from agent.adapters.redis_store import connect
    from agent.core import redis_keys
    from agent.core.settings import load_settings
    from agent.runtime import timers as schedule

    settings = load_settings(bench.cluster.root)
    redis = connect(settings.redis_url)
    first = 1_000_000
    with redis.pipeline(transaction=False) as pipe:
        for number in range(count):
            pipe.hset(
                redis_keys.backup(first + number),
                mapping={
                    "name": f"sync{number}",
                    "repository": "bench",
                    "schedule": "daily",
                    "retention": "3",
                    "enabled": "1",
                    "instances": bench.module,
                },
            )
        pipe.execute()
    results: dict[str, Any] = {"backups": count}
    with tempfile.TemporaryDirectory(dir=bench.work) as units:
        # Only render + write is measured: `true` stands in for systemctl (no systemd here).
        local = dataclasses.replace(settings, unit_dir=units, systemctl="true", timers="on")
        results["first_sync_s"] = timed(lambda: schedule.sync_timers(redis, local))
        results["unchanged_sync_s"] = timed(lambda: schedule.sync_timers(redis, local))
        redis.hset(redis_keys.backup(first), "schedule", "weekly")
        results["one_changed_sync_s"] = timed(lambda: schedule.sync_timers(redis, local))
        results["unit_files"] = len(list(Path(units).iterdir()))
        results["backups_synced"] = len(schedule.node_schedules(redis, settings.node_id))
    redis.delete(*[redis_keys.backup(first + n) for n in range(count)])
    bench.log(
        f"schedule sync of {count}: first {results['first_sync_s']:.2f}s, "
        f"unchanged {results['unchanged_sync_s']:.2f}s"
    )
    bench.results["schedule_sync"] = results
