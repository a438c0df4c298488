"""The HTTP producer: the seed's createSipTrunkDispatch, the phone-number lifecycle (list,
get, update, release), the jobs API and CRM webhooks.

`create_api(settings)` builds the ASGI app; nothing connects at import time. Routes are async
and hand every blocking call (Redis, the Celery send) to the thread pool; waiting for a job
polls Redis with asyncio sleeps, so a waiting request holds no thread.

Order of checks on a create: failed-authentication limit (429), credentials (401), rate
limit (429), body size by Content-Length (413), content type (415), body size while reading
(413), JSON (400), fields (400, all at once), headers (400), Idempotency-Key (422 on another
body), number taken or in flight (409), then the job is stored and enqueued. Anything rejected
before the last step creates no job.

Update (PATCH) and release (DELETE) of `/api/phone-numbers/{number}` go through
`ProvisioningClient.update`/`release`, which validate and check the organisation before they
store anything; they wait for their job like a create does. Another organisation's number is
answered exactly like a number that nobody holds (404 for PATCH, nothing to release for
DELETE), and makes no job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from producers.api.admission import Admission, Admitted, NumberUnavailable
from producers.api.errors import (
    NO_STORE,
    REDIS_DOWN,
    ApiError,
    envelope,
    install_error_handlers,
    validation_error,
)
from producers.api.metrics import MetricsMiddleware, metrics_endpoint
from producers.api.schemas import (
    AcceptedEnvelope,
    CreatedEnvelope,
    CreateSipTrunkDispatchRequest,
    HealthEnvelope,
    JobEnvelope,
    PhoneNumberEnvelope,
    PhoneNumberListEnvelope,
    ReleasedEnvelope,
    error_responses,
    update_request_schema,
)
from producers.api.settings import ApiSettings
from producers.api.views import number_view, release_view
from producers.api.waiter import ResultWaiter
from producers.client import NumberNotFound, ProvisioningClient
from producers.keys import ApiKeys
from producers.ratelimit import RateLimiter
from producers.webhooks import SignatureError, WebhookSource, verify
from worker.app import create_app
from worker.config import Settings
from worker.contract import (
    FieldError,
    InvalidRequest,
    ProvisionRequest,
    canonical_number,
    parse_change,
    parse_request,
)
from worker.livekit import LiveKitSIP
from worker.records import Job, JobKind, JobState
from worker.runtime import redis_client
from worker.store import IdempotencyConflict, JobStore
from worker.vault import Vault

API_VERSION = "1.0.0"
SUCCESS_MESSAGE = "Phone number created successfully"
UPDATED_MESSAGE = "Phone number updated successfully"
RELEASED_MESSAGE = "Phone number released successfully"
ALREADY_RELEASED_MESSAGE = "Phone number was already released; nothing to delete"
ADMIT_WAIT_SECONDS = 15.0
MAX_PAGE = 100
_JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
NUMBER_PATH_DOC = ("The phone number in E.164, URL-encoded: `%2B15551234567` for +15551234567 "
                   "(spaces, dashes and parentheses are ignored)")
_ACCEPTED_TYPES = {
    "application/json",
    # The seed's own curl example sends its JSON with `-d` and no Content-Type, which curl
    # labels application/x-www-form-urlencoded; the body is JSON all the same.
    "application/x-www-form-urlencoded",
    "text/plain",
}

api_key_header = APIKeyHeader(name="X-API-KEY", scheme_name="ApiKey", auto_error=False,
                              description="Your API key (sk_...)")
api_secret_header = APIKeyHeader(name="X-API-SECRET", scheme_name="ApiSecret", auto_error=False,
                                 description="Your API secret (s3cr3t_...), shown once at "
                                 "creation")

Probe = Callable[[], None]


@dataclass
class ApiState:
    settings: Settings
    api: ApiSettings
    client: ProvisioningClient
    keys: ApiKeys
    limiter: RateLimiter
    auth_failures: RateLimiter
    admission: Admission
    probes: Mapping[str, Probe]
    waiter: ResultWaiter
    clock: Callable[[], float] = time.time
    closers: list[Callable[[], None]] = field(default_factory=list)


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.trunkline
    return state


# --------------------------------------------------------------------------- helpers


def _content_length_guard(request: Request, limit: int) -> None:
    raw = request.headers.get("content-length")
    if raw is not None and raw.strip().isdigit() and int(raw) > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The body is larger than {limit} bytes")


def _check_content_type(request: Request) -> None:
    raw = request.headers.get("content-type")
    if raw is None or not raw.strip():
        return
    media, _, parameters = raw.partition(";")
    media = media.strip().lower()
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        # The body is read as UTF-8 (RFC 8259); another declared charset would be misread.
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8", "us-ascii"):
            raise ApiError(415, "unsupported_media_type", "Send the body as UTF-8 JSON "
                           f"(got charset {charset[:40]!r})", field="Content-Type")
    if media in _ACCEPTED_TYPES or (media.startswith("application/") and media.endswith("+json")):
        return
    raise ApiError(415, "unsupported_media_type",
                   f"Send the body as application/json (got {media[:80]!r})",
                   field="Content-Type")


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "malformed_json", "The body is empty; send a JSON object",
                       field="body")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(
            exc, json.JSONDecodeError) else ""
        raise ApiError(400, "malformed_json", f"The body is not valid UTF-8 JSON{where}",
                       field="body") from None


def _validate(state: ApiState, data: Any) -> ProvisionRequest:
    try:
        return parse_request(data, strict_numbers=state.settings.strict_numbers,
                             gateway_policy=state.settings.gateway_policy)
    except InvalidRequest as exc:
        raise validation_error(exc.errors) from None


# RFC 7240 / RFC 9110 grammar: a list of `token [= word] *(; token [= word])`.
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_WORD = rf'(?:{_TCHARS}|"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*")'
# Each run of blanks can be taken by one part only, so a hostile header cannot backtrack.
_PREFERENCE = (rf"[ \t]*({_TCHARS})(?:[ \t]*=[ \t]*({_WORD}))?[ \t]*"
               rf"(?:;[ \t]*(?:{_TCHARS}(?:[ \t]*=[ \t]*{_WORD})?[ \t]*)?)*")
_PREFER_HEADER = re.compile(rf"{_PREFERENCE}(?:,{_PREFERENCE})*")
_ONE_PREFERENCE = re.compile(_PREFERENCE)
_WAIT_SECONDS = re.compile(r"[0-9]{1,9}")
MAX_PREFER_WAIT = 600


def _prefers_async(prefer: str | None) -> tuple[bool, float | None]:
    """RFC 7240: `respond-async`, and `wait=N` to shorten the wait.

    Parsed strictly and before anything is stored, so a malformed header is a 400 that
    creates no job; unknown preferences are ignored as the RFC asks.
    """
    if prefer is None:
        return False, None
    if not _PREFER_HEADER.fullmatch(prefer):
        raise ApiError(400, "invalid_header", "Prefer must be a list of RFC 7240 preferences, "
                       "e.g. `respond-async` or `wait=10`", field="Prefer")
    asynchronous, wait = False, None
    for match in _ONE_PREFERENCE.finditer(prefer):
        name, value = match.group(1).lower(), match.group(2)
        if name == "respond-async":
            asynchronous = True
        elif name == "wait" and wait is None:
            raw = (value or "").strip('"')
            if not _WAIT_SECONDS.fullmatch(raw):
                raise ApiError(400, "invalid_header", "Prefer: wait must be a whole number of "
                               "seconds, e.g. `wait=10`", field="Prefer")
            wait = float(min(int(raw), MAX_PREFER_WAIT))
    return asynchronous, wait


def _location(job_id: str) -> str:
    return f"/api/jobs/{job_id}"


def _accepted(job_id: str, state: JobState, *, duplicate: bool = False,
              extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
    data = {"job_id": job_id, "state": state.value, "location": _location(job_id),
            "duplicate": duplicate}
    message = ("Accepted: the job runs in the background; GET the location for its result"
               if not duplicate else "Already accepted: this delivery was seen before")
    return JSONResponse(envelope(message, "pending", data), status_code=202,
                        headers={**NO_STORE, "Location": _location(job_id),
                                 "Trunkline-Job-Id": job_id, **(extra_headers or {})})


_CONFLICT_CODES = {"number_conflict", "dispatch_rule_conflict", "number_owned_by_other_org",
                   "number_already_provisioned"}


def _failure_status(code: str) -> int:
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


async def _job_response(state: ApiState, job: Job, *, replayed: bool) -> JSONResponse:
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
        return JSONResponse(body, status_code=_failure_status(code), headers=headers)
    return _accepted(job.job_id, job.state, extra_headers=headers)


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


# --------------------------------------------------------------------------- dependencies


async def authenticate(
    request: Request,
    api_key: Annotated[str | None, Security(api_key_header)],
    api_secret: Annotated[str | None, Security(api_secret_header)],
) -> str:
    """The caller's organisation, from X-API-KEY and X-API-SECRET; counts its rate limit."""
    state = _state(request)
    if not api_key or not api_secret:
        raise ApiError(401, "missing_credentials", "Send your API key in X-API-KEY and its "
                       "secret in X-API-SECRET", field="X-API-KEY" if not api_key else
                       "X-API-SECRET")
    key_id = api_key.strip()
    # Each failed check costs a password-hash verification: past the limit of failures from
    # one address or for one key id, refuse before doing that work.
    subjects = _auth_subjects(request, key_id)
    # One thread hop for the whole check: each hop costs a context switch or two.
    return await run_in_threadpool(_check_credentials, state, subjects, key_id,
                                   api_secret.strip())


