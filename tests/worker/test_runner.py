"""Unit tests for worker.runner.JobRunner: one delivery of a job, end to end, without Celery.

No sockets: fakeredis for the job store and the fake LiveKit behind httpx.MockTransport.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import structlog
from prometheus_client import REGISTRY

from tests.worker.fake_livekit import NUMBER, ORG, PASSWORD, Fault, Harness
from worker.livekit import deadline
from worker.records import Job, JobError, JobState, Phase, StepName, StepStatus
from worker.retry import ProvisioningFailure, RetryPolicy
from worker.runner import (
    COMPENSATION_ATTEMPT_FACTOR,
    LANDING_MARGIN_SECONDS,
    JobRunner,
    Outcome,
    event_payload,
)
from worker.saga import StepHooks, tag
from worker.store import RESULTS_STREAM, Claim, ClaimStatus

RESULT_KEYS = {"number", "inbound_trunk_id", "outbound_trunk_id", "dispatch_rule_id",
               "phone_number_id"}
ERROR_KEYS = {"error_code", "error_message", "retryable"}


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def events(h: Harness) -> list[dict[str, Any]]:
    """Entries of the results stream, fields decoded and the payload parsed."""
    decoded: list[dict[str, Any]] = []
    raw = cast(list[tuple[bytes, dict[bytes, bytes]]], h.redis.xrange(RESULTS_STREAM))
    for _, fields in raw:
        entry = {k.decode(): v.decode() for k, v in fields.items()}
        entry["payload"] = json.loads(entry["payload"])
        decoded.append(entry)
    return decoded


def redis_text(h: Harness) -> bytes:
    """Every key and value in the store's Redis, concatenated, for secret scans."""
    chunks: list[bytes] = []
    for key in cast(list[bytes], list(h.redis.scan_iter())):
        chunks.append(key)
        kind = h.redis.type(key)
        if kind == b"string":
            chunks.append(cast(bytes, h.redis.get(key)))
        elif kind == b"zset":
            chunks.extend(cast(list[bytes], h.redis.zrange(key, 0, -1)))
        elif kind == b"stream":
            for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], h.redis.xrange(key)):
                chunks.extend(b"%s=%s" % item for item in fields.items())
        elif kind == b"hash":
            hashed = cast(dict[bytes, bytes], h.redis.hgetall(key))
            chunks.extend(b"%s=%s" % item for item in hashed.items())
        elif kind == b"set":
            chunks.extend(cast(set[bytes], h.redis.smembers(key)))
        elif kind == b"list":
            chunks.extend(cast(list[bytes], h.redis.lrange(key, 0, -1)))
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} for {key!r}")
    return b"\n".join(chunks)


def update(h: Harness, job: Job, change: Callable[[Job], None]) -> Job:
    """Change a stored job under its lock, as an earlier run would have."""
    token = h.lock(job)
    change(job)
    h.store.save(job, token)
    h.store.release_number_lock(job.number, token)
    return h.reload(job)


def in_active_index(h: Harness, job: Job) -> bool:
    return job.job_id in h.store.due(float("inf"), 1000)


class WorkerDied(BaseException):
    """Stands for the worker process being killed mid-call: nothing in the run catches it."""


def foreign_inbound(h: Harness) -> str:
    return h.fake.seed_inbound(name="not ours", numbers=[NUMBER])


# --------------------------------------------------------------------------- success


def test_success_writes_succeeded_and_the_result(h: Harness) -> None:
    """A clean run ends SUCCEEDED with the created ids as its result."""
    job = h.submit()

    outcome = h.runner().run(job.job_id)

    assert outcome == Outcome("finished", detail="succeeded")
    stored = h.reload(job)
    assert stored.state is JobState.SUCCEEDED
    assert stored.attempts == 1
    assert stored.result is not None
    assert stored.result.inbound_trunk_id in h.fake.inbound
    assert stored.result.outbound_trunk_id in h.fake.outbound
    assert stored.result.dispatch_rule_id in h.fake.rules
    assert stored.finished_at is not None
    assert stored.dead_lettered is False
    assert h.store.dead_letter_ids() == []
    assert not in_active_index(h, stored)
    assert h.store.number_lock_holder(NUMBER)[0] is None
    assert h.fake.list_calls() == 0


def test_success_publishes_one_event_with_the_result(h: Harness) -> None:
    """Success appends one `succeeded` entry with the documented payload keys."""
    job = h.submit()

    h.runner().run(job.job_id)

    published = events(h)
    assert len(published) == 1
    event = published[0]
    assert (event["job_id"], event["org_id"], event["status"]) == (job.job_id, ORG, "succeeded")
    payload = event["payload"]
    assert RESULT_KEYS | {"attempts", "created_at", "finished_at"} <= set(payload)
    assert not ERROR_KEYS & set(payload)
    stored = h.reload(job)
    assert stored.result is not None
    assert {k: payload[k] for k in RESULT_KEYS} == stored.result.model_dump()
    assert payload["number"] == NUMBER
    assert payload["attempts"] == 1
    assert h.store.redis.exists(RESULTS_STREAM) == 1


@pytest.mark.parametrize("fails", [False, True])
def test_password_is_nowhere_in_redis_or_logs(
    h: Harness, caplog: pytest.LogCaptureFixture, fails: bool
) -> None:
    """After success or failure, the SIP password is in no Redis key, value or log line."""
    if fails:
        foreign_inbound(h)
    job = h.submit()
    caplog.set_level("DEBUG")

    h.runner().run(job.job_id)

    assert h.reload(job).state.terminal
    text = redis_text(h)
    assert job.job_id.encode() in text
    assert PASSWORD.encode() not in text
    assert PASSWORD not in caplog.text
    if not fails:  # the canary did travel: LiveKit's outbound trunk holds it
        assert [t["auth_password"] for t in h.fake.outbound.values()] == [PASSWORD]


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.unreachable(), "livekit_unavailable"),
        (Fault.lost(), "livekit_timeout"),
        (Fault.http(503), "livekit_server_error"),
        (Fault.http(429), "livekit_rate_limited"),
    ],
)
@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_retryable_error_reschedules_within_the_cap(
    h: Harness, fault: Fault, code: str, jitter: float
) -> None:
    """A retryable LiveKit error requeues the job with a delay in [0, cap] and counts it."""
    job = h.submit()
    h.fake.inject("CreateSIPOutboundTrunk", fault)
    runner = h.runner(rand=lambda: jitter)
    before = time.time()

    outcome = runner.run(job.job_id)

    assert outcome.kind == "retry"
    assert 0.0 <= outcome.delay <= runner.policy.cap
    stored = h.reload(job)
    assert stored.state is JobState.QUEUED
    assert stored.attempts == 1
    assert stored.error is not None
    assert (stored.error.code, stored.error.retryable) == (code, True)
    assert stored.next_attempt_at is not None
    assert stored.next_attempt_at.timestamp() >= before + outcome.delay - 1
    assert stored.finished_at is None
    assert in_active_index(h, stored)
    assert events(h) == []


