"""The message the producer writes with a job is the one Celery's send_task would send."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
import redis

from producers import ProvisioningClient
from tests.integration.conftest import SEED_REQUEST, Stack, WorkerFactory
from worker.app import create_app, enqueue
from worker.config import Settings
from worker.messages import TaskMessages
from worker.records import JobState

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]


def _normalised(raw: bytes) -> dict[str, Any]:
    """A queued message with its per-message ids blanked (and the key order kept)."""
    message = cast(dict[str, Any], json.loads(raw))
    for name in ("id", "root_id"):
        message["headers"][name] = "ID"
    message["properties"]["correlation_id"] = "ID"
    message["properties"]["delivery_tag"] = "TAG"
    return message


def test_built_message_is_what_send_task_sends(stack: Stack, redis_db: redis.Redis) -> None:
    settings = Settings.from_env(stack.env())
    app = create_app(settings)
    try:
        enqueue(app, settings, "job_0123456789abcdef0123456789abcdef")
        built = TaskMessages(app, settings.queue).provision("job_0123456789abcdef0123456789abcdef")
    finally:
        app.close()
    sent = cast(list[bytes], redis_db.lrange(settings.queue, 0, -1))

    assert built.queue_key == settings.queue
    assert len(sent) == 1
    mine, celery = _normalised(built.payload.encode()), _normalised(sent[0])
    assert mine == celery
    assert list(mine) == list(celery)
    assert list(mine["headers"]) == list(celery["headers"])
    assert list(mine["properties"]) == list(celery["properties"])


def test_job_stored_with_its_message_runs_once(
    worker_factory: WorkerFactory, client: ProvisioningClient, redis_db: redis.Redis
) -> None:
    """A submitted job's record and message arrive together; a repeat with the same
    idempotency key adds neither; the worker runs the job from that message."""
    first = client.submit(org_id="org_msg", request=SEED_REQUEST, idempotency_key="k-1")
    again = client.submit(org_id="org_msg", request=SEED_REQUEST, idempotency_key="k-1")
    queued = cast(list[bytes], redis_db.lrange(client.settings.queue, 0, -1))

    assert again == first
    assert len(queued) == 1
    assert json.loads(json.loads(queued[0])["headers"]["argsrepr"].replace("'", '"')) == [first]

    worker_factory()
    job = client.wait(first, 60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.attempts == 1
