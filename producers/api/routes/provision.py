"""The seed's createSipTrunkDispatch, under both of its paths."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from producers.api.answers import ACCEPTED_RESPONSE
from producers.api.auth import Org
from producers.api.inputs import (
    prefers_async,
    read_json_body,
    stored_idempotency_key,
    validate,
)
from producers.api.schemas import CreatedEnvelope, CreateSipTrunkDispatchRequest, error_responses
from producers.api.state import api_state
from producers.api.submission import admit, answer

router = APIRouter(tags=["provisioning"])


async def create_sip_trunk_dispatch(
    request: Request,
    org_id: Org,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", description="Retry-safe key: the same key and body return "
        "the same job and response for 24 h; another body with it is a 422")] = None,
    prefer: Annotated[str | None, Header(
        description="`respond-async` answers 202 at once with the job id; `wait=N` waits at "
        "most N seconds")] = None,
) -> JSONResponse:
    """Create the inbound trunk, outbound trunk, dispatch rule and phone-number record.

    Waits for the job (bounded) and answers with the inbound trunk id; 202 with the job id
    when the wait runs out or with `Prefer: respond-async`.
    """
    state = api_state(request)
    parsed = validate(state, await read_json_body(request, state))
    key = stored_idempotency_key(idempotency_key)
    preference = prefers_async(prefer)
    admitted = await admit(state, org_id, parsed, key, "api", key_field="Idempotency-Key")
    return await answer(state, admitted.job_id, replayed=not admitted.created,
                        preference=preference)


_CREATE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {
            "schema": CreateSipTrunkDispatchRequest.model_json_schema(),
            "example": {"name": "Main Office SIP Trunk", "number": "+15551234567",
                        "outboundPstn": "sip.gateway.com", "authUserName": "sip_user",
                        "authPassword": "sip_password"},
        }},
    },
}
_CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CreatedEnvelope, "description": "Created; data is the inbound trunk id"},
    **ACCEPTED_RESPONSE,
    **error_responses(400, 401, 409, 413, 415, 422, 429, 502, 503),
}
for _path, _operation_id in (("/api/sio/createSipTrunkDispatch", "createSipTrunkDispatch"),
                             ("/api/sip/createSipTrunkDispatch", "createSipTrunkDispatchSip")):
    router.add_api_route(_path, create_sip_trunk_dispatch, methods=["POST"],
                         operation_id=_operation_id, response_class=JSONResponse,
                         responses=_CREATE_RESPONSES, openapi_extra=_CREATE_DOC)