def test_interrupted_run_is_retried(h: Harness) -> None:
    """A run stopped from outside (soft time limit) is rescheduled as run_interrupted."""

    class SoftLimit(Exception):
        pass

    def stop(point: str, job: Job) -> None:
        if point == "after_trunks":
            raise SoftLimit

    h.saga.hooks = StepHooks(reached=stop)
    runner = JobRunner(h.store, h.saga, h.settings, rand=lambda: 0.5,
                       interruptions=(SoftLimit,))
    job = h.submit()

    outcome = runner.run(job.job_id)

    assert outcome.kind == "retry"
    stored = h.reload(job)
    assert stored.state is JobState.QUEUED
    assert stored.error is not None
    assert (stored.error.code, stored.error.retryable) == ("run_interrupted", True)


def test_backoff_delay_never_exceeds_the_cap(h: Harness) -> None:
    """Late attempts back off by at most the cap, even at full jitter."""
    harness = Harness(max_attempts=20, backoff_cap=5.0)
    try:
        job = harness.submit()
        job = update(harness, job, lambda j: setattr(j, "attempts", 12))
        harness.fake.inject("CreateSIPOutboundTrunk", Fault.unreachable())
        runner = harness.runner(rand=lambda: 1.0)

        outcome = runner.run(job.job_id)

        assert outcome.kind == "retry"
        assert runner.policy.cap == 5.0
        assert outcome.delay == pytest.approx(5.0)
        assert harness.reload(job).attempts == 13
    finally:
        harness.close()


def test_retry_then_success_leaves_one_set_of_objects(h: Harness) -> None:
    """After retryable failures the job succeeds with exactly one object per step."""
    job = h.submit()
    h.fake.inject("CreateSIPInboundTrunk", Fault.lost())
    h.fake.inject("CreateSIPDispatchRule", Fault.http(500))
    runner = h.runner()

    outcomes = [runner.run(job.job_id).kind for _ in range(3)]

    assert outcomes == ["retry", "retry", "finished"]
    stored = h.reload(job)
    assert stored.state is JobState.SUCCEEDED
    assert stored.attempts == 3
    assert (len(h.fake.inbound), len(h.fake.outbound), len(h.fake.rules)) == (1, 1, 1)
    assert stored.step(StepName.INBOUND_TRUNK).adopted is True
    assert len(events(h)) == 1


def test_attempt_limit_compensates_fails_and_dead_letters(h: Harness) -> None:
    """Retryable errors up to the attempt limit end compensated, FAILED and dead-lettered."""
    job = h.submit()
    h.fake.inject("CreateSIPOutboundTrunk", *[Fault.unreachable()] * 3)
    runner = h.runner()

    outcomes = [runner.run(job.job_id).kind for _ in range(3)]

    assert outcomes == ["retry", "retry", "finished"]
    stored = h.reload(job)
    assert stored.state is JobState.FAILED
    assert stored.attempts == h.settings.max_attempts == 3
    assert stored.error is not None
    assert stored.error.code == "livekit_unavailable"
    assert "gave up after 3 attempts" in stored.error.message
    assert stored.dead_lettered is True
    assert h.store.dead_letter_ids() == [job.job_id]
    assert h.fake.calls["CreateSIPInboundTrunk"] == 1
    assert (len(h.fake.inbound), len(h.fake.outbound), len(h.fake.rules)) == (0, 0, 0)
    published = events(h)
    assert [e["status"] for e in published] == ["failed"]
    assert published[0]["payload"]["error_code"] == "livekit_unavailable"
    assert published[0]["payload"]["retryable"] is True
    assert not in_active_index(h, stored)


def test_job_whose_workers_died_is_dead_lettered_without_livekit(h: Harness) -> None:
    """A job whose attempts already reached the limit fails as worker_lost, calling nothing."""
    job = h.submit()

    def died_every_time(j: Job) -> None:
        j.attempts = h.settings.max_attempts
        j.state = JobState.RUNNING

    job = update(h, job, died_every_time)

    outcome = h.runner().run(job.job_id)

    assert outcome == Outcome("finished", detail="failed")
    assert sum(h.fake.calls.values()) == 0
    stored = h.reload(job)
    assert stored.state is JobState.FAILED
    assert stored.error is not None
    assert stored.error.code == "worker_lost"
    assert h.store.dead_letter_ids() == [job.job_id]
    published = events(h)
    assert len(published) == 1
    assert published[0]["status"] == "failed"
    assert published[0]["payload"]["error_code"] == "worker_lost"
    assert set(published[0]["payload"]) >= ERROR_KEYS


def test_job_whose_workers_died_mid_saga_has_its_objects_removed(h: Harness) -> None:
    """Dead-lettering a job whose runs died mid-saga deletes what those runs created."""
    job = h.submit()
    killing = True

    def die_after_rule_create(method: str) -> None:
        if killing and method == "CreateSIPDispatchRule":
            raise WorkerDied

    def die_looking_for_the_rule(method: str) -> None:
        if killing and method == "ListSIPDispatchRule":
            raise WorkerDied

    # The first run dies once its rule exists; the next ones die looking for that rule.
    h.fake.after_apply = die_after_rule_create
    h.fake.before_apply = die_looking_for_the_rule
    for _ in range(h.settings.max_attempts):
        with pytest.raises(WorkerDied):
            h.runner().run(job.job_id)
    dead = h.reload(job)
    assert dead.attempts == h.settings.max_attempts
    assert dead.step(StepName.DISPATCH_RULE).status is StepStatus.STARTED
    assert dead.step(StepName.DISPATCH_RULE).resource_id is None
    assert len(h.fake.rules) == 1
    killing = False

    outcome = h.runner().run(job.job_id)

    assert outcome == Outcome("finished", detail="failed")
    assert (len(h.fake.inbound), len(h.fake.outbound), len(h.fake.rules)) == (0, 0, 0)
    stored = h.reload(job)
    assert stored.error is not None
    assert stored.error.code == "worker_lost"
    assert h.store.dead_letter_ids() == [job.job_id]
    assert [e["status"] for e in events(h)] == ["failed"]


