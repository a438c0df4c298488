"""How a job is answered: its kind's success envelope, its error with the matching status,
or 202 with where to look while it runs; and the job as its organisation may see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from producers.api.errors import NO_STORE, ApiError, envelope
from producers.api.schemas import AcceptedEnvelope
from producers.api.state import ApiState
from producers.api.views import number_view, release_view
from worker.records import Job, JobKind, JobState

SUCCESS_MESSAGE = "Phone number created successfully"
UPDATED_MESSAGE = "Phone number updated successfully"
RELEASED_MESSAGE = "Phone number released successfully"
ALREADY_RELEASED_MESSAGE = "Phone number was already released; nothing to delete"

_CONFLICT_CODES = {"number_conflict", "dispatch_rule_conflict", "number_owned_by_other_org",
                   "number_already_provisioned"}


def location(job_id: str) -> str:
    return f"/api/jobs/{job_id}"


def accepted(job_id: str, state: JobState, *, duplicate: bool = False,
             extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
    data = {"job_id": job_id, "state": state.value, "location": location(job_id),
            "duplicate": duplicate}
    message = ("Accepted: the job runs in the background; GET the location for its result"
               if not duplicate else "Already accepted: this delivery was seen before")
    return JSONResponse(envelope(message, "pending", data), status_code=202,
                        headers={**NO_STORE, "Location": location(job_id),
                                 "Trunkline-Job-Id": job_id, **(extra_headers or {})})


def failure_status(code: str) -> int:
    if code in _CONFLICT_CODES:
        return 409
    if code == "number_not_found":  # an update or release found no record of this org's
        return 404
    if code in ("livekit_rejected", "livekit_not_found", "livekit_conflict"):
        return 422
    if code.startswith("livekit_"):
        return 502
    if code in ("redis_unavailable", "worker_lost", "run_interrupted"):
        return 503
    return 500


async def job_response(state: ApiState, job: Job, *, replayed: bool) -> JSONResponse:
    """A job's answer: its kind's success envelope, its error, or 202 while it runs."""
    headers = {**NO_STORE, "Trunkline-Job-Id": job.job_id}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if job.state is JobState.SUCCEEDED and job.result is not None:
        if job.kind is JobKind.UPDATE:
            record = await run_in_threadpool(state.client.store.get_number, job.number)
            data = number_view(record) if record and record.org_id == job.org_id else None
            body = envelope(UPDATED_MESSAGE, "success", data)
        elif job.kind is JobKind.RELEASE:
            view = release_view(job.number, job.result)
            message = ALREADY_RELEASED_MESSAGE if view["alreadyReleased"] else RELEASED_MESSAGE
            body = envelope(message, "success", view)
        else:
            body = envelope(SUCCESS_MESSAGE, "success", job.result.inbound_trunk_id)
        return JSONResponse(body, status_code=200, headers=headers)
    if job.state is JobState.FAILED:
        error = job.error
        code = error.code if error else "job_failed"
        message = error.message if error else "The setup failed"
        body = envelope(message, "error", None, {
            "code": code, "message": message, "field": error.field if error else None,
            "retryable": error.retryable if error else False, "job_id": job.job_id})
        return JSONResponse(body, status_code=failure_status(code), headers=headers)
    return accepted(job.job_id, job.state, extra_headers=headers)


def number_not_found(number: str) -> ApiError:
    # The same answer for another organisation's number and for one that does not exist.
    return ApiError(404, "number_not_found",
                    f"{number[:40]} is not provisioned for this organisation", field="number")


def _scrub(value: Any) -> Any:
    """Drop every password, ciphertext or fingerprint field, however deep (belt and braces)."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()
                if not any(word in k.lower() for word in ("password", "ciphertext", "fingerprint"))
                or k == "has_auth_password"}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def job_view(job: Job) -> dict[str, Any]:
    """The job as its organisation sees it: never the password, its ciphertext or hashes."""
    view: dict[str, Any] = _scrub(job.public_view())
    change = view.get("change")
    if isinstance(change, dict) and isinstance(change.get("fields"), list):
        # An update names the fields it changes; the password by its request name.
        change["fields"] = ["auth_password" if name == "auth_password_ciphertext" else name
                            for name in change["fields"]]
    key = view.get("idempotency_key")
    if isinstance(key, str) and key.startswith("api:"):
        view["idempotency_key"] = key.removeprefix("api:")
    return view


# The 202 answer as OpenAPI documents it, for every route that can answer it.
ACCEPTED_RESPONSE: dict[int | str, dict[str, Any]] = {
    202: {"model": AcceptedEnvelope, "description": "Accepted; still running",
          "headers": {"Location": {"schema": {"type": "string"},
                                   "description": "/api/jobs/{job_id}"}}},
}
