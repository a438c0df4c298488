"""Unit tests for worker.sweeper.Sweeper: overdue jobs are sent again, and only once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis.exceptions

from tests.worker.fake_livekit import NUMBER, Fault, Harness, build_job, settings
from worker.config import Settings
from worker.records import Job, JobState
from worker.store import JobStore
from worker.sweeper import Sweeper, SweeperThread
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
    # One second after the live run's lease ends (the lease has just under 20 s left).
    assert NOW + 20 < deadline <= NOW + 20 + 1


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


# --------------------------------------------------------------------------- the sweeper thread


class CountingSweeper(Sweeper):
    """A sweeper that counts its sweeps, and fails the first `failures` of them."""

    def __init__(self, store: JobStore, config: Settings, *, failures: int = 0) -> None:
        super().__init__(store, Enqueued(), config)
        self.failures = failures
        self.sweeps = 0
        self.swept = threading.Condition()

    def sweep_once(self) -> list[str]:
        with self.swept:
            self.sweeps += 1
            self.swept.notify_all()
        if self.sweeps <= self.failures:
            raise redis.exceptions.ConnectionError("redis went away")
        return []

    def wait_for(self, sweeps: int, timeout: float = 10.0) -> bool:
        with self.swept:
            return self.swept.wait_for(lambda: self.sweeps >= sweeps, timeout)


class SweeperFactory:
    """Builds one CountingSweeper per call, failing the first `failures` calls."""

    def __init__(self, store: JobStore, config: Settings, *, failures: int = 0,
                 sweep_failures: int = 0) -> None:
        self.store, self.config = store, config
        self.failures, self.sweep_failures = failures, sweep_failures
        self.built: list[CountingSweeper] = []
        self.calls = 0

    def __call__(self) -> Sweeper:
        self.calls += 1
        if self.calls <= self.failures:
            raise redis.exceptions.ConnectionError("redis is not up yet")
        sweeper = CountingSweeper(self.store, self.config, failures=self.sweep_failures)
        self.built.append(sweeper)
        return sweeper


@pytest.fixture
def running() -> Iterator[list[SweeperThread]]:
    """Threads a test started; stopped and joined however the test ends."""
    threads: list[SweeperThread] = []
    yield threads
    for thread in threads:
        thread.stop()
        thread.join(10)


def test_sweeper_thread_is_a_named_daemon(store: JobStore, config: Settings) -> None:
    """The thread never keeps a stopping worker process alive, and says what it is."""
    thread = SweeperThread(SweeperFactory(store, config), 0.01)

    assert thread.daemon is True
    assert thread.name == "trunkline-sweeper"
    assert thread.interval == 0.01


def test_sweeper_thread_sweeps_every_interval_with_one_sweeper(
    store: JobStore, config: Settings, running: list[SweeperThread]
) -> None:
    """The thread sweeps again and again, building its sweeper once, until it is stopped."""
    factory = SweeperFactory(store, config)
    thread = SweeperThread(factory, 0.01)
    running.append(thread)
    thread.start()

    assert wait_until(lambda: bool(factory.built))
    assert factory.built[0].wait_for(3)
    thread.stop()
    thread.join(10)

    assert not thread.is_alive()
    assert factory.calls == 1


def test_sweeper_thread_waits_an_interval_before_its_first_sweep(
    store: JobStore, config: Settings, running: list[SweeperThread]
) -> None:
    """A worker starting up does not sweep at once; a stop during the wait ends the thread."""
    factory = SweeperFactory(store, config)
    thread = SweeperThread(factory, 3600)
    running.append(thread)
    thread.start()

    thread.stop()
    thread.join(10)

    assert not thread.is_alive()
    assert factory.calls == 0


def test_sweeper_thread_survives_failed_sweeps(
    store: JobStore, config: Settings, running: list[SweeperThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sweep that raises (Redis down) is logged and the next interval sweeps again."""
    caplog.set_level(logging.ERROR, logger="worker.sweeper")
    factory = SweeperFactory(store, config, failures=2, sweep_failures=2)
    thread = SweeperThread(factory, 0.01)
    running.append(thread)
    thread.start()

    assert wait_until(lambda: bool(factory.built))
    assert factory.built[0].wait_for(4)

    assert factory.calls == 3  # two failed builds, then one sweeper kept
    failures = [r for r in caplog.records if r.getMessage() == "sweep failed"]
    assert len(failures) == 4
    assert all(r.exc_info is not None for r in failures)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# --------------------------------------------------------------------------- found by mutants
