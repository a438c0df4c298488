"""Getting a job stored and waiting for it: admission of a create (bounded retry while
another request for the number is being admitted), the update/release submit, and the wait
for the caller's `Prefer`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from producers.api.admission import Admitted, NumberUnavailable
from producers.api.answers import accepted, job_response
from producers.api.errors import ApiError, validation_error
from producers.api.inputs import Preference
from producers.api.state import ApiState
from producers.client import NumberNotFound
from worker.contract import InvalidRequest, ProvisionRequest
from worker.records import Job, JobState
from worker.store import IdempotencyConflict

ADMIT_WAIT_SECONDS = 15.0

Submit = Callable[[], str]


def _key_reused(key_field: str) -> ApiError:
    return ApiError(422, "idempotency_key_reused", f"This {key_field} was already used for "
                    "another request; use a new key for a different request", field=key_field)


async def admit(state: ApiState, org_id: str, request: ProvisionRequest, key: str | None,
                source: str, *, key_field: str) -> Admitted:
    admission = state.admission
    try:
        fingerprint = admission.fingerprint(request)
        deadline = time.monotonic() + ADMIT_WAIT_SECONDS
        pause = 0.01
        while True:
            admitted = await run_in_threadpool(admission.admit, org_id, request, key,
                                               fingerprint, source)
            if admitted is not None:
                return admitted
            if time.monotonic() >= deadline:
                raise ApiError(409, "setup_in_flight", f"Another request for {request.number} "
                               "is being admitted; retry shortly", field="number",
                               retryable=True, headers={"Retry-After": "1"})
            await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter only
            pause = min(pause * 2, 0.2)
    except IdempotencyConflict:
        raise _key_reused(key_field) from None
    except NumberUnavailable as exc:
        raise ApiError(409, exc.code, exc.message, field="number", retryable=exc.retryable,
                       headers={"Retry-After": "5"} if exc.retryable else None) from None


async def submit_lifecycle(state: ApiState, org_id: str, key: str | None,
                           submit: Submit) -> tuple[str, bool] | None:
    """Run an update/release submit in the thread pool: (job id, replayed), None when the
    organisation holds no such number, or the API's error.

    `replayed`: the Idempotency-Key already named this job before the call.
    """
    try:
        return await run_in_threadpool(_submit_lifecycle, state, org_id, key, submit)
    except NumberNotFound:
        return None


def _submit_lifecycle(state: ApiState, org_id: str, key: str | None,
                      submit: Submit) -> tuple[str, bool]:
    seen = state.client.store.find_idempotent(org_id, key) if key is not None else None
    try:
        job_id = submit()
    except IdempotencyConflict:
        raise _key_reused("Idempotency-Key") from None
    except InvalidRequest as exc:
        raise validation_error(exc.errors) from None
    return job_id, seen is not None and seen[0] == job_id


async def get_job(state: ApiState, job_id: str) -> Job | None:
    return await run_in_threadpool(state.client.store.get, job_id)


async def _wait(state: ApiState, job_id: str, timeout: float) -> Job | None:
    """The job once it is finished, or as it is when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    with state.waiter.watch(job_id) as finished:
        while True:
            job = await get_job(state, job_id)
            if job is None or job.state.terminal:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return job
            pause = min(left, state.waiter.recheck)
            if finished.done():  # its event was read, yet the job reads unfinished: poll
                await asyncio.sleep(pause)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(finished), pause)


async def answer(state: ApiState, job_id: str, *, replayed: bool,
                 preference: Preference) -> JSONResponse:
    """Wait for a job as the caller prefers (`prefers_async`, parsed before the job was
    stored): 202 at once, 202 when the wait runs out, or its finished answer."""
    asynchronous, wait = preference
    if asynchronous:
        job = await get_job(state, job_id)
        current = job.state if job else JobState.QUEUED
        return accepted(job_id, current, extra_headers={
            "Preference-Applied": "respond-async",
            **({"Idempotent-Replayed": "true"} if replayed else {})})
    timeout = state.api.wait_seconds if wait is None else min(wait, state.api.wait_seconds)
    job = await _wait(state, job_id, timeout)
    if job is None:  # deleted under us: say where to look rather than guess
        return accepted(job_id, JobState.QUEUED)
    return await job_response(state, job, replayed=replayed)