def test_compensation_that_kills_its_worker_every_time_ends(h: Harness) -> None:
    """A compensation whose worker dies on every delivery is dead-lettered, not run forever."""
    foreign_inbound(h)
    job = h.submit()

    def die_on_delete(method: str) -> None:
        if method == "DeleteSIPTrunk":
            raise WorkerDied

    h.fake.before_apply = die_on_delete
    limit = h.settings.max_attempts * COMPENSATION_ATTEMPT_FACTOR
    for _ in range(limit + 2):
        try:
            h.runner().run(job.job_id)
        except WorkerDied:
            continue
        break

    stored = h.reload(job)
    assert stored.state is JobState.FAILED
    assert h.store.dead_letter_ids() == [job.job_id]
    assert any(item.startswith("outbound_trunk:") for item in stored.leftovers)
    assert [e["status"] for e in events(h)] == ["failed"]


# --------------------------------------------------------------------------- permanent errors


def test_permanent_error_compensates_and_fails(h: Harness) -> None:
    """A number held by a foreign trunk fails at once; what the job created is deleted."""
    foreign = foreign_inbound(h)
    job = h.submit()

    outcome = h.runner().run(job.job_id)

    assert outcome == Outcome("finished", detail="failed")
    stored = h.reload(job)
    assert stored.state is JobState.FAILED
    assert stored.attempts == 1
    assert stored.error is not None
    assert (stored.error.code, stored.error.retryable, stored.error.field) == (
        "number_conflict", False, "number")
    assert h.fake.calls["CreateSIPOutboundTrunk"] == 1
    assert h.fake.outbound == {}
    assert list(h.fake.inbound) == [foreign]
    assert h.store.dead_letter_ids() == [job.job_id]
    published = events(h)
    assert len(published) == 1
    assert published[0]["status"] == "failed"
    assert published[0]["payload"]["error_code"] == "number_conflict"
    assert published[0]["payload"]["retryable"] is False


# --------------------------------------------------------------------------- locking


@pytest.mark.parametrize("holder", ["job_someoneelse:abc123", "{job_id}:duplicate-delivery"])
def test_locked_number_retries_without_using_an_attempt(h: Harness, holder: str) -> None:
    """A number locked by another run means retry later; no attempt, no LiveKit call."""
    job = h.submit()
    token = holder.format(job_id=job.job_id)
    assert h.store.acquire_number_lock(NUMBER, token, 30)
    runner = h.runner()

    outcome = runner.run(job.job_id)

    assert outcome.kind == "retry"
    assert 0.0 < outcome.delay <= runner.policy.cap
    stored = h.reload(job)
    assert stored.attempts == 0
    assert stored.state is JobState.QUEUED
    assert sum(h.fake.calls.values()) == 0
    assert h.store.number_lock_holder(NUMBER)[0] == token


def test_run_that_loses_its_lock_stops_writing(h: Harness) -> None:
    """A run whose lock was taken over mid-saga stops, writes nothing more, publishes nothing."""
    job = h.submit()

    def take_over(point: str, running: Job) -> None:
        if point == "after_trunks":
            h.redis.set(h.store.keys.number_lock(NUMBER), f"{running.job_id}:other-run")

    h.saga.hooks = StepHooks(reached=take_over)

    outcome = h.runner().run(job.job_id)

    assert outcome.kind == "skipped"
    assert h.fake.calls["CreateSIPDispatchRule"] == 0
    stored = h.reload(job)
    assert stored.state is JobState.RUNNING
    assert stored.step(StepName.DISPATCH_RULE).resource_id is None
    assert events(h) == []
    assert h.store.number_lock_holder(NUMBER)[0] == f"{job.job_id}:other-run"


def test_every_livekit_call_of_a_run_ends_before_its_lease(h: Harness) -> None:
    """The run sets a deadline a margin short of its lease; the saga's calls see it."""
    job = h.submit()
    left: list[float | None] = []
    h.saga.hooks = StepHooks(reached=lambda point, running: left.append(deadline.time_left()))

    before = time.monotonic()
    assert h.runner().run(job.job_id).kind == "finished"

    budget = h.settings.lease_seconds - LANDING_MARGIN_SECONDS - (time.monotonic() - before)
    assert left and all(value is not None and budget - 1 < value <= budget + 1 for value in left)
    assert deadline.time_left() is None


def test_run_without_time_for_another_call_stops_and_leaves_the_job_to_the_next(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """No call is started that could still land after the lease ends (a takeover may have
    looked by then): the run stops unfailed, the job waits for its sweep deadline."""
    job = h.submit()

    def lease_runs_out(point: str, running: Job) -> None:
        if point == "after_trunks":
            monkeypatch.setattr(deadline, "time_left", lambda: 0.1)

    h.saga.hooks = StepHooks(reached=lease_runs_out)

    outcome = h.runner().run(job.job_id)

    assert outcome == Outcome("skipped", 0.0, "lease ending")
    assert h.fake.calls["CreateSIPDispatchRule"] == 0
    stored = h.reload(job)
    assert stored.state is JobState.RUNNING and stored.error is None
    assert stored.step(StepName.OUTBOUND_TRUNK).status is StepStatus.DONE
    assert events(h) == []
    assert in_active_index(h, stored)
    assert h.store.number_lock_holder(NUMBER)[0] is None


# --------------------------------------------------------------------------- terminal jobs


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED])
def test_terminal_job_is_skipped(h: Harness, state: JobState) -> None:
    """A delivery of a finished job does nothing."""
    job = h.submit(state=state)

    outcome = h.runner().run(job.job_id)

    assert outcome.kind == "skipped"
    assert sum(h.fake.calls.values()) == 0
    assert h.reload(job).attempts == 0
    assert events(h) == []


