"""Smoke test of the benchmark (bench/): it runs end to end on the test stack and writes every
key of its JSON as a number. Not a timed assertion: the figures are only checked to exist.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.direct import BENCH_ORG_PREFIX, is_bench_object
from bench.report import KEYS, verdicts
from tests.integration.conftest import REPO, Stack, stack
from worker.livekit import LiveKitSIP

# The integration suite's stack fixture, re-exported so that pytest finds it for this folder.
__all__ = ["stack"]

pytestmark = pytest.mark.integration

# A change of RSS may be zero or negative, and so may a difference of two measured figures
# (ours = pipeline minus LiveKit's share); every other figure is a rate, time, size or ratio.
MAY_BE_ZERO_OR_NEGATIVE = {"worker_rss_growth_pct", "redis_commands_per_job_ours",
                           "redis_client_commands_per_job_ours"}


def test_bench_writes_every_key(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # The test stack's REDIS_URL/LIVEKIT_*; the benchmark uses its own database (3) there,
    # starts its own workers and API and deletes only the LiveKit objects it created. Every
    # phase runs (the default); --single-jobs 20 keeps the one-at-a-time phases short.
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--jobs", "5", "--concurrency", "2",
         "--rss-jobs", "20", "--single-jobs", "20", "--json", str(out),
         "--log-dir", str(tmp_path / "logs")],
        cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=280, check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    result = json.loads(out.read_text())

    for key in KEYS:
        value = result.get(key)
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)
        if key not in MAY_BE_ZERO_OR_NEGATIVE:
            assert value > 0, (key, value)
    assert result["failures"] == []
    assert result["parameters"]["jobs"] == 5
    assert result["parameters"]["rss_jobs"] == 20
    assert result["machine"]["nproc"] >= 1
    assert set(result["parameters"]["phases"]) >= {"noop", "http"}

    # The floor and the seed user's latency, beside the pipeline's figures.
    noop = result["details"]["noop"]
    assert noop["tasks"]["jobs"] == 5
    assert noop["single_ms"]["n"] == 20
    for key in ("pipeline_over_noop_throughput", "pipeline_single_minus_noop_ms"):
        assert isinstance(noop[key], int | float) and math.isfinite(noop[key]), (key, noop)
    http = result["details"]["http"]
    assert http["http_ms"]["n"] == 20
    assert http["direct_sequential_ms"]["n"] == 20
    assert http["respond_async_ms"]["n"] == 20
    # Every target has a verdict, in the JSON as in the table.
    assert set(result["targets_met"]) == set(verdicts(result))
    assert {"throughput_ratio", "single_p50", "http_single_ratio", "cpu_ratio",
            "redis_commands_per_job_ours", "flat_overhead", "rss_growth"} <= set(
                result["targets_met"])
    assert all(isinstance(ok, bool) for ok in result["targets_met"].values())
    # The API the run started is stopped, and it logged to the log folder.
    assert Path(http["api_log"]).stat().st_size > 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(http["api_url"] + "/healthz", timeout=2)

    # Nothing this run created is left on LiveKit.
    org_id = BENCH_ORG_PREFIX + result["run_id"]
    with LiveKitSIP(stack.livekit_url, stack.api_key, stack.api_secret) as livekit:
        metadata = [t.metadata for t in livekit.list_inbound_trunks()]
        metadata += [t.metadata for t in livekit.list_outbound_trunks()]
        metadata += [r.metadata for r in livekit.list_dispatch_rules()]
    left = [m for m in metadata if is_bench_object(m, org_id)]
    assert left == []