def _check_credentials(state: ApiState, subjects: tuple[str, str], key_id: str,
                       secret: str) -> str:
    # Each failed check costs a password-hash verification: past the limit of failures from
    # one address or for one key id, refuse before doing that work.
    verdict = state.auth_failures.peek(*subjects)
    if not verdict.allowed:
        raise ApiError(429, "too_many_failed_authentications", "Too many failed "
                       f"authentications; retry in {verdict.reset_after} s",
                       retryable=True, headers={"Retry-After": str(verdict.reset_after)})
    org_id = state.keys.authenticate(key_id, secret)
    if org_id is None:
        state.auth_failures.hit(*subjects)
        raise ApiError(401, "invalid_credentials", "The API key or secret is wrong, or the key "
                       "was revoked")
    _check_rate(state, org_id)
    return org_id


def _auth_subjects(request: Request, key_id: str) -> tuple[str, str]:
    """The failed-authentication counters a request draws on: its client address and the key
    id it claims (hashed: a key id is client-chosen text of any length)."""
    address = request.client.host if request.client else "unknown"
    claimed = hashlib.sha256(key_id.encode("utf-8", "replace")).hexdigest()[:32]
    return f"addr:{address}", f"key:{claimed}"


async def _rate_limit(state: ApiState, org_id: str) -> None:
    await run_in_threadpool(_check_rate, state, org_id)


