"""Retention on the real redis-server: the Lua batches, approximate XTRIM MINID, the
`trunkline retention` commands, the beat task on a real worker, and the soak's smoke run.

Nothing waits for days: finished jobs are made old by moving their index scores back, and
old results are written with old stream ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
from typer.testing import CliRunner, Result

from ops.cli import app
from producers import ProvisioningClient
from tests.integration.conftest import (
    REPO,
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    everything_on_livekit,
    wait_for,
)
from worker.livekit import InboundTrunk, LiveKitSIP
from worker.records import JobState
from worker.store import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

DAY = 86_400
SETTINGS = ("REDIS_URL", "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET",
            "TRUNKLINE_SECRET_KEYS")


def trunkline(stack: Stack, *args: str, **env: str) -> Result:
    """`trunkline ARGS...` in-process, with the stack's settings (and `env` over them)."""
    settings = {k: v for k, v in stack.env(**env).items() if k in SETTINGS}
    return CliRunner().invoke(app, list(args), env={**settings, "COLUMNS": "200"})


def age(db: redis.Redis, store: JobStore, job_id: str, days: float) -> None:
    """Make a finished job (and its dead letter, if any) look `days` old."""
    at = time.time() - days * DAY
    db.zadd(store.keys.terminal, {job_id: at}, xx=True)
    db.zadd(store.keys.dead_letters, {job_id: at}, xx=True)


def run_to_end(client: ProvisioningClient, job_id: str) -> None:
    job = client.wait(job_id, timeout=60)
    assert job.state.terminal, job


def test_apply_deletes_old_jobs_keeps_the_rest_and_never_a_replayed_one(
    stack: Stack, client: ProvisioningClient, worker_factory: WorkerFactory,
    redis_db: redis.Redis, livekit: LiveKitSIP,
) -> None:
    """Three real jobs: an old success goes with its marker and index entries (its number
    record and LiveKit objects stay), a recent one stays, an old dead letter that was replayed
    is never deleted; `show` counts them before and after."""
    worker_factory()
    store = client.store
    old = client.submit(org_id="org_a", request={**SEED_REQUEST, "number": "+15551230001"})
    recent = client.submit(org_id="org_a", request={**SEED_REQUEST, "number": "+15551230002"})
    livekit.create_inbound_trunk(InboundTrunk(name="foreign", numbers=["+15551230003"]))
    dead = client.submit(org_id="org_a", request={**SEED_REQUEST, "number": "+15551230003"})
    for job_id in (old, recent, dead):
        run_to_end(client, job_id)
    assert client.get(dead).state is JobState.FAILED
    age(redis_db, store, old, days=31)
    age(redis_db, store, dead, days=91)

    shown = json.loads(trunkline(stack, "retention", "show", "--json").stdout)
    assert (shown["finished_jobs"]["kept"], shown["finished_jobs"]["due"]) == (3, 2)
    assert (shown["dead_letters"]["kept"], shown["dead_letters"]["due"]) == (1, 1)
    assert shown["job_record_bytes"] > 0 and shown["used_memory_bytes"] > 0

    # The dead letter is replayed (it fails again: the foreign trunk still holds the number)
    # between `show` and `apply`: a new run, so nothing of it may be deleted.
    client.replay(dead)
    run_to_end(client, dead)
    objects = everything_on_livekit(livekit)

    dry = trunkline(stack, "retention", "apply", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["deleted"]["jobs"] == 1
    assert redis_db.exists(store.keys.job(old))

    applied = trunkline(stack, "retention", "apply", "--json")
    assert applied.exit_code == 0, applied.output
    report = json.loads(applied.stdout)
    assert report["deleted"]["jobs"] == 1 and report["deleted"]["dead_letters"] == 0
    assert not redis_db.exists(store.keys.job(old))
    assert not redis_db.exists(store.keys.published(old, 1))
    assert redis_db.zscore(store.keys.jobs_by_org("org_a"), old) is None
    number = store.get_number("+15551230001")
    assert number is not None and number.job_id == old
    assert client.get(recent).state is JobState.SUCCEEDED
    replayed = client.get(dead)
    assert replayed.run == 2 and replayed.state is JobState.FAILED
    assert everything_on_livekit(livekit) == objects

    human = trunkline(stack, "retention", "show")
    assert human.exit_code == 0, human.output
    assert "TRUNKLINE_RETAIN_JOBS_DAYS" in human.stdout


def test_results_older_than_the_bound_are_trimmed_by_whole_nodes(
    stack: Stack, client: ProvisioningClient, redis_db: redis.Redis,
) -> None:
    """Real XTRIM MINID ~: every node wholly older than the bound goes; newer entries stay."""
    stream = client.store.keys.results
    old_ms = int((time.time() - 8 * DAY) * 1000)
    for start in range(0, 1000, 250):
        pipe = redis_db.pipeline(transaction=False)
        for i in range(start, start + 250):
            pipe.xadd(stream, {"job_id": f"old{i}"}, id=f"{old_ms + i}-0")
        pipe.execute()
    for i in range(5):
        redis_db.xadd(stream, {"job_id": f"new{i}"})
    applied = trunkline(stack, "retention", "apply", "--json")
    assert applied.exit_code == 0, applied.output
    trimmed = json.loads(applied.stdout)["deleted"]["results"]
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis_db.xrange(stream))
    left = [fields[b"job_id"].decode() for _, fields in entries]
    assert left[-5:] == [f"new{i}" for i in range(5)]
    # A node holds up to 100 entries (stream-node-max-entries): at most one partly old node.
    assert trimmed >= 900 and len(left) - 5 < 100 and trimmed + len(left) == 1005


