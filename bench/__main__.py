"""python -m bench: every issue-7 comparison in one run; results to bench/results/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import dataset, roundtrip, scale, scenarios
from bench.harness import REPO, Cluster, RawRestic, base_env, run
from bench.report import render_markdown

ITEMS = ("backup", "restore", "roundtrip", "scale", "schedule")


def machine_facts() -> dict[str, Any]:
    def text(argv: list[str]) -> str:
        try:
            return run(argv, base_env()).strip().splitlines()[0]
        except (RuntimeError, OSError, IndexError):
            return "?"

    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "podman": text(["podman", "--version"]),
        "restic": text(
            ["podman", "run", "--rm", "localhost/backup-agent-restic:latest", "version"]
        ),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "commit": text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


def prepare_dataset(work: Path, size: int) -> Path:
    """Generate once per size; a marker file says which size a directory holds."""
    target = work / f"dataset-{size}"
    marker = work / f"dataset-{size}.done"
    if not marker.exists():
        shutil.rmtree(target, ignore_errors=True)
        shape = dataset.generate(target, size)
        marker.write_text(json.dumps(shape.__dict__))
    return target


def compile_package() -> None:
    """Byte-compile the agent as an installed package is (pip compiles a wheel's modules).
    The checkout is installed editable, and with PYTHONDONTWRITEBYTECODE set (as on this
    machine) no .pyc is ever written: every api-cli, redis-dump and cold step would then
    compile its imports from source, ~40 ms more per api-cli call here, and the bench
    would time that instead of the agent."""
    run([str(REPO / ".venv/bin/python"), "-m", "compileall", "-q", str(REPO / "agent")])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size", default="600M", help="dataset size (default 600M)")
    parser.add_argument("--quick", action="store_true", help="60M, 3 repeats, 10 modules")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="A/B alternations per item (default 6, each system after each other equally often)",
    )
    parser.add_argument("--modules", type=int, default=100, help="modules in the scale item")
    parser.add_argument("--scale-repeat", type=int, default=1, help="runs per concurrency")
    parser.add_argument("--only", default=",".join(ITEMS), help="comma list of " + ",".join(ITEMS))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/agent-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = 3 if args.quick else 6
    if args.quick:
        args.size, args.modules = "60M", 10
    items = set(args.only.split(","))
    size = dataset.parse_size(args.size)
    args.work.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    compile_package()
    started = time.time()
    data = prepare_dataset(args.work, size)
    root = args.work / "cluster"
    if root.exists():
        subprocess.run(
            [str(REPO / ".venv/bin/agent"), "cluster", "down", "--root", str(root)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root)
    cluster = Cluster(root)
    cluster.start()
    time.sleep(2)
    bench = scenarios.Bench(cluster, RawRestic(), args.work / "scratch", data, args.repeat)
    bench.work.mkdir(parents=True, exist_ok=True)
    bench.results["settings"] = {
        "size_mib": size // dataset.MIB,
        "repeat": args.repeat,
        "modules": args.modules,
        "scale_repeat": args.scale_repeat,
        "items": sorted(items),
    }
    try:
        scenarios.daemon_rss(bench, "idle_after_start")
        scenarios.setup_module(bench)
        scenarios.let_deletions_settle(bench)  # of the previous run's cluster, just above
        if "backup" in items:
            scenarios.backups(bench)
        if "restore" in items:
            scenarios.restore(bench)
        if "roundtrip" in items:
            roundtrip.round_trips(bench)
        time.sleep(2)
        scenarios.daemon_rss(bench, "idle_after_tasks")
        if "scale" in items:
            scale.scale(bench, args.modules, args.scale_repeat)
        if "schedule" in items:
            scale.schedules(bench)
        scenarios.daemon_rss(bench, "idle_at_end")
        bench.results["daemon_rss_mib"]["peak_during_runs"] = bench.rss_peak_kib / 1024
        bench.results["agent_memory_mib"]["peak_pss_during_runs"] = bench.pss_peak_kib / 1024
    finally:
        cluster.stop()
    facts["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    facts["wall_clock_s"] = round(time.time() - started)
    bench.results["machine"] = facts
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"{stamp}.json").write_text(json.dumps(bench.results, indent=2) + "\n")
    table = render_markdown(bench.results)
    (args.out / f"{stamp}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
