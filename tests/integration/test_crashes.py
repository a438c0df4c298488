"""Workers SIGKILLed mid-job: every job still ends once, with exactly one set of objects."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from producers import ProvisioningClient
from tests.integration.conftest import (
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    WorkerProcess,
    everything_on_livekit,
    stream_events,
    wait_for,
)
from tests.support.faultproxy import Action, FaultProxy, Rule
from worker.livekit import LiveKitSIP
from worker.records import Job, JobState
from worker.store import RESULTS_STREAM, JobStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

# The setting: a short visibility timeout, so recovery takes seconds, not an hour.
CRASH_ENV = {"TRUNKLINE_VISIBILITY_TIMEOUT": "20"}
POINTS = ["before_trunks", "after_trunks", "after_rule", "after_record", "before_finish"]


def drive(client: ProvisioningClient, worker: WorkerProcess, job_ids: list[str],
          timeout: float) -> list[Job]:
    """Restart the worker whenever it died, until every job is terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive:
            worker.start()
        jobs = [client.get(job_id) for job_id in job_ids]
        if all(job.state.terminal for job in jobs):
            return jobs
        time.sleep(0.2)
    states = {job_id: client.get(job_id).state.value for job_id in job_ids}
    pytest.fail(f"jobs not finished after {timeout}s: {states}\n{worker.read_log()[-4000:]}")


def assert_one_set_each(jobs: list[Job], livekit: LiveKitSIP, db: redis.Redis) -> None:
    on_livekit = everything_on_livekit(livekit)
    results = [job.result for job in jobs]
    assert all(r is not None for r in results)
    assert on_livekit == {
        "inbound": sorted(r.inbound_trunk_id for r in results if r),
        "outbound": sorted(r.outbound_trunk_id for r in results if r),
        "rules": sorted(r.dispatch_rule_id for r in results if r),
    }
    store = JobStore(db)
    for job in jobs:
        record = store.get_number(job.number)
        assert record is not None
        assert record.job_id == job.job_id
        events = stream_events(db, RESULTS_STREAM, job.job_id)
        assert [e["status"] for e in events] == ["succeeded"], events


def test_sigkill_at_every_step_boundary(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP, redis_db: redis.Redis, tmp_path: Path,
) -> None:
    """Killed at each boundary of the saga, jobs complete after restarts with one set each."""
    worker = worker_factory(
        start=False, **CRASH_ENV, TRUNKLINE_CHAOS_KILL_AT=",".join(POINTS),
        TRUNKLINE_CHAOS_DIR=str(tmp_path / "chaos"),
    )
    worker.start()
    job_ids = [
        client.submit(org_id="org_k", request=SEED_REQUEST),
        client.submit(org_id="org_k", request={**SEED_REQUEST, "number": "+15557654321"}),
    ]
    jobs = drive(client, worker, job_ids, timeout=240)

    assert all(job.state is JobState.SUCCEEDED for job in jobs), [j.error for j in jobs]
    fired = sorted(p.name.split(".")[-1] for p in (tmp_path / "chaos").iterdir())
    # Every point killed the worker for both jobs (one kill can stop both at once).
    assert fired == sorted(POINTS * 2)
    assert worker.starts >= 2
    assert all(job.attempts >= 2 for job in jobs)
    assert_one_set_each(jobs, livekit, redis_db)


@pytest.mark.parametrize(
    "method", ["CreateSIPInboundTrunk", "CreateSIPOutboundTrunk", "CreateSIPDispatchRule"]
)
def test_sigkill_after_livekit_executed_a_create(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP, redis_db: redis.Redis, method: str,
) -> None:
    """LiveKit created the object, then the worker died before reading the reply: adopted."""
    with FaultProxy(stack.livekit_url) as proxy:
        worker = worker_factory(start=False, **CRASH_ENV, LIVEKIT_URL=proxy.url)
        worker.start()
        killed: list[int] = []

        def kill_worker() -> None:
            assert worker.proc is not None
            killed.append(worker.proc.pid)
            os.killpg(worker.proc.pid, signal.SIGKILL)

        proxy.add_rule(Rule(Action.CALLBACK, method=method, times=1, callback=kill_worker))
        job_id = client.submit(org_id="org_k", request=SEED_REQUEST)
        (job,) = drive(client, worker, [job_id], timeout=120)

        assert killed, "the fault never fired"
        assert job.state is JobState.SUCCEEDED, job.error
        assert proxy.executed(method) == 1
        assert_one_set_each([job], livekit, redis_db)


def test_job_that_kills_its_worker_every_time_is_dead_lettered(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP, redis_db: redis.Redis, tmp_path: Path,
) -> None:
    """A poison job stops after the attempt limit: dead-lettered, one failed event, no loop."""
    worker = worker_factory(
        start=False, **CRASH_ENV, TRUNKLINE_MAX_ATTEMPTS="3",
        TRUNKLINE_CHAOS_KILL_AT="after_trunks", TRUNKLINE_CHAOS_MODE="always",
        TRUNKLINE_CHAOS_DIR=str(tmp_path / "chaos"),
    )
    worker.start()
    job_id = client.submit(org_id="org_p", request=SEED_REQUEST)
    (job,) = drive(client, worker, [job_id], timeout=180)

    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.code == "worker_lost"
    assert job.attempts == 4  # three deliveries died; the fourth gave up without running
    assert job.dead_lettered
    assert JobStore(redis_db).dead_letter_ids() == [job_id]
    # Compensation removed the trunks each dying attempt had created (and adopted).
    assert everything_on_livekit(livekit) == {"inbound": [], "outbound": [], "rules": []}
    events = stream_events(redis_db, RESULTS_STREAM, job_id)
    assert [e["status"] for e in events] == ["failed"]
    assert json.loads(events[0]["payload"])["error_code"] == "worker_lost"
    # Nothing is left to run. The sweeper cannot send it again: it left the active index.
    assert redis_db.zscore("trunkline:jobs:active", job_id) is None
    # A message of a killed delivery still comes back (Redis restores unacked messages after
    # the visibility timeout): deliver one now and wait until the worker has handled it.
    if not worker.alive:
        worker.start()
    late = client.app.send_task("trunkline.provision", args=[job_id],
                                queue=client.settings.queue)
    wait_for(lambda: late.id in worker.tasks("succeeded"), 60,
             "the worker handled the late redelivery")
    assert worker.alive, "the late redelivery ran the poison job again"
    again = client.get(job_id)
    assert again.attempts == 4
    assert again.state is JobState.FAILED
    assert len(stream_events(redis_db, RESULTS_STREAM, job_id)) == 1
    assert redis_db.zscore("trunkline:jobs:active", job_id) is None