def test_an_unreachable_redis_is_one_line_naming_redis_url(
    stack: Stack, unused_tcp_port: int,
) -> None:
    """Both commands: exit code 3, one line that says which setting to check."""
    for args in (("retention", "show"), ("retention", "apply", "--dry-run")):
        done = trunkline(stack, *args, REDIS_URL=f"redis://127.0.0.1:{unused_tcp_port}/2")
        assert done.exit_code == 3, (args, done.output)
        assert "check REDIS_URL" in done.stderr and "Traceback" not in done.output


def test_the_beat_task_applies_retention_on_a_real_worker(
    stack: Stack, client: ProvisioningClient, worker_factory: WorkerFactory,
    redis_db: redis.Redis, tmp_path: Path, unused_tcp_port: int,
) -> None:
    """`celery -A worker beat` sends trunkline.retention every TRUNKLINE_RETENTION_INTERVAL;
    the worker deletes an old finished job and exports what it did."""
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {"TRUNKLINE_METRICS_PORT": str(unused_tcp_port),
           "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "TRUNKLINE_RETENTION_INTERVAL": "1",
           "TRUNKLINE_RECONCILE_INTERVAL": "0"}
    worker = worker_factory(**env)
    job_id = client.submit(org_id="org_a", request=SEED_REQUEST)
    run_to_end(client, job_id)
    age(redis_db, client.store, job_id, days=31)
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO",
         f"--schedule={tmp_path / 'beat-schedule'}"],
        env=stack.env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd=REPO,
    )
    metrics = ""

    def deleted_and_exported() -> bool:
        nonlocal metrics
        if redis_db.exists(client.store.keys.job(job_id)):
            return False
        metrics = httpx.get(f"http://127.0.0.1:{unused_tcp_port}/metrics", timeout=5).text
        return 'trunkline_retention_deleted_total{kind="jobs"} 1.0' in metrics

    try:
        wait_for(deleted_and_exported, 60, "the beat's retention run to delete the old job "
                 f"(worker log: {worker.log_path})", interval=0.5)
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(10)
    assert client.store.get_number(SEED_REQUEST["number"]) is not None
    assert 'trunkline_retention_kept{kind="jobs"} 0.0' in metrics
    assert "trunkline_retention_last_run_timestamp_seconds" in metrics


def test_the_soak_runs_and_retention_bounds_what_it_keeps(stack: Stack, tmp_path: Path) -> None:
    """`python -m bench.soak` on a short horizon (a smoke run: no timing is asserted)."""
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--jobs", "400", "--horizon", "0.5",
         "--retention-every", "100", "--sample-every", "100", "--numbers", "40",
         "--refuse-every", "20", "--redis-url", stack.redis_url, "--redis-db", "4",
         "--json", str(out)],
        cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["jobs"] == 400 and result["failures"] == []
    assert result["outcomes"] == {"finished": 400}
    assert result["deleted"]["jobs"] > 0 and result["deleted"]["dead_letters"] > 0
    samples = result["samples"]
    assert samples[0]["jobs"] == 0 and samples[-1]["jobs"] == 400
    # Everything finished before the last run's horizon is gone.
    assert samples[-1]["finished_jobs"] < 400
    summary = result["summary"]
    assert summary["broker_queue_left"] == 0
    assert summary["bytes_per_job_by_key"]["job_record"] > 0
