"""Unit tests for producers.api.waiter.ResultWaiter on fakeredis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from producers.api.waiter import ResultWaiter

STREAM = "trunkline:results"


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    made = fakeredis.FakeRedis()
    yield made
    made.close()


@pytest.fixture
def waiter(client: fakeredis.FakeRedis) -> Iterator[ResultWaiter]:
    made = ResultWaiter(client, STREAM, block_ms=100)
    yield made
    made.stop()


def publish_later(client: redis.Redis, *job_ids: str, delay: float = 0.2) -> threading.Timer:
    def publish() -> None:
        for job_id in job_ids:
            client.xadd(STREAM, {"job_id": job_id, "status": "succeeded", "payload": "{}"})

    timer = threading.Timer(delay, publish)
    timer.start()
    return timer


def test_a_watch_ends_when_its_jobs_event_is_read(
    waiter: ResultWaiter, client: fakeredis.FakeRedis
) -> None:
    client.xadd(STREAM, {"job_id": "job_old", "status": "succeeded"})  # before: not news

    async def scenario() -> tuple[bool, bool]:
        with waiter.watch("job_a") as seen_a, waiter.watch("job_b") as seen_b:
            publish_later(client, "job_other", "job_a")
            await asyncio.wait_for(seen_a, 10)
            return seen_a.done(), seen_b.done()

    assert asyncio.run(scenario()) == (True, False)


def test_two_requests_waiting_for_one_job_both_wake(
    waiter: ResultWaiter, client: fakeredis.FakeRedis
) -> None:
    async def scenario() -> None:
        with waiter.watch("job_a") as first, waiter.watch("job_a") as second:
            publish_later(client, "job_a")
            await asyncio.wait_for(asyncio.gather(first, second), 10)

    asyncio.run(scenario())


def test_a_finished_watch_leaves_nothing_registered(
    waiter: ResultWaiter, client: fakeredis.FakeRedis
) -> None:
    async def scenario() -> None:
        with waiter.watch("job_a"):
            pass

    asyncio.run(scenario())

    assert waiter._waiting == {}


def test_redis_errors_do_not_stop_the_reader(waiter: ResultWaiter,
                                             client: fakeredis.FakeRedis,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed read is logged and retried; the next event still wakes its waiter."""
    original = client.xread
    failures = [redis.ConnectionError("down")]

    def flaky(*args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "xread", flaky)

    async def scenario() -> None:
        with waiter.watch("job_a") as seen:
            publish_later(client, "job_a", delay=1.5)
            await asyncio.wait_for(seen, 10)

    asyncio.run(scenario())
    assert failures == []
