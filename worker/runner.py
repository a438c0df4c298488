"""One delivery of a job: lock, count the attempt, run or compensate, finish or reschedule.

Plain code, no Celery: the task adapter turns the returned Outcome into a Celery retry.
Attempts are counted in the job record when a delivery starts, before any work, so a job
that kills its worker every time still reaches the attempt limit and is dead-lettered.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from worker import tracing
from worker.config import Settings
from worker.livekit.deadline import NoTimeLeft, calls_end_by
from worker.observability import JOBS, RETRIES, bound_job
from worker.records import (
    Attempt,
    Job,
    JobError,
    JobKind,
    JobResult,
    JobState,
    Phase,
    PhoneNumberRecord,
    StepName,
    StepStatus,
    utcnow,
)
from worker.retry import Classified, RetryPolicy, RunInterrupted, backoff, classify, decide
from worker.saga import Checkpoint, ProvisioningSaga, StepHooks, number_taken_failure
from worker.store import (
    Claim,
    ClaimStatus,
    JobStore,
    LeaseLost,
    NumberTaken,
    UnreadableRecord,
    raw_field,
)

log = logging.getLogger(__name__)

# Compensation must finish eventually; give it more room than the forward path.
COMPENSATION_ATTEMPT_FACTOR = 3
# A request LiveKit has received is acted on within this (its store write), so a takeover's
# look, which comes after the lease, sees it.
LANDING_MARGIN_SECONDS = 1.0


class Saga(Protocol):
    """One kind of job: a forward path and what undoes it."""

    def forward(self, job: Job, token: str, checkpoint: Checkpoint) -> JobResult: ...
    def backward(self, job: Job, token: str, checkpoint: Checkpoint) -> None: ...
    def leftovers(self, job: Job) -> list[str]: ...


@dataclass(frozen=True)
class Outcome:
    kind: str  # "finished" | "retry" | "skipped"
    delay: float = 0.0
    detail: str = ""

    @classmethod
    def retry(cls, delay: float, detail: str) -> Outcome:
        return cls("retry", delay, detail)

    @classmethod
    def skipped(cls, detail: str) -> Outcome:
        return cls("skipped", 0.0, detail)


def event_payload(job: Job) -> dict[str, Any]:
    """The `payload` of a job's terminal event (never a secret)."""
    payload: dict[str, Any] = {
        "type": job.kind.event_type,
        "number": job.number,
        "attempts": job.attempts,
        "run": job.run,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if job.result is not None:
        payload.update(job.result.model_dump())
    if job.error is not None:
        payload.update(error_code=job.error.code, error_message=job.error.message,
                       retryable=job.error.retryable)
        if job.error.field:
            payload["error_field"] = job.error.field
    if job.leftovers:
        payload["leftovers"] = job.leftovers
    return payload


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        saga: ProvisioningSaga,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        interruptions: tuple[type[BaseException], ...] = (),
        hooks: StepHooks | None = None,
        lifecycle: Mapping[JobKind, Saga] | None = None,
    ) -> None:
        self.store = store
        self.saga = saga
        self.sagas: dict[JobKind, Saga] = {JobKind.CREATE: saga, **(lifecycle or {})}
        self.settings = settings
        self.clock = clock
        self.rand = rand
        self.interruptions = interruptions
        self.hooks = hooks or saga.hooks
        self._runs: dict[str, _Run] = {}  # by lock token: one entry per delivery running
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            base=settings.backoff_base,
            cap=settings.effective_backoff_cap,
            settle=settings.livekit_timeout,
        )

    def run(self, job_id: str) -> Outcome:
        started_ns = time.time_ns()  # the run's span covers the claim too
        token = f"{job_id}:{uuid.uuid4().hex}"
        # Read before the claim: the lock Redis grants expires no earlier than this.
        lease_ends = time.monotonic() + self.settings.lease_seconds
        claim = self.store.claim(job_id, token, self.settings.lease_seconds,
                                 deadline=self.clock() + self.settings.lease_seconds)
        job = self._claimed_job(job_id, claim, token)
        if isinstance(job, Outcome):
            return job
        with (bound_job(job_id=job_id, org_id=job.org_id, kind=job.kind.value),
              tracing.run_span(job, started_ns) as span):
            outcome = self._deliver(job, claim, token, lease_ends)
            tracing.note_outcome(span, job, outcome.kind, outcome.detail)
            return outcome

    def _deliver(self, job: Job, claim: Claim, token: str, lease_ends: float) -> Outcome:
        if claim.status is ClaimStatus.LOCKED:
            return self._wait_for_lock(job, claim.holder, claim.remaining)
        if claim.status is ClaimStatus.UNPARSED:
            # Redis' JSON reader refused what pydantic reads: take the lock the long way.
            if not self.store.acquire_number_lock(job.number, token,
                                                  self.settings.lease_seconds):
                return self._wait_for_lock(job, *self.store.number_lock_holder(job.number))
            return self._run_claimed(job, token, lambda: self.store.get_number(job.number),
                                     lease_ends)
        return self._run_claimed(job, token, claim.number_record, lease_ends)

    def _claimed_job(self, job_id: str, claim: Claim, token: str) -> Job | Outcome:
        """The claimed job, or the Outcome of a delivery that has nothing to run."""
        if claim.status is ClaimStatus.MISSING:
            log.error("job %s not found in the job store; dropping its message", job_id)
            return Outcome.skipped("unknown job")
        try:
            job = claim.job(job_id)
        except UnreadableRecord as unreadable:
            if claim.status is ClaimStatus.CLAIMED:
                self.store.release_number_lock(raw_field(claim.job_raw, "number") or "", token)
            return self._quarantine(job_id, unreadable)
        if claim.status is ClaimStatus.FINISHED or job.state.terminal:
            if claim.status is ClaimStatus.CLAIMED:
                self.store.release_number_lock(job.number, token)
            return Outcome.skipped(f"already {job.state.value}")
        return job

    def _wait_for_lock(self, job: Job, holder: str | None, remaining: float) -> Outcome:
        # Another run holds the number (this job's duplicate delivery, or another job for
        # the same number): come back when its lease ends; this costs no attempt.
        delay = min(self.policy.cap, remaining + 0.2 + self.rand())
        log.info("job %s waits %.1fs: %s is locked by %s", job.job_id, delay, job.number,
                 (holder or "?").split(":")[0])
        return Outcome.retry(delay, "number locked")

    def _run_claimed(self, job: Job, token: str, current: CurrentRecord,
                     lease_ends: float) -> Outcome:
        run = _Run(token, current)
        self._runs[token] = run
        try:
            # Every LiveKit call of this run is over before another run can take the job over
            # and look for what it created (worker.livekit.deadline).
            with calls_end_by(lease_ends - LANDING_MARGIN_SECONDS):
                return self._run_locked(job, run)
        except LeaseLost as lost:
            log.warning("%s; leaving the job to the run that holds it", lost)
            return Outcome.skipped("lease lost")
        except NoTimeLeft as late:
            log.warning("job %s: %s; it is taken up again once its lease ends", job.job_id, late)
            return Outcome.skipped("lease ending")
        finally:
            del self._runs[token]
            if not run.released:
                self.store.release_number_lock(job.number, token)

    def _quarantine(self, job_id: str, unreadable: UnreadableRecord) -> Outcome:
        # Retrying cannot repair a record: dead-letter it with its own reason, once.
        self.store.quarantine(job_id, unreadable.reason)
        log.error("%s; dead-lettered as unreadable_record", unreadable)
        return Outcome.skipped("unreadable record")

    def _run_locked(self, job: Job, run: _Run) -> Outcome:
        token = run.token
        now = self.clock()
        if job.phase is Phase.PROVISION:
            job.attempts += 1
        else:
            job.compensation_attempts += 1
        job.state = JobState.RUNNING
        job.started_at = job.started_at or _at(now)
        job.next_attempt_at = None
        job.history.append(Attempt(number=len(job.history) + 1, started_at=_at(now)))
        if not self._first_write_is_a_checkpoint(job):
            self._save(job, token, deadline=now + self.settings.lease_seconds)
        # Otherwise the saga's first act is a checkpoint, before any external call: the attempt
        # goes with it, one round trip fewer, and a delivery that dies before it has done
        # nothing at all to count. (The claim already moved the sweep deadline to the lease's
        # end, so such a delivery is re-sent as soon as its lock can be taken again.)

        if job.phase is Phase.PROVISION:
            if job.attempts > self.policy.max_attempts:
                job.error = self._exhausted_error(job)
                job.phase = Phase.COMPENSATE
                self._save(job, token)
            else:
                outcome = self._provision(job, run)
                if outcome is not None:
                    return outcome
        return self._compensate(job, token)

    def _first_write_is_a_checkpoint(self, job: Job) -> bool:
        return (job.kind is JobKind.CREATE and job.phase is Phase.PROVISION
                and job.attempts <= self.policy.max_attempts
                and all(step.status is StepStatus.PENDING for step in job.steps.values()))

    def _provision(self, job: Job, run: _Run) -> Outcome | None:
        """Run the saga forward; None means: go on to compensation."""
        token = run.token
        record: PhoneNumberRecord | None = None
        try:
            if job.kind is JobKind.CREATE:
                # The record is written atomically with the job's end (see _finish).
                result = self.saga.provision(job, token, self._checkpoint(token),
                                             current=run.current, defer_record=True)
                record = self.saga.record_for(job)
            else:
                result = self.sagas[job.kind].forward(job, token, self._checkpoint(token))
        except (LeaseLost, NoTimeLeft):
            raise
        except self.interruptions as exc:
            return self._after_error(job, token, RunInterrupted(type(exc).__name__))
        except Exception as exc:
            return self._after_error(job, token, exc)
        job.result = result
        job.error = None
        try:
            return self._finish(job, token, JobState.SUCCEEDED, record=record)
        except NumberTaken as taken:
            # Another job's record appeared for the number: nothing of the end was written.
            self._unfinish(job)
            return self._after_error(job, token, number_taken_failure(job, taken.record))

    def _unfinish(self, job: Job) -> None:
        job.state, job.finished_at, job.result, job.dead_lettered = (
            JobState.RUNNING, None, None, False)
        job.step(StepName.PHONE_NUMBER).status = StepStatus.PENDING
        if job.history:
            job.history[-1].finished_at = None

    def _after_error(self, job: Job, token: str, exc: BaseException) -> Outcome | None:
        info = classify(exc)
        self._close_attempt(job, info)
        decision = decide(exc, job.attempts, self.policy, self.rand)
        if decision.retry:
            log.info("job %s attempt %d failed (%s); retry in %.1fs", job.job_id, job.attempts,
                     info.code, decision.delay)
            return self._reschedule(job, token, decision.delay, info)
        if info.retryable:
            info = Classified(info.code, f"gave up after {job.attempts} attempts: {info.message}",
                              True, info.field)
        log.warning("job %s failed permanently (%s); compensating", job.job_id, info.code)
        job.error = _job_error(info)
        job.phase = Phase.COMPENSATE
        self._save(job, token)
        return None

    def _compensate(self, job: Job, token: str) -> Outcome:
        limit = self.policy.max_attempts * COMPENSATION_ATTEMPT_FACTOR
        if job.compensation_attempts > limit:
            # Deliveries keep dying inside compensation: stop, and say what may be left.
            job.leftovers = self.sagas[job.kind].leftovers(job)
            log.error("job %s compensation died %d times; leftovers %s", job.job_id,
                      limit, job.leftovers)
            return self._finish(job, token, JobState.FAILED)
        try:
            self.sagas[job.kind].backward(job, token, self._checkpoint(token))
        except (LeaseLost, NoTimeLeft):
            raise
        except Exception as exc:
            # An interruption (soft time limit) is retried here as on the forward path.
            info = classify(RunInterrupted(type(exc).__name__)
                            if isinstance(exc, self.interruptions) else exc)
            if info.retryable and job.compensation_attempts < limit:
                delay = backoff(job.compensation_attempts + 1, self.policy, self.rand)
                log.warning("job %s compensation failed (%s); retry in %.1fs", job.job_id,
                            info.code, delay)
                self._close_attempt(job, info)
                return self._reschedule(job, token, delay, None)
            # Out of patience: record exactly what may be left so reconcile can remove it.
            job.leftovers = self.sagas[job.kind].leftovers(job)
            log.error("job %s compensation gave up (%s); leftovers %s", job.job_id, info.code,
                      job.leftovers)
        return self._finish(job, token, JobState.FAILED)

    def _reschedule(self, job: Job, token: str, delay: float, info: Classified | None) -> Outcome:
        now = self.clock()
        job.state = JobState.QUEUED
        if info is not None:
            job.error = _job_error(info)
        job.next_attempt_at = _at(now + delay)
        RETRIES.labels(job.kind.value, job.error.code if job.error else "retry").inc()
        # If the retry message is lost, the sweeper re-sends it one visibility timeout later.
        self._save(job, token, deadline=now + delay + self.settings.visibility_timeout)
        return Outcome.retry(delay, job.error.code if job.error else "retry")

    def _finish(self, job: Job, token: str, state: JobState,
                record: PhoneNumberRecord | None = None) -> Outcome:
        job.state = state
        job.finished_at = utcnow()
        job.updated_at = job.finished_at
        job.dead_lettered = state is JobState.FAILED
        if job.history and job.history[-1].finished_at is None:
            job.history[-1].finished_at = job.finished_at
        self.hooks.reached("before_finish", job)
        run = self._runs.get(token)
        with tracing.event_span(job) as span:
            published, event_id = self.store.finish(
                job, token, payload=event_payload(job), dead_letter=job.dead_lettered,
                record=record, release=run is not None,
            )
            tracing.note_event(span, event_id, published)
        if run is not None:
            run.released = True
        log.info("job %s %s (event %s%s)", job.job_id, state.value, event_id,
                 "" if published else ", already published")
        if published:
            JOBS.labels(job.kind.value, state.value, job.error.code if job.error else "").inc()
        return Outcome("finished", detail=state.value)

    def _exhausted_error(self, job: Job) -> JobError:
        last = job.error
        if last is not None:
            return JobError(code=last.code, retryable=True, field=last.field,
                            message=f"gave up after {self.policy.max_attempts} attempts: "
                                    f"{last.message}")
        return JobError(
            code="worker_lost",
            retryable=True,
            message=f"the worker running this job died {self.policy.max_attempts} times "
                    "(killed or out of memory); it was stopped to protect the queue",
        )

    def _close_attempt(self, job: Job, info: Classified) -> None:
        if job.history:
            job.history[-1].finished_at = utcnow()
            job.history[-1].error = _job_error(info)

    def _checkpoint(self, token: str) -> Callable[[Job], None]:
        def checkpoint(job: Job) -> None:
            self._save(job, token)

        return checkpoint

    def _save(self, job: Job, token: str, *, deadline: float | None = None) -> None:
        job.updated_at = utcnow()
        self.store.save(job, token, deadline=deadline)


# The number's record as read when the lock was taken (None: there is none).
CurrentRecord = Callable[[], PhoneNumberRecord | None]


@dataclass
class _Run:
    """One delivery holding its number's lock."""

    token: str
    current: CurrentRecord
    released: bool = False  # the lock went with the job's terminal write


def _job_error(info: Classified) -> JobError:
    return JobError(code=info.code, message=info.message, retryable=info.retryable,
                    field=info.field)


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
