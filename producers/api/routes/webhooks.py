"""CRM signups delivered as Standard Webhooks, one source per configured CRM."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from producers.api.answers import accepted
from producers.api.auth import rate_limit
from producers.api.errors import ApiError
from producers.api.inputs import (
    check_content_type,
    content_length_guard,
    parse_json,
    read_body,
    validate,
)
from producers.api.schemas import AcceptedEnvelope, error_responses
from producers.api.state import api_state
from producers.api.submission import admit, get_job
from producers.webhooks import SignatureError, WebhookSource, verify
from worker.records import JobState

router = APIRouter(tags=["webhooks"])


async def crm_webhook(
    request: Request,
    source: str,
    webhook_id: Annotated[str | None, Header(alias="webhook-id")] = None,
    webhook_timestamp: Annotated[str | None, Header(alias="webhook-timestamp")] = None,
    webhook_signature: Annotated[str | None, Header(alias="webhook-signature")] = None,
) -> JSONResponse:
    """A CRM signup (Standard Webhooks): verified, deduplicated on webhook-id, then queued.

    Answers 202 once the job is stored and enqueued (200 for a delivery seen before).
    """
    state = api_state(request)
    config: WebhookSource | None = state.api.webhook_sources.get(source)
    if config is None:
        raise ApiError(404, "unknown_webhook_source", f"No webhook source {source[:64]!r}",
                       field="source")
    content_length_guard(request, state.api.max_body)
    body = await read_body(request, state.api.max_body)
    headers = {"webhook-id": webhook_id or "", "webhook-timestamp": webhook_timestamp or "",
               "webhook-signature": webhook_signature or ""}
    try:
        delivery = verify(config.key, headers, body, now=state.clock(),
                          tolerance=state.api.webhook_tolerance)
    except SignatureError as exc:
        raise ApiError(401, exc.code, exc.message, field="webhook-signature") from None
    # Verified first: an unsigned sender must not spend the organisation's rate limit.
    await rate_limit(state, config.org_id)
    check_content_type(request)
    parsed = validate(state, config.extract(parse_json(body)))
    admitted = await admit(state, config.org_id, parsed, f"webhook:{source}:{delivery}",
                           f"webhook:{source}", key_field="webhook-id")
    job = await get_job(state, admitted.job_id)
    current = job.state if job else JobState.QUEUED
    response = accepted(admitted.job_id, current, duplicate=not admitted.created)
    if not admitted.created:
        response.status_code = 200
    return response


router.add_api_route(
    "/webhooks/crm/{source}", crm_webhook, methods=["POST"], operation_id="crmWebhook",
    response_class=JSONResponse,
    responses={200: {"model": AcceptedEnvelope, "description": "Seen before: same job"},
               202: {"model": AcceptedEnvelope, "description": "Stored and enqueued"},
               **error_responses(400, 401, 404, 409, 413, 415, 422, 429, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "description": "The CRM's signup payload, mapped "
                   "to the request fields by the source's configuration"}}}}},
)
