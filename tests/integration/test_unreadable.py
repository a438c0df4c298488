"""A corrupt job record written straight into the real Redis is isolated: a real worker
dead-letters it with its own reason code and one event, the sweeper goes on re-sending other
overdue jobs, the `trunkline` commands name it instead of crashing, and a normal job submitted
afterwards still succeeds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from ops.cli import app
from producers import ProvisioningClient
from tests.integration.conftest import (
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    stream_events,
    wait_for,
)
from worker.app import enqueue
from worker.contract import parse_request
from worker.records import Job, JobState, StoredRequest, new_job_id
from worker.store import RESULTS_STREAM

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

CORRUPT_NUMBER = "+15557654321"


def plant_corrupt(redis_db: redis.Redis, *, overdue: bool) -> str:
    """A job record nested past the JSON parser's limit, queued for CORRUPT_NUMBER."""
    job_id = new_job_id()
    metadata = "[" * 300 + "]" * 300
    raw = (f'{{"job_id":"{job_id}","org_id":"org_a","number":"{CORRUPT_NUMBER}",'
           f'"state":"queued","request":{{"metadata":{{"x":{metadata}}}}}}}').encode()
    redis_db.set(f"trunkline:job:{job_id}", raw)
    deadline = time.time() - 5 if overdue else time.time() + 3600
    redis_db.zadd("trunkline:jobs:active", {job_id: deadline})
    redis_db.zadd(f"trunkline:inflight:{CORRUPT_NUMBER}", {job_id: time.time()})
    return job_id


def lost_message_job(client: ProvisioningClient, number: str) -> str:
    """A good job stored without its message (as if the broker lost it), already overdue."""
    parsed = parse_request({**SEED_REQUEST, "number": number})
    job = Job(job_id=new_job_id(), org_id="org_a", number=parsed.number,
              request=StoredRequest.seal(parsed, client.vault),
              request_fingerprint=client.vault.fingerprint(parsed.fingerprint_material()))
    job_id, _ = client.store.create(job, deadline=time.time() - 1)
    return job_id


def unreadable_events(redis_db: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(event["payload"]) | {"status": event["status"]}
            for event in stream_events(redis_db, RESULTS_STREAM, job_id)]


def test_a_corrupt_record_is_isolated_and_everything_else_goes_on(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    redis_db: redis.Redis,
) -> None:
    # A short visibility timeout makes the worker's sweeper pass every 2.5 s.
    worker = worker_factory(TRUNKLINE_VISIBILITY_TIMEOUT="20")
    delivered = plant_corrupt(redis_db, overdue=False)
    swept = plant_corrupt(redis_db, overdue=True)
    lost = lost_message_job(client, "+15551110001")
    enqueue(client.app, client.settings, delivered)  # the runner meets it in a delivery

    def succeeded(job_id: str) -> Callable[[], bool]:
        def check() -> bool:
            job = client.store.get(job_id)
            return job is not None and job.state is JobState.SUCCEEDED
        return check

    # The sweeper met the corrupt overdue record and still re-sent the lost good job.
    wait_for(succeeded(lost), 90, "the sweeper re-sent the lost job past a corrupt one")
    def dead_lettered(job_id: str) -> Callable[[], bool]:
        return lambda: redis_db.zscore("trunkline:dlq", job_id) is not None

    for job_id in (delivered, swept):
        wait_for(dead_lettered(job_id), 60, f"{job_id} dead-lettered")
        (event,) = unreadable_events(redis_db, job_id)
        assert event["status"] == "failed"
        assert event["error_code"] == "unreadable_record"
        assert event["number"] == CORRUPT_NUMBER
        assert redis_db.zscore("trunkline:jobs:active", job_id) is None
    assert client.store.jobs_in_flight(CORRUPT_NUMBER) == []
    assert "Traceback" not in worker.read_log()

    # The commands name the record and go on.
    runner = CliRunner()
    env = {k: v for k, v in stack.env().items()
           if k in ("REDIS_URL", "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET",
                    "TRUNKLINE_SECRET_KEYS")}
    listed = runner.invoke(app, ["dlq", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    codes = {entry["job_id"]: entry["error"]["code"] for entry in json.loads(listed.stdout)}
    assert codes == {delivered: "unreadable_record", swept: "unreadable_record"}
    shown = runner.invoke(app, ["jobs", "show", swept], env=env)
    assert shown.exit_code != 0
    assert "cannot be read" in shown.output
    assert shown.exception is None or isinstance(shown.exception, SystemExit)
    reconciled = runner.invoke(app, ["reconcile", "--json"], env=env)
    assert reconciled.exit_code == 0, reconciled.output

    # A normal job afterwards, for the corrupt record's number too.
    after = client.submit(org_id="org_a", request={**SEED_REQUEST, "number": CORRUPT_NUMBER})
    assert client.wait(after, 60).state is JobState.SUCCEEDED
    assert redis_db.xlen(RESULTS_STREAM) == 4  # lost, two unreadable, after: one each