def _check_rate(state: ApiState, org_id: str) -> None:
    verdict = state.limiter.hit(f"org:{org_id}")
    if not verdict.allowed:
        raise ApiError(429, "rate_limited", f"More than {verdict.limit} requests in a minute "
                       f"for this organisation; retry in {verdict.reset_after} s",
                       retryable=True, headers=verdict.headers())


Org = Annotated[str, Depends(authenticate)]


# --------------------------------------------------------------------------- admission


async def _admit(state: ApiState, org_id: str, request: ProvisionRequest, key: str | None,
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
        raise ApiError(422, "idempotency_key_reused", f"This {key_field} was already used for "
                       "another request; use a new key for a different request",
                       field=key_field) from None
    except NumberUnavailable as exc:
        raise ApiError(409, exc.code, exc.message, field="number", retryable=exc.retryable,
                       headers={"Retry-After": "5"} if exc.retryable else None) from None


async def _answer(state: ApiState, job_id: str, *, replayed: bool,
                  preference: tuple[bool, float | None]) -> JSONResponse:
    """Wait for a job as the caller prefers (`_prefers_async`, parsed before the job was
    stored): 202 at once, 202 when the wait runs out, or its finished answer."""
    asynchronous, wait = preference
    if asynchronous:
        job = await _get_job(state, job_id)
        current = job.state if job else JobState.QUEUED
        return _accepted(job_id, current, extra_headers={
            "Preference-Applied": "respond-async",
            **({"Idempotent-Replayed": "true"} if replayed else {})})
    timeout = state.api.wait_seconds if wait is None else min(wait, state.api.wait_seconds)
    job = await _wait(state, job_id, timeout)
    if job is None:  # deleted under us: say where to look rather than guess
        return _accepted(job_id, JobState.QUEUED)
    return await _job_response(state, job, replayed=replayed)


def _api_key(idempotency_key: str | None) -> str | None:
    """The Idempotency-Key as stored (`api:` + key), after checking its form."""
    if idempotency_key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible "
                       "ASCII characters", field="Idempotency-Key")
    return f"api:{idempotency_key}"


