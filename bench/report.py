"""The run's table (rich) and its JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# The keys every complete run writes (issues 6 and 13); everything else in the JSON is context.
KEYS = (
    "pipeline_throughput",
    "direct_throughput",
    "throughput_ratio",
    "pipeline_single_p50_ms",
    "pipeline_single_p95_ms",
    "pipeline_single_p99_ms",
    "direct_sequential_p50_ms",
    "own_overhead_ms_at_0",
    "own_overhead_ms_at_10000",
    "worker_rss_start_mb",
    "worker_rss_end_mb",
    "worker_rss_growth_pct",
    "celery_noop_throughput",
    "celery_noop_single_p50_ms",
    "http_single_p50_ms",
    "http_single_p95_ms",
    "http_single_ratio",
    "pipeline_single_ratio",
    "redis_commands_per_job_ours",
    "redis_client_commands_per_job_ours",
    "cpu_ratio",
)
THROUGHPUT_RATIO_TARGET = 0.75
PIPELINE_SINGLE_RATIO_TARGET = 1.0  # pipeline_single_p50_ms / direct_sequential_p50_ms
HTTP_SINGLE_RATIO_TARGET = 1.5  # http_single_p50_ms / direct_sequential_p50_ms
REDIS_COMMANDS_OURS_TARGET = 15.0
CPU_RATIO_TARGET = 1.5
RSS_GROWTH_TARGET_PCT = 10.0
# "Flat": at most 10 % more, or at most 0.25 ms more (below that, scheduling noise rules).
FLAT_PCT = 10.0
FLAT_MS = 0.25


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    found: dict[str, bool] = {}
    if "throughput_ratio" in result:
        found["throughput_ratio"] = result["throughput_ratio"] >= THROUGHPUT_RATIO_TARGET
    if "pipeline_single_ratio" in result:
        found["single_p50"] = result["pipeline_single_ratio"] <= PIPELINE_SINGLE_RATIO_TARGET
    if "http_single_ratio" in result:
        found["http_single_ratio"] = result["http_single_ratio"] <= HTTP_SINGLE_RATIO_TARGET
    if "redis_commands_per_job_ours" in result:
        found["redis_commands_per_job_ours"] = (result["redis_commands_per_job_ours"]
                                                <= REDIS_COMMANDS_OURS_TARGET)
    if "cpu_ratio" in result:
        found["cpu_ratio"] = result["cpu_ratio"] <= CPU_RATIO_TARGET
    if "own_overhead_ms_at_0" in result:
        at_0, at_n = result["own_overhead_ms_at_0"], result["own_overhead_ms_at_10000"]
        found["flat_overhead"] = at_n <= at_0 * (1 + FLAT_PCT / 100) or at_n - at_0 <= FLAT_MS
    if "worker_rss_growth_pct" in result:
        found["rss_growth"] = result["worker_rss_growth_pct"] <= RSS_GROWTH_TARGET_PCT
    return found


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "[green]met[/]" if ok else "[red]missed[/]"


def table(result: dict[str, Any]) -> Table:
    checks = verdicts(result)
    details = result.get("details", {})
    out = Table(title=f"Trunkline benchmark {result.get('run_id', '')}", title_justify="left")
    out.add_column("metric")
    out.add_column("value", justify="right")
    out.add_column("target")
    out.add_column("verdict")

    def row(key: str, unit: str, target: str = "", ok: bool | None = None) -> None:
        if key in result:
            out.add_row(key, f"{result[key]:,.2f} {unit}".rstrip(), target, _verdict(ok))

    row("pipeline_throughput", "jobs/s")
    row("direct_throughput", "jobs/s")
    row("throughput_ratio", "", f">= {THROUGHPUT_RATIO_TARGET}", checks.get("throughput_ratio"))
    row("celery_noop_throughput", "tasks/s", "the floor")
    noop = details.get("noop", {})
    if "pipeline_over_noop_throughput" in noop:
        out.add_row("(pipeline_over_noop_throughput)",
                    f"{noop['pipeline_over_noop_throughput']:,.2f}", "noop / pipeline", "")
    row("redis_commands_per_job_ours", "", f"<= {REDIS_COMMANDS_OURS_TARGET:.0f}",
        checks.get("redis_commands_per_job_ours"))
    row("redis_client_commands_per_job_ours", "", "round trips")
    row("cpu_ratio", "", f"<= {CPU_RATIO_TARGET}", checks.get("cpu_ratio"))
    row("pipeline_single_p50_ms", "ms")
    row("pipeline_single_p95_ms", "ms")
    row("pipeline_single_p99_ms", "ms")
    row("direct_sequential_p50_ms", "ms", "3 sequential calls")
    concurrent = details.get("single", {}).get("direct_concurrent_ms")
    if concurrent:
        out.add_row("(direct_concurrent_p50_ms)", f"{concurrent['p50']:,.2f} ms",
                    "in ‖ out, then rule", "")
    row("pipeline_single_ratio", "", f"<= {PIPELINE_SINGLE_RATIO_TARGET} (p50 / sequential)",
        checks.get("single_p50"))
    row("celery_noop_single_p50_ms", "ms", "the floor")
    if "pipeline_single_minus_noop_ms" in noop:
        out.add_row("(pipeline_single_minus_noop_ms)",
                    f"{noop['pipeline_single_minus_noop_ms']:,.2f} ms", "pipeline - noop", "")
    row("http_single_p50_ms", "ms")
    row("http_single_p95_ms", "ms")
    row("http_single_ratio", "", f"<= {HTTP_SINGLE_RATIO_TARGET} (p50 / sequential)",
        checks.get("http_single_ratio"))
    row("own_overhead_ms_at_0", "ms")
    row("own_overhead_ms_at_10000", "ms", f"flat (<= +{FLAT_PCT:.0f} % or +{FLAT_MS} ms)",
        checks.get("flat_overhead"))
    row("worker_rss_start_mb", "MiB")
    row("worker_rss_end_mb", "MiB")
    row("worker_rss_growth_pct", "%", f"<= {RSS_GROWTH_TARGET_PCT:.0f} %",
        checks.get("rss_growth"))
    return out


def print_report(result: dict[str, Any], console: Console) -> None:
    console.print(table(result))
    params = result.get("parameters", {})
    console.print(
        f"jobs={params.get('jobs')} concurrency={params.get('concurrency')} "
        f"workers={params.get('workers')} pool={params.get('pool')} "
        f"worker_concurrency={params.get('worker_concurrency')} "
        f"rss_jobs={params.get('rss_jobs')}; took {result.get('duration_seconds')} s "
        f"(phases: {result.get('phase_seconds')}); load {result.get('loadavg')}")
    if result.get("failures"):
        console.print(f"[red]{len(result['failures'])} job(s) failed[/]: "
                      f"{result['failures'][:5]}")


def write_json(result: dict[str, Any], path: Path) -> None:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    payload = clean(result)
    payload["targets_met"] = verdicts(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
