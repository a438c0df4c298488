"""One job of the caller's organisation, by id."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from producers.api.answers import job_view
from producers.api.auth import Org
from producers.api.errors import NO_STORE, ApiError, envelope
from producers.api.schemas import JobEnvelope, error_responses
from producers.api.state import api_state
from producers.api.submission import get_job as load_job
from worker.records import valid_job_id

router = APIRouter(tags=["jobs"])


async def get_job(request: Request, org_id: Org, job_id: str) -> JSONResponse:
    """One job of your organisation: state, steps, attempts, result or error (no password)."""
    state = api_state(request)
    job = await load_job(state, job_id) if valid_job_id(job_id) else None
    if job is None or job.org_id != org_id:
        raise ApiError(404, "job_not_found", f"No job {job_id[:80]} in your organisation",
                       field="job_id")
    return JSONResponse(envelope("Job found", "success", job_view(job)), headers=NO_STORE)


router.add_api_route("/api/jobs/{job_id}", get_job, methods=["GET"], operation_id="getJob",
                     response_class=JSONResponse,
                     responses={200: {"model": JobEnvelope, "description": "The job"},
                                **error_responses(401, 404, 429, 503)})