def _number_error(raw: str) -> FieldError | None:
    try:
        canonical_number(raw, strict=False)
    except ValueError as exc:
        return FieldError(field="number", message=str(exc), code="value_error")
    return None


def _path_number(raw: str) -> str:
    """The path's number in E.164, or a 400 naming `number`."""
    error = _number_error(raw)
    if error is not None:
        raise validation_error([error])
    return canonical_number(raw, strict=False)


def _not_found(number: str) -> ApiError:
    # The same answer for another organisation's number and for one that does not exist.
    return ApiError(404, "number_not_found",
                    f"{number[:40]} is not provisioned for this organisation", field="number")


def _key_reused(field: str = "Idempotency-Key") -> ApiError:
    return ApiError(422, "idempotency_key_reused", f"This {field} was already used for "
                    "another request; use a new key for a different request", field=field)


Submit = Callable[[], str]


def _submit_lifecycle(state: ApiState, org_id: str, key: str | None,
                      submit: Submit) -> tuple[str, bool]:
    """Run an update/release submit; returns (job id, replayed) or raises the API's error.

    `replayed`: the Idempotency-Key already named this job before the call.
    """
    seen = state.client.store.find_idempotent(org_id, key) if key is not None else None
    try:
        job_id = submit()
    except IdempotencyConflict:
        raise _key_reused() from None
    except InvalidRequest as exc:
        raise validation_error(exc.errors) from None
    return job_id, seen is not None and seen[0] == job_id


async def _get_job(state: ApiState, job_id: str) -> Job | None:
    return await run_in_threadpool(state.client.store.get, job_id)


