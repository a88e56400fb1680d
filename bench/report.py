"""The results as a Markdown table with each target beside its figure."""

from __future__ import annotations

from typing import Any


def _s(series: dict[str, Any]) -> str:
    """Median, then [min–max] of the samples."""
    return f"{series['median']:.2f} s [{series['min']:.2f}–{series['max']:.2f}]"


def _ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _paired(paired: dict[str, float] | None) -> str:
    if not paired:  # results written before the paired reading existed
        return ""
    return f" (per repetition {paired['median']:.2f} [{paired['min']:.2f}–{paired['max']:.2f}])"


def render_markdown(results: dict[str, Any]) -> str:
    rows = ["| item | figure | target | |", "|---|---|---|---|"]
    for key, label in (("full_backup", "full backup"), ("nochange_backup", "no-change backup")):
        item = results.get(key)
        if not item:
            continue
        rows.append(
            f"| {label} | a raw {_s(item['a_raw_restic'])}; b NS8 {_s(item['b_ns8_sequence'])}; "
            f"c agent {_s(item['c_agent'])}; c/a {item['c_over_a']:.2f}"
            f"{_paired(item.get('c_over_a_paired'))}, "
            f"c/b {item['c_over_b']:.2f}, c−a {item['c_minus_a']:+.2f} s | "
            + (
                f"c/a ≤ 1.05 | {_verdict(item['c_over_a'] <= 1.05)} |"
                if key == "full_backup"
                else f"c − a ≤ 1 s | {_verdict(item['c_minus_a'] <= 1.0)} |"
            )
        )
    restore = results.get("restore")
    if restore and "pending" in restore:
        rows.append(f"| restore | pending: {restore['pending']} | ratio ≤ 1.2 | — |")
    elif restore:
        rows.append(
            f"| restore | raw {_s(restore['raw_restic_restore'])}; agent "
            f"{_s(restore['agent_restore_module'])}; ratio {restore['ratio']:.2f}"
            f"{_paired(restore.get('ratio_paired'))} | ratio ≤ 1.2 | "
            f"{_verdict(restore['ratio'] <= 1.2)} |"
        )
        for key, label in (
            ("latest", "restore of `latest`"),
            ("unrecorded", "restore of a snapshot with no record (environment read back)"),
        ):
            if f"ratio_{key}" in restore:
                ratio = restore[f"ratio_{key}"]
                rows.append(
                    f"| {label} | agent {_s(restore[f'agent_restore_module_{key}'])}; ratio "
                    f"{ratio:.2f}{_paired(restore.get(f'ratio_{key}_paired'))} "
                    f"| ratio ≤ 1.2 | {_verdict(ratio <= 1.2)} |"
                )
    trips = results.get("round_trip")
    if trips:
        for name in ("list-actions", "noop_step", "list-backups"):
            trip = trips[name]
            extra = f" ({trips['backups_defined']} backups)" if name == "list-backups" else ""
            inner = trips["in_process"]["noop" if name == "noop_step" else name]
            rows.append(
                f"| api-cli {name}{extra} | p50 {_ms(trip['p50'])}, p95 {_ms(trip['p95'])} "
                f"(in-process p50 {_ms(inner['p50'])}) | p50 ≤ 150 ms | "
                f"{_verdict(trip['p50'] <= 0.150)} |"
            )
        for action, pair in trips.get("clients", {}).items():
            mine, theirs = pair["resp"], pair["redis-py"]
            rows.append(
                f"| api-cli {action}: resp.py vs redis-py (in turns) | p50 {_ms(mine['p50'])} "
                f"vs {_ms(theirs['p50'])}, p95 {_ms(mine['p95'])} vs {_ms(theirs['p95'])} "
                f"| — | resp.py saves {_ms(theirs['p50'] - mine['p50'])} |"
            )
        start = trips["python_startup_only"]
        rows.append(f"| (venv `python -c pass`) | p50 {_ms(start['p50'])} | — | — |")
        for name, code in (("import_agent", "agent"), ("import_apicli", "agent.apicli")):
            if name in trips:
                rows.append(
                    f"| (venv `python -c 'import {code}'`) | p50 {_ms(trips[name]['p50'])} "
                    "| — | — |"
                )
    scale = results.get("scale")
    if scale:
        for concurrency in (1, 2):
            item = scale[f"concurrency_{concurrency}"]
            rows.append(
                f"| {scale['modules']} modules, concurrency {concurrency} | total "
                f"{_s(item)}; {item['module_seconds']:.2f} module-s/module, overhead "
                f"{item['overhead_per_module']:.2f} s/module beyond one raw restic backup "
                f"({scale['raw_components_s']['restic_backup_nochange']:.2f} s) | "
                + (
                    f"≤ 0.3 s/module | {_verdict(item['overhead_per_module'] <= 0.3)} |"
                    if concurrency == 1
                    else f"clear speed-up | ×{scale['speedup_2_over_1']:.2f} |"
                )
            )
    sync = results.get("schedule_sync")
    if sync:
        rows.append(
            f"| schedule sync, {sync['backups_synced']} backups | "
            f"first {sync['first_sync_s']:.2f} s, "
            f"unchanged {sync['unchanged_sync_s']:.2f} s, one changed "
            f"{sync['one_changed_sync_s']:.2f} s | ≤ 2 s | "
            f"{_verdict(sync['first_sync_s'] <= 2.0)} |"
        )
    rss = results.get("daemon_rss_mib")
    if rss:
        idle = max(v for k, v in rss.items() if k.startswith("idle"))
        rows.append(
            "| daemon RSS | "
            + ", ".join(f"{k.replace('_', ' ')} {v:.1f} MiB" for k, v in rss.items())
            + f" | idle ≤ 80 MiB | {_verdict(idle <= 80)} |"
        )
    memory = results.get("agent_memory_mib")
    if memory:
        idle_pss = max(v["pss"] for k, v in memory.items() if k.startswith("idle"))
        parts = [
            f"{k.replace('_', ' ')} PSS {v['pss']:.1f} MiB (RSS {v['rss']:.1f})"
            for k, v in memory.items()
            if isinstance(v, dict)
        ]
        parts += [
            f"peak PSS during runs {v:.1f} MiB" for v in memory.values() if not isinstance(v, dict)
        ]
        rows.append(
            "| daemon + warm-steps helper | "
            + ", ".join(parts)
            + f" | idle ≤ 80 MiB | {_verdict(idle_pss <= 80)} |"
        )
    return "\n".join(rows)


def main() -> None:
    """python -m bench.report RESULTS.json: the table again, from a saved run."""
    import json
    import sys
    from pathlib import Path

    print(render_markdown(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