def test_unknown_job_is_skipped(h: Harness) -> None:
    """A message for a job the store does not know is dropped."""
    assert h.runner().run("job_doesnotexist").kind == "skipped"
    assert sum(h.fake.calls.values()) == 0


@pytest.mark.parametrize("fails", [False, True])
def test_running_again_after_finish_publishes_nothing(h: Harness, fails: bool) -> None:
    """Delivering a job again after it finished neither runs it nor publishes again."""
    if fails:
        foreign_inbound(h)
    job = h.submit()
    runner = h.runner()
    runner.run(job.job_id)
    calls = sum(h.fake.calls.values())
    finished = h.reload(job)

    outcome = runner.run(job.job_id)

    assert outcome.kind == "skipped"
    assert len(events(h)) == 1
    assert sum(h.fake.calls.values()) == calls
    assert h.reload(job) == finished


# --------------------------------------------------------------------------- compensation


def test_failing_compensation_is_retried_until_it_succeeds(h: Harness) -> None:
    """A compensation hitting a retryable error is rescheduled; the job finishes only after."""
    foreign_inbound(h)
    job = h.submit()
    h.fake.inject("DeleteSIPTrunk", Fault.unreachable())
    runner = h.runner()

    first = runner.run(job.job_id)

    assert first.kind == "retry"
    assert 0.0 <= first.delay <= runner.policy.cap
    pending = h.reload(job)
    assert pending.state is JobState.QUEUED
    assert pending.phase is Phase.COMPENSATE
    assert pending.finished_at is None
    assert pending.dead_lettered is False
    assert h.store.dead_letter_ids() == []
    assert in_active_index(h, pending)
    assert len(h.fake.outbound) == 1
    assert events(h) == []

    second = runner.run(job.job_id)

    assert second == Outcome("finished", detail="failed")
    done = h.reload(job)
    assert done.state is JobState.FAILED
    assert done.attempts == 1
    assert done.error is not None
    assert done.error.code == "number_conflict"
    assert h.fake.outbound == {}
    assert h.store.dead_letter_ids() == [job.job_id]
    assert [e["status"] for e in events(h)] == ["failed"]


def test_delete_whose_response_was_lost_is_retried_harmlessly(h: Harness) -> None:
    """A trunk delete executed with its response lost is retried; the job then finishes."""
    foreign = foreign_inbound(h)
    job = h.submit()
    h.fake.inject("DeleteSIPTrunk", Fault.lost())
    runner = h.runner()

    assert runner.run(job.job_id).kind == "retry"
    assert h.fake.outbound == {}

    assert runner.run(job.job_id) == Outcome("finished", detail="failed")
    assert h.fake.calls["DeleteSIPTrunk"] == 2
    assert list(h.fake.inbound) == [foreign]
    assert [e["status"] for e in events(h)] == ["failed"]


def test_compensation_that_never_succeeds_records_leftovers(h: Harness) -> None:
    """A compensation out of attempts finishes FAILED naming what may be left on LiveKit."""
    foreign_inbound(h)
    job = h.submit()
    limit = h.settings.max_attempts * COMPENSATION_ATTEMPT_FACTOR
    h.fake.inject("DeleteSIPTrunk", *[Fault.unreachable()] * (limit + 5))
    runner = h.runner()

    outcomes = [runner.run(job.job_id).kind for _ in range(limit + 1)]

    assert outcomes[-1] == "finished"
    assert outcomes.count("finished") == 1
    stored = h.reload(job)
    assert stored.state is JobState.FAILED
    outbound_id = next(iter(h.fake.outbound))
    assert f"outbound_trunk:{outbound_id}" in stored.leftovers
    published = events(h)
    assert len(published) == 1
    assert f"outbound_trunk:{outbound_id}" in published[0]["payload"]["leftovers"]
    assert h.store.dead_letter_ids() == [job.job_id]


# --------------------------------------------------------------------------- exact decisions
# The tests below pin down values the tests above only bound: found missing by mutation
# testing (`make mutants`), where a changed delay, deadline, limit or message went unnoticed.

NOW = 1_900_000_000.0


def fixed_runner(h: Harness, *, rand: Callable[[], float] = lambda: 1.0,
                 interruptions: tuple[type[BaseException], ...] = (),
                 hooks: StepHooks | None = None) -> JobRunner:
    """A runner whose clock stands still at NOW and whose jitter is `rand`."""
    return JobRunner(h.store, h.saga, h.settings, clock=lambda: NOW, rand=rand,
                     interruptions=interruptions, hooks=hooks)


def deadline_of(h: Harness, job: Job) -> float | None:
    score = h.redis.zscore(h.store.keys.active, job.job_id)
    return None if score is None else float(score)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def compensating(h: Harness, **changes: Any) -> Job:
    """A submitted job whose run already created its trunks and then failed permanently."""
    job = h.submit()

    def created_then_failed(j: Job) -> None:
        for name, resource in ((StepName.INBOUND_TRUNK, h.fake.seed_inbound(
                metadata=tag(j, StepName.INBOUND_TRUNK), numbers=[NUMBER])),
                (StepName.OUTBOUND_TRUNK, h.fake.seed_outbound(
                    metadata=tag(j, StepName.OUTBOUND_TRUNK), numbers=[NUMBER],
                    address="sip.provider.example"))):
            j.step(name).status = StepStatus.DONE
            j.step(name).resource_id = resource
        j.attempts = 1
        j.phase = Phase.COMPENSATE
        j.error = JobError(code="livekit_rejected", message="refused", retryable=False)
        for key, value in changes.items():
            setattr(j, key, value)

    return update(h, job, created_then_failed)


class SoftLimit(Exception):
    """Stands for Celery's SoftTimeLimitExceeded."""


def test_skipped_outcomes_say_why(h: Harness) -> None:
    """A skipped delivery carries no delay and names its reason."""
    done = h.submit(state=JobState.SUCCEEDED)

    assert h.runner().run("job_doesnotexist") == Outcome("skipped", 0.0, "unknown job")
    assert h.runner().run(done.job_id) == Outcome("skipped", 0.0, "already succeeded")


def test_retry_outcome_names_the_error(h: Harness) -> None:
    """A rescheduled delivery carries the error code as its detail."""
    job = h.submit()
    h.fake.inject("CreateSIPOutboundTrunk", Fault.unreachable())

    outcome = fixed_runner(h, rand=lambda: 0.5).run(job.job_id)

    assert outcome == Outcome("retry", 0.5, "livekit_unavailable")


