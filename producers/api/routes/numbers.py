"""An organisation's phone numbers: list, get, update in place (PATCH) and release (DELETE).

Update and release go through `ProvisioningClient.update`/`release`, which validate and check
the organisation before they store anything; they wait for their job like a create does.
Another organisation's number is answered exactly like a number that nobody holds (404 for
PATCH, nothing to release for DELETE), and makes no job.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from producers.api.answers import (
    ACCEPTED_RESPONSE,
    ALREADY_RELEASED_MESSAGE,
    number_not_found,
)
from producers.api.auth import Org
from producers.api.errors import NO_STORE, envelope, validation_error
from producers.api.inputs import (
    number_error,
    path_number,
    prefers_async,
    read_json_body,
    stored_idempotency_key,
)
from producers.api.schemas import (
    PhoneNumberEnvelope,
    PhoneNumberListEnvelope,
    ReleasedEnvelope,
    error_responses,
    update_request_schema,
)
from producers.api.state import api_state
from producers.api.submission import answer, submit_lifecycle
from producers.api.views import number_view, release_view
from producers.client import NumberNotFound
from worker.contract import FieldError, InvalidRequest, canonical_number, parse_change

MAX_PAGE = 100
NUMBER_PATH_DOC = ("The phone number in E.164, URL-encoded: `%2B15551234567` for +15551234567 "
                   "(spaces, dashes and parentheses are ignored)")

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="Retry-safe key: the same key and request return the "
    "same job and response for 24 h; another request with it is a 422")]
Prefer = Annotated[str | None, Header(
    description="`respond-async` answers 202 at once with the job id; `wait=N` waits at most "
    "N seconds")]
NumberPath = Annotated[str, Path(description=NUMBER_PATH_DOC, examples=["+15551234567"])]

router = APIRouter(tags=["phone numbers"])


async def list_phone_numbers(
    request: Request,
    org_id: Org,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Numbers per page")] = 50,
    cursor: Annotated[str | None, Query(
        max_length=200, description="`next_cursor` of the previous page")] = None,
    agent_name: Annotated[str | None, Query(
        alias="agentName", max_length=128,
        description="Only numbers whose inbound calls go to this agent")] = None,
) -> JSONResponse:
    """Your organisation's phone numbers, oldest first, a page at a time (no password)."""
    state = api_state(request)
    try:
        page, following = await run_in_threadpool(
            lambda: state.client.list_numbers(org_id, agent=agent_name or None,
                                              cursor=cursor, limit=limit))
    except ValueError:
        raise validation_error([FieldError(field="cursor", code="value_error", message=(
            "must be the next_cursor of a previous page"))]) from None
    body = envelope(f"{len(page)} phone number{'' if len(page) == 1 else 's'}", "success",
                    [number_view(record) for record in page])
    body["next_cursor"] = following
    return JSONResponse(body, headers=NO_STORE)


async def get_phone_number(request: Request, org_id: Org, number: NumberPath) -> JSONResponse:
    """One of your organisation's phone numbers: configuration and LiveKit ids, no password."""
    state = api_state(request)
    canonical = path_number(number)
    try:
        record = await run_in_threadpool(state.client.get_number, org_id, canonical)
    except NumberNotFound:
        raise number_not_found(canonical) from None
    return JSONResponse(envelope("Phone number found", "success", number_view(record)),
                        headers=NO_STORE)


async def update_phone_number(
    request: Request,
    org_id: Org,
    number: NumberPath,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> JSONResponse:
    """Change a number in place: any subset of the request's fields except `number`.

    LiveKit's trunks and dispatch rule are updated in place (their ids stay). Waits for the
    job (bounded) and answers with the number as it now is; 202 with the job id when the wait
    runs out or with `Prefer: respond-async`. If LiveKit refuses the change, the previous
    configuration stays and the error says why.
    """
    state = api_state(request)
    data = await read_json_body(request, state)
    errors = [error] if (error := number_error(number)) is not None else []
    try:
        parse_change(data, strict_numbers=state.settings.strict_numbers,
                     gateway_policy=state.settings.gateway_policy)
    except InvalidRequest as exc:
        errors += exc.errors
    if errors:
        raise validation_error(errors)
    canonical = canonical_number(number, strict=False)
    key = stored_idempotency_key(idempotency_key)
    preference = prefers_async(prefer)

    def submit() -> str:
        return state.client.update(org_id=org_id, number=canonical, changes=data,
                                   idempotency_key=key, source="api")

    submitted = await submit_lifecycle(state, org_id, key, submit)
    if submitted is None:
        raise number_not_found(canonical)
    job_id, replayed = submitted
    return await answer(state, job_id, replayed=replayed, preference=preference)


async def release_phone_number(
    request: Request,
    org_id: Org,
    number: NumberPath,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> JSONResponse:
    """Release a number: delete its dispatch rule, both trunks and its record.

    A number this organisation does not hold (already released, never set up, or another
    organisation's: all answered alike) is released successfully with nothing to do
    (`alreadyReleased: true`) and makes no job. Otherwise waits for the job like a create;
    202 with the job id when the wait runs out or with `Prefer: respond-async`.
    """
    state = api_state(request)
    canonical = path_number(number)
    key = stored_idempotency_key(idempotency_key)
    preference = prefers_async(prefer)

    def submit() -> str:
        return state.client.release(org_id=org_id, number=canonical, idempotency_key=key,
                                    source="api")

    submitted = await submit_lifecycle(state, org_id, key, submit)
    if submitted is None:
        return JSONResponse(envelope(ALREADY_RELEASED_MESSAGE, "success",
                                     release_view(canonical, None)), headers=NO_STORE)
    job_id, replayed = submitted
    return await answer(state, job_id, replayed=replayed, preference=preference)


_NUMBER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PhoneNumberEnvelope, "description": "The number"},
    **error_responses(400, 401, 404, 429, 503),
}
router.add_api_route(
    "/api/phone-numbers", list_phone_numbers, methods=["GET"],
    operation_id="listPhoneNumbers", response_class=JSONResponse,
    responses={200: {"model": PhoneNumberListEnvelope, "description": "A page"},
               **error_responses(400, 401, 429, 503)})
router.add_api_route(
    "/api/phone-numbers/{number}", get_phone_number, methods=["GET"],
    operation_id="getPhoneNumber", response_class=JSONResponse, responses=_NUMBER_RESPONSES)
router.add_api_route(
    "/api/phone-numbers/{number}", update_phone_number, methods=["PATCH"],
    operation_id="updatePhoneNumber", response_class=JSONResponse,
    responses={**_NUMBER_RESPONSES, **ACCEPTED_RESPONSE,
               **error_responses(400, 401, 404, 413, 415, 422, 429, 502, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": update_request_schema(),
        "example": {"authPassword": "new_sip_password"}}}}})
router.add_api_route(
    "/api/phone-numbers/{number}", release_phone_number, methods=["DELETE"],
    operation_id="releasePhoneNumber", response_class=JSONResponse,
    responses={200: {"model": ReleasedEnvelope, "description": "Released (or already gone)"},
               **ACCEPTED_RESPONSE, **error_responses(400, 401, 404, 422, 429, 502, 503)})
