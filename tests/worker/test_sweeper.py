"""Unit tests for worker.sweeper.Sweeper: overdue jobs are sent again, and only once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import fakeredis
import pytest

from tests.worker.fake_livekit import NUMBER, Fault, Harness, build_job, settings
from worker.config import Settings
from worker.records import Job, JobState
from worker.store import JobStore
from worker.sweeper import Sweeper
from worker.vault import Vault

NOW = 1_900_000_000.0


class Enqueued:
    """Captures the enqueue callable's calls."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, job_id: str) -> None:
        self.ids.append(job_id)


@pytest.fixture
def config() -> Settings:
    return settings()


@pytest.fixture
def vault(config: Settings) -> Vault:
    return Vault(config.secret_keys)


@pytest.fixture
def store() -> Iterator[JobStore]:
    client = fakeredis.FakeRedis()
    yield JobStore(client)
    client.close()


@pytest.fixture
def enqueued() -> Enqueued:
    return Enqueued()


@pytest.fixture
def sweeper(store: JobStore, enqueued: Enqueued, config: Settings) -> Sweeper:
    return Sweeper(store, enqueued, config, clock=lambda: NOW)


def add(store: JobStore, vault: Vault, deadline: float, *, number: str = NUMBER,
        state: JobState = JobState.QUEUED) -> Job:
    job = build_job(vault, number=number, state=state)
    store.create(job, deadline=deadline)
    return job


def deadline_of(store: JobStore, job: Job) -> float | None:
    score = store.redis.zscore(store.keys.active, job.job_id)
    return None if score is None else float(score)


def test_due_jobs_are_enqueued_again(
    store: JobStore, vault: Vault, sweeper: Sweeper, enqueued: Enqueued, config: Settings
) -> None:
    """Jobs past their deadline are sent again and get a new deadline a visibility later."""
    queued = add(store, vault, NOW - 5)
    running = add(store, vault, NOW - 1, number="+15557654321", state=JobState.RUNNING)

    resent = sweeper.sweep_once()

    assert sorted(resent) == sorted([queued.job_id, running.job_id])
    assert sorted(enqueued.ids) == sorted(resent)
    assert deadline_of(store, queued) == NOW + config.visibility_timeout
    assert deadline_of(store, running) == NOW + config.visibility_timeout


def test_jobs_not_yet_due_are_left_alone(
    store: JobStore, vault: Vault, sweeper: Sweeper, enqueued: Enqueued
) -> None:
    """A job whose deadline is still ahead is neither sent nor moved."""
    job = add(store, vault, NOW + 10)

    assert sweeper.sweep_once() == []
    assert enqueued.ids == []
    assert deadline_of(store, job) == NOW + 10


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED])
def test_terminal_jobs_are_dropped_from_the_active_index(
    store: JobStore, vault: Vault, sweeper: Sweeper, enqueued: Enqueued, state: JobState
) -> None:
    """A finished job still in the index is removed from it, not sent."""
    job = add(store, vault, NOW - 5, state=state)

    assert sweeper.sweep_once() == []
    assert enqueued.ids == []
    assert deadline_of(store, job) is None


def test_vanished_jobs_are_dropped_from_the_active_index(
    store: JobStore, sweeper: Sweeper, enqueued: Enqueued
) -> None:
    """An index entry whose job record is gone is removed, not sent."""
    store.redis.zadd(store.keys.active, {"job_gone": NOW - 5})

    assert sweeper.sweep_once() == []
    assert enqueued.ids == []
    assert store.redis.zscore(store.keys.active, "job_gone") is None


def test_job_held_by_a_live_run_of_itself_is_not_sent(
    store: JobStore, vault: Vault, sweeper: Sweeper, enqueued: Enqueued
) -> None:
    """A due job whose number lock a run of the same job holds is looked at again later."""
    job = add(store, vault, NOW - 5)
    assert store.acquire_number_lock(NUMBER, f"{job.job_id}:live-run", 20)

    assert sweeper.sweep_once() == []
    assert enqueued.ids == []
    deadline = deadline_of(store, job)
    assert deadline is not None
    assert NOW < deadline <= NOW + 20 + 1


def test_job_whose_number_another_job_holds_is_sent(
    store: JobStore, vault: Vault, sweeper: Sweeper, enqueued: Enqueued
) -> None:
    """A number locked by a different job does not stop a lost message from being re-sent."""
    job = add(store, vault, NOW - 5)
    assert store.acquire_number_lock(NUMBER, "job_other:run", 20)

    assert sweeper.sweep_once() == [job.job_id]
    assert enqueued.ids == [job.job_id]


def test_only_one_of_two_sweepers_acts_in_an_interval(
    store: JobStore, vault: Vault, config: Settings
) -> None:
    """The sweeper lock lets one sweeper act; the other does nothing until it expires."""
    job = add(store, vault, NOW - 5)
    first_calls, second_calls = Enqueued(), Enqueued()
    first = Sweeper(store, first_calls, config, clock=lambda: NOW)
    second = Sweeper(store, second_calls, config, clock=lambda: NOW)
    store.redis.zadd(store.keys.active, {job.job_id: NOW - 5})

    assert first.sweep_once() == [job.job_id]
    store.redis.zadd(store.keys.active, {job.job_id: NOW - 5})  # due again at once
    assert second.sweep_once() == []

    assert first_calls.ids == [job.job_id]
    assert second_calls.ids == []
    ttl_ms = store.redis.pttl(store.keys.sweeper_lock)
    assert 0 < ttl_ms <= config.sweep_interval * 1000


def test_sweep_sends_at_most_a_batch(
    store: JobStore, vault: Vault, enqueued: Enqueued, config: Settings
) -> None:
    """One sweep sends at most `batch` jobs, the most overdue first."""
    jobs = [add(store, vault, NOW - 10 + i, number=f"+1555765432{i}") for i in range(3)]
    sweeper = Sweeper(store, enqueued, config, clock=lambda: NOW, batch=2)

    assert sweeper.sweep_once() == [jobs[0].job_id, jobs[1].job_id]
    assert deadline_of(store, jobs[2]) == NOW - 8


def test_lost_retry_message_is_sent_again_after_its_deadline() -> None:
    """A rescheduled job is left alone until delay + visibility timeout, then sent again."""
    h = Harness()
    try:
        job = h.submit()
        h.fake.inject("CreateSIPOutboundTrunk", Fault.unreachable())
        before = time.time()
        outcome = h.runner().run(job.job_id)
        after = time.time()
        assert outcome.kind == "retry"
        window = outcome.delay + h.settings.visibility_timeout
        sent = Enqueued()

        early = Sweeper(h.store, sent, h.settings, clock=lambda: before + window - 1)
        assert early.sweep_once() == []
        h.redis.delete(h.store.keys.sweeper_lock)
        late = Sweeper(h.store, sent, h.settings, clock=lambda: after + window + 1)
        assert late.sweep_once() == [job.job_id]
        assert sent.ids == [job.job_id]
    finally:
        h.close()