async def _wait(state: ApiState, job_id: str, timeout: float) -> Job | None:
    """The job once it is finished, or as it is when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    with state.waiter.watch(job_id) as finished:
        while True:
            job = await _get_job(state, job_id)
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


# --------------------------------------------------------------------------- routes


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
    state = _state(request)
    _content_length_guard(request, state.api.max_body)
    _check_content_type(request)
    body = await _read_body(request, state.api.max_body)
    parsed = _validate(state, _parse_json(body))
    key = _api_key(idempotency_key)
    preference = _prefers_async(prefer)
    admitted = await _admit(state, org_id, parsed, key, "api", key_field="Idempotency-Key")
    return await _answer(state, admitted.job_id, replayed=not admitted.created,
                         preference=preference)


IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="Retry-safe key: the same key and request return the "
    "same job and response for 24 h; another request with it is a 422")]
Prefer = Annotated[str | None, Header(
    description="`respond-async` answers 202 at once with the job id; `wait=N` waits at most "
    "N seconds")]
NumberPath = Annotated[str, Path(description=NUMBER_PATH_DOC, examples=["+15551234567"])]


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
    state = _state(request)
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
    state = _state(request)
    canonical = _path_number(number)
    try:
        record = await run_in_threadpool(state.client.get_number, org_id, canonical)
    except NumberNotFound:
        raise _not_found(canonical) from None
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
    state = _state(request)
    _content_length_guard(request, state.api.max_body)
    _check_content_type(request)
    body = await _read_body(request, state.api.max_body)
    data = _parse_json(body)
    errors = [error] if (error := _number_error(number)) is not None else []
    try:
        parse_change(data, strict_numbers=state.settings.strict_numbers,
                             gateway_policy=state.settings.gateway_policy)
    except InvalidRequest as exc:
        errors += exc.errors
    if errors:
        raise validation_error(errors)
    canonical = canonical_number(number, strict=False)
    key = _api_key(idempotency_key)
    preference = _prefers_async(prefer)

    def submit() -> str:
        return state.client.update(org_id=org_id, number=canonical, changes=data,
                                   idempotency_key=key, source="api")

    try:
        job_id, replayed = await run_in_threadpool(_submit_lifecycle, state, org_id, key,
                                                   submit)
    except NumberNotFound:
        raise _not_found(canonical) from None
    return await _answer(state, job_id, replayed=replayed, preference=preference)


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
    state = _state(request)
    canonical = _path_number(number)
    key = _api_key(idempotency_key)
    preference = _prefers_async(prefer)

    def submit() -> str:
        return state.client.release(org_id=org_id, number=canonical, idempotency_key=key,
                                    source="api")

    try:
        job_id, replayed = await run_in_threadpool(_submit_lifecycle, state, org_id, key,
                                                   submit)
    except NumberNotFound:
        return JSONResponse(envelope(ALREADY_RELEASED_MESSAGE, "success",
                                     release_view(canonical, None)), headers=NO_STORE)
    return await _answer(state, job_id, replayed=replayed, preference=preference)


async def get_job(request: Request, org_id: Org, job_id: str) -> JSONResponse:
    """One job of your organisation: state, steps, attempts, result or error (no password)."""
    state = _state(request)
    job = await _get_job(state, job_id) if _JOB_ID.match(job_id) else None
    if job is None or job.org_id != org_id:
        raise ApiError(404, "job_not_found", f"No job {job_id[:80]} in your organisation",
                       field="job_id")
    return JSONResponse(envelope("Job found", "success", job_view(job)), headers=NO_STORE)


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
    state = _state(request)
    config: WebhookSource | None = state.api.webhook_sources.get(source)
    if config is None:
        raise ApiError(404, "unknown_webhook_source", f"No webhook source {source[:64]!r}",
                       field="source")
    _content_length_guard(request, state.api.max_body)
    body = await _read_body(request, state.api.max_body)
    headers = {"webhook-id": webhook_id or "", "webhook-timestamp": webhook_timestamp or "",
               "webhook-signature": webhook_signature or ""}
    try:
        delivery = verify(config.key, headers, body, now=state.clock(),
                          tolerance=state.api.webhook_tolerance)
    except SignatureError as exc:
        raise ApiError(401, exc.code, exc.message, field="webhook-signature") from None
    await _rate_limit(state, config.org_id)
    _check_content_type(request)
    parsed = _validate(state, config.extract(_parse_json(body)))
    admitted = await _admit(state, config.org_id, parsed, f"webhook:{source}:{delivery}",
                            f"webhook:{source}", key_field="webhook-id")
    job = await _get_job(state, admitted.job_id)
    current = job.state if job else JobState.QUEUED
    response = _accepted(admitted.job_id, current, duplicate=not admitted.created)
    if not admitted.created:
        response.status_code = 200
    return response


async def healthz() -> JSONResponse:
    """The process is up (no dependency is checked)."""
    return JSONResponse(envelope("ok", "success", {"process": "up"}), headers=NO_STORE)


async def readyz(request: Request) -> JSONResponse:
    """Redis and LiveKit are reachable (each within TRUNKLINE_API_READY_TIMEOUT)."""
    state = _state(request)
    checks: dict[str, str] = {}

    async def run(name: str, probe: Probe) -> None:
        try:
            await asyncio.wait_for(run_in_threadpool(probe), state.api.ready_timeout + 1.0)
            checks[name] = "ok"
        except Exception as exc:  # a probe's failure is the answer, whatever it is
            checks[name] = f"unreachable ({type(exc).__name__})"

    await asyncio.gather(*(run(name, probe) for name, probe in state.probes.items()))
    if all(value == "ok" for value in checks.values()):
        return JSONResponse(envelope("ready", "success", checks), headers=NO_STORE)
    failed = sorted(name for name, value in checks.items() if value != "ok")
    error = {"code": "not_ready", "message": f"unreachable: {', '.join(failed)}",
             "field": None, "retryable": True}
    return JSONResponse(envelope(f"not ready: {', '.join(failed)}", "error", checks, error),
                        status_code=503, headers=NO_STORE)


# --------------------------------------------------------------------------- factory


def _default_probes(settings: Settings, api: ApiSettings,
                    closers: list[Callable[[], None]]) -> dict[str, Probe]:
    timeout = api.ready_timeout
    ping_client = redis_client(settings, socket_timeout=timeout,
                               socket_connect_timeout=timeout)
    closers.append(ping_client.close)
    livekit: list[LiveKitSIP] = []

    def redis_probe() -> None:
        ping_client.ping()

    def livekit_probe() -> None:
        if not livekit:
            settings.require_livekit()
            livekit.append(LiveKitSIP(settings.livekit_url, settings.livekit_api_key,
                                      settings.livekit_api_secret, timeout=timeout))
            closers.append(livekit[0].close)
        livekit[0].list_inbound_trunks(trunk_ids=["ST_trunkline_readyz_probe"])

    return {"redis": redis_probe, "livekit": livekit_probe}


def _require_both_credentials(app: FastAPI) -> None:
    """FastAPI lists two security dependencies as alternatives; the API needs both at once."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    names = {name for entry in operation.get("security", []) for name in entry}
                    if names == {"ApiKey", "ApiSecret"}:
                        operation["security"] = [{"ApiKey": [], "ApiSecret": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def create_api(
    settings: Settings | None = None,
    api_settings: ApiSettings | None = None,
    *,
    client: ProvisioningClient | None = None,
    probes: Mapping[str, Probe] | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the ASGI app. Collaborators are injectable; by default they come from settings."""
    settings = settings or Settings.from_env()
    api = api_settings or ApiSettings.from_env()
    closers: list[Callable[[], None]] = []
    if client is None:
        settings.require_secret_keys()
        client = ProvisioningClient(
            JobStore.for_settings(redis_client(settings), settings),
            Vault(settings.secret_keys), create_app(settings), settings)
        closers.append(client.close)
    state = ApiState(
        settings=settings,
        api=api,
        client=client,
        keys=ApiKeys(client.redis),
        limiter=RateLimiter(client.redis, api.rate_limit, clock=clock),
        auth_failures=RateLimiter(client.redis, api.auth_failure_limit,
                                  prefix="trunkline:api:authfail", clock=clock),
        admission=Admission(client),
        probes=probes if probes is not None else _default_probes(settings, api, closers),
        waiter=ResultWaiter(client.redis, client.store.keys.results),
        clock=clock,
        closers=closers,
    )

    closers.insert(0, state.waiter.stop)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        for close in state.closers:
            try:
                close()
            except Exception:  # noqa: S112 - best effort at shutdown
                continue

    app = FastAPI(
        title="Trunkline",
        version=API_VERSION,
        summary="Queued, idempotent, all-or-nothing SIP trunk provisioning for LiveKit",
        description="Every answer is the envelope `{message, status, error, data}`; errors "
        "carry `error: {code, message, field, retryable}`.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url="/redoc",
        lifespan=lifespan,
    )
    app.state.trunkline = state
    install_error_handlers(app)

    create_doc: dict[str, Any] = {
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
    create_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": CreatedEnvelope, "description": "Created; data is the inbound trunk id"},
        202: {"model": AcceptedEnvelope, "description": "Accepted; still running",
              "headers": {"Location": {"schema": {"type": "string"},
                                       "description": "/api/jobs/{job_id}"}}},
        **error_responses(400, 401, 409, 413, 415, 422, 429, 502, 503),
    }
    for path, operation_id in (("/api/sio/createSipTrunkDispatch", "createSipTrunkDispatch"),
                               ("/api/sip/createSipTrunkDispatch", "createSipTrunkDispatchSip")):
        app.add_api_route(path, create_sip_trunk_dispatch, methods=["POST"],
                          operation_id=operation_id, tags=["provisioning"],
                          response_class=JSONResponse, responses=create_responses,
                          openapi_extra=create_doc)
    number_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": PhoneNumberEnvelope, "description": "The number"},
        **error_responses(400, 401, 404, 429, 503),
    }
    accepted: dict[int | str, dict[str, Any]] = {
        202: {"model": AcceptedEnvelope, "description": "Accepted; still running",
              "headers": {"Location": {"schema": {"type": "string"},
                                       "description": "/api/jobs/{job_id}"}}},
    }
    app.add_api_route(
        "/api/phone-numbers", list_phone_numbers, methods=["GET"],
        operation_id="listPhoneNumbers", tags=["phone numbers"], response_class=JSONResponse,
        responses={200: {"model": PhoneNumberListEnvelope, "description": "A page"},
                   **error_responses(400, 401, 429, 503)})
    app.add_api_route(
        "/api/phone-numbers/{number}", get_phone_number, methods=["GET"],
        operation_id="getPhoneNumber", tags=["phone numbers"], response_class=JSONResponse,
        responses=number_responses)
    app.add_api_route(
        "/api/phone-numbers/{number}", update_phone_number, methods=["PATCH"],
        operation_id="updatePhoneNumber", tags=["phone numbers"], response_class=JSONResponse,
        responses={**number_responses, **accepted,
                   **error_responses(400, 401, 404, 413, 415, 422, 429, 502, 503)},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": update_request_schema(),
            "example": {"authPassword": "new_sip_password"}}}}})
    app.add_api_route(
        "/api/phone-numbers/{number}", release_phone_number, methods=["DELETE"],
        operation_id="releasePhoneNumber", tags=["phone numbers"], response_class=JSONResponse,
        responses={200: {"model": ReleasedEnvelope, "description": "Released (or already "
                         "gone)"}, **accepted,
                   **error_responses(400, 401, 404, 422, 429, 502, 503)})
    app.add_api_route("/api/jobs/{job_id}", get_job, methods=["GET"], operation_id="getJob",
                      tags=["jobs"], response_class=JSONResponse,
                      responses={200: {"model": JobEnvelope, "description": "The job"},
                                 **error_responses(401, 404, 429, 503)})
    app.add_api_route(
        "/webhooks/crm/{source}", crm_webhook, methods=["POST"], operation_id="crmWebhook",
        tags=["webhooks"], response_class=JSONResponse,
        responses={200: {"model": AcceptedEnvelope, "description": "Seen before: same job"},
                   202: {"model": AcceptedEnvelope, "description": "Stored and enqueued"},
                   **error_responses(400, 401, 404, 409, 413, 415, 422, 429, 503)},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": "object", "description": "The CRM's signup payload, mapped "
                       "to the request fields by the source's configuration"}}}}},
    )
    _require_both_credentials(app)
    app.add_middleware(MetricsMiddleware)
    app.add_api_route("/metrics", metrics_endpoint(client.store), methods=["GET"],
                      include_in_schema=False)
    for path, endpoint in (("/healthz", healthz), ("/readyz", readyz)):
        route_endpoint: Callable[..., Awaitable[JSONResponse]] = endpoint
        app.add_api_route(path, route_endpoint, methods=["GET"], tags=["health"],
                          response_class=JSONResponse, operation_id=path.strip("/"),
                          responses={200: {"model": HealthEnvelope, "description": "OK"},
                                     503: {"model": HealthEnvelope,
                                           "description": "Not ready"}})
    return app


__all__ = ["REDIS_DOWN", "ApiState", "create_api", "job_view"]