# Pinned down after mutation testing (`make mutants`) showed these went unchecked.


def test_jobs_left_alone_do_not_end_the_sweep(
    store: JobStore, vault: Vault, sweeper: Sweeper, enqueued: Enqueued
) -> None:
    """A finished job or a job held by its live run does not stop the jobs due after it."""
    add(store, vault, NOW - 30, number="+15557654320", state=JobState.SUCCEEDED)
    held = add(store, vault, NOW - 20, number="+15557654321")
    assert store.acquire_number_lock("+15557654321", f"{held.job_id}:live-run", 20)
    due = add(store, vault, NOW - 10)

    assert sweeper.sweep_once() == [due.job_id]
    assert enqueued.ids == [due.job_id]


def test_default_batch_is_two_hundred(
    store: JobStore, vault: Vault, enqueued: Enqueued, config: Settings
) -> None:
    """Without a batch size one sweep sends 200 jobs; the rest wait for the next one."""
    for i in range(201):
        add(store, vault, NOW - 300 + i, number=f"+1555700{i:04d}")

    assert len(Sweeper(store, enqueued, config, clock=lambda: NOW).sweep_once()) == 200


def test_resent_jobs_are_logged_ten_at_most(
    store: JobStore, vault: Vault, sweeper: Sweeper, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning counts every re-sent job and names the first ten."""
    caplog.set_level(logging.WARNING, logger="worker.sweeper")
    jobs = [add(store, vault, NOW - 20 + i, number=f"+1555700{i:04d}") for i in range(11)]

    sweeper.sweep_once()

    names = ", ".join(job.job_id for job in jobs[:10])
    assert [r.getMessage() for r in caplog.records] == [
        f"sweeper re-enqueued 11 overdue job(s): {names}"]



def test_sweeper_lock_lasts_nine_tenths_of_the_interval(
    store: JobStore, vault: Vault, config: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep lock expires before the next interval, so some sweeper acts every interval."""
    add(store, vault, NOW - 5)
    taken: list[tuple[str, dict[str, Any]]] = []
    real_set = store.redis.set

    def recording_set(name: str, value: Any, **options: Any) -> Any:
        taken.append((name, options))
        return real_set(name, value, **options)

    monkeypatch.setattr(store.redis, "set", recording_set)

    Sweeper(store, Enqueued(), config, clock=lambda: NOW).sweep_once()

    assert config.sweep_interval == 7.5
    assert (store.keys.sweeper_lock, {"nx": True, "px": 6750}) in taken


def test_unreadable_job_is_dead_lettered_and_logged(
    store: JobStore, sweeper: Sweeper, enqueued: Enqueued, caplog: pytest.LogCaptureFixture
) -> None:
    """A due job whose record cannot be read is not sent; it is dead-lettered, by id, once."""
    caplog.set_level(logging.ERROR, logger="worker.sweeper")
    job_id = "job_" + "e" * 32
    store.redis.set(store.keys.job(job_id), b"{not json")
    store.redis.zadd(store.keys.active, {job_id: NOW - 5})

    assert sweeper.sweep_once() == []

    assert enqueued.ids == []
    assert store.dead_letter_ids() == [job_id]
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("sweeper: ")
    assert message.endswith("; dead-lettered as unreadable_record")
    assert job_id in message
