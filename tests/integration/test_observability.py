"""Structured logs and Prometheus metrics from a real worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from producers import ProvisioningClient
from tests.integration.apiserver import start_api
from tests.integration.conftest import SEED_REQUEST, Stack, WorkerFactory
from worker.livekit import InboundTrunk, LiveKitSIP
from worker.reconcile import latest_report
from worker.records import JobState, StepName
from worker.saga import make_tag

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]


def test_worker_logs_json_with_job_ids_and_serves_metrics(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    tmp_path: Path, unused_tcp_port: int,
) -> None:
    """Every log line is JSON; job lines carry job_id/org_id; /metrics counts outcomes."""
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    worker = worker_factory(TRUNKLINE_METRICS_PORT=str(unused_tcp_port),
                            PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    ok = client.wait(client.submit(org_id="org_m", request=SEED_REQUEST), 60)
    livekit.create_inbound_trunk(InboundTrunk(name="foreign", numbers=["+15557654321"]))
    bad = client.wait(client.submit(org_id="org_m", request={
        **SEED_REQUEST, "number": "+15557654321"}), 60)
    assert (ok.state, bad.state) == (JobState.SUCCEEDED, JobState.FAILED)

    lines = worker.read_log().splitlines()
    # Celery's startup banner is printed, not logged; every logged line is JSON.
    assert not [line for line in lines if re.match(r"\[\d{4}-\d\d-\d\d", line)]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) > 10
    mine = [r for r in records if r.get("job_id") == ok.job_id]
    assert mine, "no log line carries the job id"
    assert all(r["org_id"] == "org_m" for r in mine)
    assert any("livekit call failed" in r["event"] and r.get("job_id") == bad.job_id
               for r in records)

    metrics = httpx.get(f"http://127.0.0.1:{unused_tcp_port}/metrics", timeout=5).text
    assert 'trunkline_jobs_total{code="",kind="create",outcome="succeeded"} 1.0' in metrics
    assert ('trunkline_jobs_total{code="number_conflict",kind="create",outcome="failed"} 1.0'
            in metrics)
    assert "trunkline_dead_letter_depth 1.0" in metrics
    assert 'trunkline_livekit_errors_total{code="number_conflict"' in metrics
    assert 'trunkline_step_duration_seconds_count{step="inbound_trunk"}' in metrics


def test_beat_schedules_reconcile_and_its_findings_reach_metrics(
    stack: Stack, worker_factory: WorkerFactory, livekit: LiveKitSIP, tmp_path: Path,
    unused_tcp_port: int, redis_db: redis.Redis,
) -> None:
    """`celery -A worker beat` sends the reconcile report; its orphan count is exported and
    its findings kept as the latest report."""
    orphan = livekit.create_inbound_trunk(InboundTrunk(
        name="orphan", numbers=["+15559990000"],
        metadata=make_tag("job_gone", "org_x", StepName.INBOUND_TRUNK, "+15559990000")))
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {"TRUNKLINE_METRICS_PORT": str(unused_tcp_port),
           "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "TRUNKLINE_RECONCILE_INTERVAL": "2"}
    worker = worker_factory(**env)
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO",
         f"--schedule={tmp_path / 'beat-schedule'}"],
        env=stack.env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        metrics = ""
        while time.monotonic() < deadline:
            metrics = httpx.get(f"http://127.0.0.1:{unused_tcp_port}/metrics", timeout=5).text
            if 'trunkline_reconcile_findings{kind="orphans"} 1.0' in metrics:
                break
            time.sleep(0.5)
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(10)
    assert 'trunkline_reconcile_findings{kind="orphans"} 1.0' in metrics, worker.read_log()[-2000:]
    assert 'trunkline_reconcile_findings{kind="missing"} 0.0' in metrics
    # Saved before the metrics are set, so it is there once they show.
    saved = latest_report(redis_db)
    assert saved is not None and saved["source"] == "beat"
    assert [f["livekit_id"] for f in saved["orphans"]] == [orphan.sip_trunk_id]


def test_api_logs_are_json_too(stack: Stack, tmp_path: Path) -> None:
    """`trunkline api` logs through the same JSON formatter, access lines included."""
    server = start_api(stack, tmp_path / "api.log")
    try:
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        time.sleep(0.5)
    finally:
        server.stop()
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert any(r["logger"] == "uvicorn.access" and "GET /healthz" in r["event"] for r in records)
    assert not any("color_message" in r for r in records)