def test_retry_deadline_is_delay_plus_visibility_timeout(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A rescheduled job is due for the sweeper one visibility timeout after its retry time."""
    caplog.set_level("INFO", logger="worker.runner")
    job = h.submit()
    h.fake.inject("CreateSIPOutboundTrunk", Fault.unreachable())
    before = sample("trunkline_job_retries_total", kind="create", code="livekit_unavailable")

    outcome = fixed_runner(h, rand=lambda: 1.0).run(job.job_id)

    assert outcome.delay == 1.0  # attempt 1: base * 2**0, full jitter
    stored = h.reload(job)
    assert deadline_of(h, stored) == NOW + 1.0 + h.settings.visibility_timeout
    assert stored.next_attempt_at is not None
    assert stored.next_attempt_at.timestamp() == NOW + 1.0
    assert sample("trunkline_job_retries_total", kind="create",
                  code="livekit_unavailable") == before + 1
    assert (f"job {job.job_id} attempt 1 failed (livekit_unavailable); retry in 1.0s"
            in messages(caplog))


def test_finished_attempt_and_job_share_the_end_time(h: Harness) -> None:
    """The last attempt of a job that succeeds ends when the job does."""
    job = h.submit()

    h.runner().run(job.job_id)

    stored = h.reload(job)
    assert stored.finished_at is not None
    assert [a.finished_at for a in stored.history] == [stored.finished_at]


def test_failed_attempt_keeps_its_own_end_time(h: Harness) -> None:
    """An attempt closed by its error is not re-stamped when compensation later ends the job."""
    foreign_inbound(h)
    job = h.submit()

    h.runner().run(job.job_id)

    stored = h.reload(job)
    attempt = stored.history[-1]
    assert attempt.error is not None
    assert attempt.error.code == "number_conflict"
    assert attempt.finished_at is not None
    assert stored.finished_at is not None
    # Compensation (LiveKit calls) ran in between.
    assert attempt.finished_at < stored.finished_at


@pytest.mark.parametrize("fails", [False, True])
def test_finish_reaches_its_hook_counts_and_logs(
    h: Harness, caplog: pytest.LogCaptureFixture, fails: bool
) -> None:
    """Finishing passes the before_finish point, counts the job once and logs its event."""
    caplog.set_level("INFO", logger="worker.runner")
    if fails:
        foreign_inbound(h)
    job = h.submit()
    points: list[tuple[str, str, JobState]] = []
    hooks = StepHooks(reached=lambda point, j: points.append((point, j.job_id, j.state)))
    state, code = ("failed", "number_conflict") if fails else ("succeeded", "")
    before = sample("trunkline_jobs_total", kind="create", outcome=state, code=code)

    fixed_runner(h, hooks=hooks).run(job.job_id)

    expected = JobState.FAILED if fails else JobState.SUCCEEDED
    assert ("before_finish", job.job_id, expected) in points
    assert sample("trunkline_jobs_total", kind="create", outcome=state, code=code) == before + 1
    event_id = events_ids(h)[0]
    assert f"job {job.job_id} {state} (event {event_id})" in messages(caplog)


def test_finish_of_an_already_published_job_says_so(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A run that finishes a job whose event is out already counts nothing and says so."""
    caplog.set_level("INFO", logger="worker.runner")
    job = h.submit()
    runner = h.runner()
    runner.run(job.job_id)
    event_id = events_ids(h)[0]
    stored = h.reload(job)
    token = h.lock(stored)
    before = sample("trunkline_jobs_total", kind="create", outcome="succeeded", code="")

    runner._finish(stored, token, JobState.SUCCEEDED)

    assert sample("trunkline_jobs_total", kind="create", outcome="succeeded", code="") == before
    assert (f"job {job.job_id} succeeded (event {event_id}, already published)"
            in messages(caplog))


def events_ids(h: Harness) -> list[str]:
    raw = cast(list[tuple[bytes, dict[bytes, bytes]]], h.redis.xrange(RESULTS_STREAM))
    return [entry_id.decode() for entry_id, _ in raw]


def test_event_payload_of_a_success(h: Harness) -> None:
    """A success's payload: the documented keys and the result, no error keys."""
    job = h.submit()
    h.runner().run(job.job_id)
    stored = h.reload(job)
    assert stored.result is not None and stored.finished_at is not None

    assert event_payload(stored) == {
        "type": "created",
        "number": NUMBER,
        "attempts": 1,
        "run": 1,
        "created_at": stored.created_at.isoformat(),
        "finished_at": stored.finished_at.isoformat(),
        **stored.result.model_dump(),
    }


def test_event_payload_of_a_failure_names_the_field_and_leftovers(h: Harness) -> None:
    """A failure's payload carries the error, its field when there is one, and leftovers."""
    job = h.submit()
    job.error = JobError(code="number_conflict", message="taken", retryable=False,
                         field="number")
    job.leftovers = ["outbound_trunk:ST_x"]

    payload = event_payload(job)

    assert payload["finished_at"] is None
    assert {k: payload[k] for k in ("error_code", "error_message", "retryable", "error_field",
                                    "leftovers")} == {
        "error_code": "number_conflict", "error_message": "taken", "retryable": False,
        "error_field": "number", "leftovers": ["outbound_trunk:ST_x"]}
    job.error = JobError(code="livekit_unavailable", message="down", retryable=True)
    job.leftovers = []
    assert "error_field" not in event_payload(job)
    assert "leftovers" not in event_payload(job)


def test_worker_lost_error_is_retryable_and_explains(h: Harness) -> None:
    """A job whose workers died at every attempt fails as worker_lost, marked retryable."""
    job = h.submit()
    job = update(h, job, lambda j: setattr(j, "attempts", h.settings.max_attempts))

    h.runner().run(job.job_id)

    error = h.reload(job).error
    assert error == JobError(
        code="worker_lost", retryable=True,
        message="the worker running this job died 3 times (killed or out of memory); "
                "it was stopped to protect the queue")


def test_attempt_limit_after_a_died_worker_keeps_the_last_error(h: Harness) -> None:
    """A job that failed, then lost its worker on its last attempt, fails with that error."""
    job = h.submit()

    def failed_then_died(j: Job) -> None:
        j.attempts = h.settings.max_attempts
        j.error = JobError(code="livekit_timeout", message="no answer", retryable=True,
                           field="number")

    job = update(h, job, failed_then_died)

    assert h.runner().run(job.job_id) == Outcome("finished", detail="failed")

    assert h.reload(job).error == JobError(
        code="livekit_timeout", retryable=True, field="number",
        message="gave up after 3 attempts: no answer")


def test_compensation_runs_on_its_last_allowed_delivery(h: Harness) -> None:
    """The delivery that reaches the compensation limit still compensates, and succeeds."""
    limit = h.settings.max_attempts * COMPENSATION_ATTEMPT_FACTOR
    job = compensating(h, compensation_attempts=limit - 1)

    assert h.runner().run(job.job_id) == Outcome("finished", detail="failed")

    stored = h.reload(job)
    assert stored.compensation_attempts == limit
    assert stored.leftovers == []
    assert (h.fake.inbound, h.fake.outbound) == ({}, {})


def test_compensation_past_its_limit_stops_with_leftovers(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery past the compensation limit calls nothing and lists what may be left."""
    caplog.set_level("ERROR", logger="worker.runner")
    limit = h.settings.max_attempts * COMPENSATION_ATTEMPT_FACTOR
    job = compensating(h, compensation_attempts=limit)

    assert h.runner().run(job.job_id) == Outcome("finished", detail="failed")

    stored = h.reload(job)
    assert sum(h.fake.calls.values()) == 0
    inbound, outbound = stored.step(StepName.INBOUND_TRUNK), stored.step(StepName.OUTBOUND_TRUNK)
    leftovers = [f"inbound_trunk:{inbound.resource_id}", f"outbound_trunk:{outbound.resource_id}"]
    assert stored.leftovers == leftovers
    assert (f"job {job.job_id} compensation died {limit} times; leftovers {leftovers}"
            in messages(caplog))


def test_compensation_retry_backs_off_by_its_own_count(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A compensation retry waits backoff(compensation attempts + 1), named by the job's error."""
    caplog.set_level("WARNING", logger="worker.runner")
    job = compensating(h, compensation_attempts=2)
    h.fake.inject("DeleteSIPTrunk", Fault.unreachable())

    outcome = fixed_runner(h, rand=lambda: 1.0).run(job.job_id)

    # Third compensation delivery: backoff(4) = base * 2**3 at full jitter.
    assert outcome == Outcome("retry", 8.0, "livekit_rejected")
    stored = h.reload(job)
    assert deadline_of(h, stored) == NOW + 8.0 + h.settings.visibility_timeout
    assert stored.error is not None and stored.error.code == "livekit_rejected"
    attempt_error = stored.history[-1].error
    assert attempt_error is not None and attempt_error.code == "livekit_unavailable"
    assert (f"job {job.job_id} compensation failed (livekit_unavailable); retry in 8.0s"
            in messages(caplog))


def test_compensation_interrupted_is_retried_as_run_interrupted(h: Harness) -> None:
    """A soft time limit inside compensation reschedules it, recorded as run_interrupted."""

    def stop(method: str) -> None:
        if method == "DeleteSIPTrunk":
            raise SoftLimit

    job = compensating(h)
    h.fake.before_apply = stop

    outcome = fixed_runner(h, interruptions=(SoftLimit,)).run(job.job_id)

    assert outcome.kind == "retry"
    attempt_error = h.reload(job).history[-1].error
    assert attempt_error == JobError(code="run_interrupted", message="SoftLimit", retryable=True)


def test_compensation_permanent_error_gives_up_at_once(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A permanent error in compensation is not retried: the job fails listing its leftovers."""
    caplog.set_level("ERROR", logger="worker.runner")
    job = compensating(h)
    h.fake.inject("DeleteSIPTrunk", Fault.http(400))

    outcome = fixed_runner(h, interruptions=(SoftLimit,)).run(job.job_id)

    assert outcome == Outcome("finished", detail="failed")
    stored = h.reload(job)
    assert stored.leftovers == [
        f"inbound_trunk:{stored.step(StepName.INBOUND_TRUNK).resource_id}",
        f"outbound_trunk:{stored.step(StepName.OUTBOUND_TRUNK).resource_id}"]
    assert (f"job {job.job_id} compensation gave up (livekit_rejected); "
            f"leftovers {stored.leftovers}" in messages(caplog))


def test_runner_takes_its_retry_policy_from_the_settings() -> None:
    """Attempts, backoff base and cap, and the settle time after unknown outcomes come from
    the settings."""
    harness = Harness(max_attempts=7, backoff_base=2.5, backoff_cap=10.0, livekit_timeout=3.0)
    try:
        assert harness.settings.effective_backoff_cap == 10.0
        assert harness.runner().policy == RetryPolicy(
            max_attempts=7, base=2.5, cap=10.0, settle=3.0)
    finally:
        harness.close()


def test_run_binds_the_job_to_the_log_context(h: Harness) -> None:
    """While a job runs, every log line carries its job id, organisation and kind."""
    job = h.submit()
    seen: list[dict[str, Any]] = []
    hooks = StepHooks(reached=lambda point, j: seen.append(structlog.contextvars.get_contextvars()))

    fixed_runner(h, hooks=hooks).run(job.job_id)

    assert seen
    assert seen[-1] == {"job_id": job.job_id, "org_id": ORG, "kind": "create"}
    assert structlog.contextvars.get_contextvars() == {}


def test_unknown_job_is_logged_by_id(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Dropping a message for an unknown job says which id it named."""
    caplog.set_level("ERROR", logger="worker.runner")

    h.runner().run("job_doesnotexist")

    assert messages(caplog) == [
        "job job_doesnotexist not found in the job store; dropping its message"]


def test_locked_number_waits_for_the_lease_to_end(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A locked number's job comes back once the holder's lease ends, plus a margin and jitter."""
    caplog.set_level("INFO", logger="worker.runner")
    job = h.submit()
    assert h.store.acquire_number_lock(NUMBER, "job_someoneelse:abc123", 10)

    outcome = fixed_runner(h, rand=lambda: 0.5).run(job.job_id)

    assert outcome.kind == "retry"
    assert outcome.detail == "number locked"
    # The lease has just under 10 s left: 10 + 0.2 margin + 0.5 jitter.
    assert 10.6 < outcome.delay <= 10.7
    assert messages(caplog) == [
        f"job {job.job_id} waits {outcome.delay:.1f}s: {NUMBER} is locked by job_someoneelse"]


def test_run_that_loses_its_lease_says_so(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """A run whose lock was taken over is skipped as such, with the store's reason logged."""
    caplog.set_level("WARNING", logger="worker.runner")
    job = h.submit()

    def take_over(point: str, running: Job) -> None:
        if point == "after_trunks":
            h.redis.set(h.store.keys.number_lock(NUMBER), f"{running.job_id}:other-run")

    h.saga.hooks = StepHooks(reached=take_over)

    assert h.runner().run(job.job_id) == Outcome("skipped", 0.0, "lease lost")
    assert messages(caplog) == [
        f"job {job.job_id} lost its lock on {NUMBER}; leaving the job to the run that holds it"]


def test_finished_job_is_skipped_without_taking_its_lock(h: Harness) -> None:
    """A job found terminal when its delivery starts is left alone, and its number's lock is
    not taken (reading the job and taking the lock are one atomic step)."""
    job = h.submit()
    update(h, job, lambda j: setattr(j, "state", JobState.SUCCEEDED))
    h.store.acquire_number_lock(NUMBER, "job_other:run", 30)

    outcome = h.runner().run(job.job_id)

    # Not "number locked": the finished job is seen before any lock is tried.
    assert outcome == Outcome("skipped", 0.0, "already succeeded")
    assert sum(h.fake.calls.values()) == 0
    assert h.reload(job).attempts == 0
    assert h.store.number_lock_holder(NUMBER)[0] == "job_other:run"


def test_job_whose_number_redis_cannot_read_takes_the_lock_the_long_way(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record pydantic reads but the claim script could not (Redis' JSON reader is
    stricter in places) still runs once, under its number's lock, and releases it."""
    job = h.submit()
    raw = h.redis.get(h.store.keys.job(job.job_id))
    assert isinstance(raw, bytes)
    monkeypatch.setattr(h.store, "claim", lambda *_, **__: Claim(ClaimStatus.UNPARSED, raw))
    holders: list[str | None] = []
    h.saga.hooks = StepHooks(reached=lambda point, _job: holders.append(
        h.store.number_lock_holder(NUMBER)[0]) if point == "before_trunks" else None)

    outcome = h.runner().run(job.job_id)

    assert outcome.kind == "finished"
    assert h.reload(job).state is JobState.SUCCEEDED
    assert len(holders) == 1 and (holders[0] or "").startswith(job.job_id + ":")
    assert h.redis.exists(h.store.keys.number_lock(NUMBER)) == 0


def test_deliveries_are_numbered_and_the_first_start_is_kept(h: Harness) -> None:
    """Each delivery adds a numbered attempt with its error; the job keeps its first start."""
    job = h.submit()
    h.fake.inject("CreateSIPOutboundTrunk", Fault.unreachable(), Fault.http(503))
    now = [NOW]
    runner = JobRunner(h.store, h.saga, h.settings, clock=lambda: now[0], rand=lambda: 0.5)

    kinds = []
    for start in (NOW, NOW + 10, NOW + 20):
        now[0] = start
        kinds.append(runner.run(job.job_id).kind)

    assert kinds == ["retry", "retry", "finished"]
    stored = h.reload(job)
    assert stored.started_at == datetime.fromtimestamp(NOW, UTC)
    assert [a.number for a in stored.history] == [1, 2, 3]
    assert [a.started_at for a in stored.history] == [
        datetime.fromtimestamp(t, UTC) for t in (NOW, NOW + 10, NOW + 20)]
    assert [a.error.code if a.error else None for a in stored.history] == [
        "livekit_unavailable", "livekit_server_error", None]
    assert all(a.finished_at is not None for a in stored.history)


def test_running_job_is_due_for_the_sweeper_when_its_lease_ends(h: Harness) -> None:
    """While a delivery runs, the job's sweep deadline is the end of the run's lease."""
    job = h.submit()
    deadlines: list[float | None] = []
    hooks = StepHooks(reached=lambda point, j: deadlines.append(deadline_of(h, j)))

    fixed_runner(h, hooks=hooks).run(job.job_id)

    assert deadlines[0] == NOW + h.settings.lease_seconds


def test_retry_time_is_in_utc(h: Harness) -> None:
    """Times the runner computes from its clock are timezone-aware UTC."""
    job = h.submit()
    h.fake.inject("CreateSIPOutboundTrunk", Fault.unreachable())

    fixed_runner(h).run(job.job_id)

    stored = h.reload(job)
    assert stored.next_attempt_at == datetime.fromtimestamp(NOW + 1.0, UTC)
    assert stored.started_at == datetime.fromtimestamp(NOW, UTC)


def test_interrupted_run_names_the_interruption(h: Harness) -> None:
    """The attempt stopped by a soft time limit records which interruption stopped it."""
    job = h.submit()

    def stop(point: str, running: Job) -> None:
        if point == "after_trunks":
            raise SoftLimit

    h.saga.hooks = StepHooks(reached=stop)

    fixed_runner(h, interruptions=(SoftLimit,)).run(job.job_id)

    assert h.reload(job).history[-1].error == JobError(
        code="run_interrupted", message="SoftLimit", retryable=True)


def test_giving_up_on_a_retryable_failure_keeps_its_field(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A retryable failure at the attempt limit fails the job with its code and field, logged."""
    caplog.set_level("WARNING", logger="worker.runner")
    job = update(h, h.submit(), lambda j: setattr(j, "attempts", h.settings.max_attempts - 1))

    def fail(point: str, running: Job) -> None:
        if point == "after_trunks":
            raise ProvisioningFailure("number_busy", "try later", retryable=True, field="number")

    h.saga.hooks = StepHooks(reached=fail)

    assert h.runner().run(job.job_id) == Outcome("finished", detail="failed")

    assert h.reload(job).error == JobError(
        code="number_busy", retryable=True, field="number",
        message="gave up after 3 attempts: try later")
    assert f"job {job.job_id} failed permanently (number_busy); compensating" in messages(caplog)


def test_unreadable_job_is_skipped_and_logged_as_dead_lettered(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A job record the store cannot read is skipped with that reason and logged by id."""
    caplog.set_level("ERROR", logger="worker.runner")
    job_id = "job_" + "f" * 32
    h.redis.set(h.store.keys.job(job_id), b"{not json")

    outcome = h.runner().run(job_id)

    assert outcome == Outcome("skipped", 0.0, "unreadable record")
    [message] = messages(caplog)
    assert message.endswith("; dead-lettered as unreadable_record")
    assert job_id in message


def test_trunk_creates_log_with_the_jobs_context(h: Harness) -> None:
    """The pool thread that creates a trunk carries the job's log context too."""
    job = h.submit()
    seen: dict[str, dict[str, Any]] = {}
    threads: dict[str, str] = {}

    def look(method: str) -> None:
        if method.startswith("Create"):
            seen[method] = structlog.contextvars.get_contextvars()
            threads[method] = threading.current_thread().name

    h.fake.before_apply = look

    h.runner().run(job.job_id)

    bound = {"job_id": job.job_id, "org_id": ORG, "kind": "create"}
    assert seen == {"CreateSIPInboundTrunk": bound, "CreateSIPOutboundTrunk": bound,
                    "CreateSIPDispatchRule": bound}
    # The inbound trunk is created on the run's thread, the outbound one on the saga's.
    assert threads["CreateSIPInboundTrunk"] == threading.current_thread().name
    assert threads["CreateSIPOutboundTrunk"].startswith("trunkline-saga")


@pytest.mark.parametrize(
    "stored",
    [b"{not json", b'{"number": "+15551234567", "state": "queued"}'],
    ids=["unreadable-to-redis-too", "readable-to-redis-only"],
)
def test_unreadable_job_is_dead_lettered_and_leaves_no_lock(h: Harness, stored: bytes) -> None:
    """An unreadable record is dead-lettered by its id; when Redis could read its number and
    took the lock for it, the lock is released again."""
    job = h.submit()
    h.redis.set(h.store.keys.job(job.job_id), stored)

    outcome = h.runner().run(job.job_id)

    assert outcome == Outcome("skipped", 0.0, "unreadable record")
    assert h.store.dead_letter_ids() == [job.job_id]
    assert sum(h.fake.calls.values()) == 0
    assert h.redis.exists(h.store.keys.number_lock(NUMBER)) == 0


def test_lock_whose_holder_is_gone_is_logged_as_unknown(
    h: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock that expired between the failed take and the look-up names no holder: '?'
    (the long way, for a record whose number the claim script could not read)."""
    caplog.set_level("INFO", logger="worker.runner")
    job = h.submit()
    raw = h.redis.get(h.store.keys.job(job.job_id))
    assert isinstance(raw, bytes)
    monkeypatch.setattr(h.store, "claim", lambda *_, **__: Claim(ClaimStatus.UNPARSED, raw))
    assert h.store.acquire_number_lock(NUMBER, "job_someoneelse:abc123", 10)
    monkeypatch.setattr(h.store, "number_lock_holder", lambda number: (None, 0.0))

    outcome = fixed_runner(h, rand=lambda: 0.5).run(job.job_id)

    assert outcome.delay == pytest.approx(0.7)
    assert messages(caplog) == [f"job {job.job_id} waits 0.7s: {NUMBER} is locked by ?"]


def test_happy_path_is_four_redis_round_trips(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claim, the trunks' checkpoint (with the attempt), the rule's checkpoint, and the end
    (record, terminal job, event and lock release in one script): nothing else."""
    runner = h.runner()
    # A first job loads the scripts into Redis (once per server, not per job).
    assert runner.run(h.submit(number="+15557654321").job_id).kind == "finished"
    job = h.submit()
    sent: list[str] = []
    original: Callable[..., Any] = h.redis.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return original(*args, **options)

    monkeypatch.setattr(h.redis, "execute_command", counting)

    assert runner.run(job.job_id).kind == "finished"

    assert len(sent) == 4, sent
    assert set(sent) <= {"EVALSHA", "EVAL"}
    stored = h.reload(job)
    assert stored.state is JobState.SUCCEEDED and stored.attempts == 1
    assert h.store.get_number(NUMBER) is not None
    assert h.redis.exists(h.store.keys.number_lock(NUMBER)) == 0


def test_attempt_is_stored_before_the_first_livekit_call(h: Harness) -> None:
    """The attempt goes with the trunks' checkpoint: by the first create it is counted and
    the lease deadline is in the sweep index."""
    job = h.submit()
    seen: list[tuple[int, str, float | None]] = []

    def look(method: str) -> None:
        stored = h.reload(job)
        seen.append((stored.attempts, stored.step(StepName.INBOUND_TRUNK).status.value,
                     h.redis.zscore(h.store.keys.active, job.job_id)))

    h.fake.before_apply = look
    before = time.time()
    runner = h.runner()

    assert runner.run(job.job_id).kind == "finished"

    first = seen[0]
    assert first[:2] == (1, "started")
    assert first[2] is not None
    assert first[2] >= before + h.settings.lease_seconds - 1


def test_record_taken_at_the_end_fails_the_job_and_undoes_its_objects(h: Harness) -> None:
    """Another job's record written for the number while this run worked: the end writes
    nothing of this job's, which compensates and fails with the number's code."""
    other = h.submit(org_id="org_other")
    job = h.submit()

    def record_other(point: str, running: Job) -> None:
        if point == "before_finish" and running.job_id == job.job_id and running.result:
            theirs = h.saga.record_for(running).model_copy(update={
                "job_id": other.job_id, "org_id": "org_other", "phone_number_id": "pn_other"})
            h.redis.set(h.store.keys.number(NUMBER), theirs.model_dump_json())

    h.saga.hooks = StepHooks(reached=record_other)
    runner = h.runner()

    assert runner.run(job.job_id).kind == "finished"

    stored = h.reload(job)
    assert stored.state is JobState.FAILED
    assert stored.error is not None and stored.error.code == "number_owned_by_other_org"
    record = h.store.get_number(NUMBER)
    assert record is not None and record.job_id == other.job_id
    assert h.fake.inbound == {} and h.fake.outbound == {} and h.fake.rules == {}
    raw = cast(list[tuple[bytes, dict[bytes, bytes]]], h.redis.xrange(RESULTS_STREAM))
    events = [e for e in raw if e[1][b"job_id"] == job.job_id.encode()]
    assert [e[1][b"status"] for e in events] == [b"failed"]
