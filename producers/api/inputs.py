"""Reading a request strictly, before anything is stored: its body (size, content type,
JSON, fields), its headers (`Prefer`, `Idempotency-Key`) and a number in its path. Whatever
is refused here makes no job."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from producers.api.errors import ApiError, validation_error
from producers.api.state import ApiState
from worker.contract import (
    FieldError,
    InvalidRequest,
    ProvisionRequest,
    canonical_number,
    parse_request,
)

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_ACCEPTED_TYPES = {
    "application/json",
    # The seed's own curl example sends its JSON with `-d` and no Content-Type, which curl
    # labels application/x-www-form-urlencoded; the body is JSON all the same.
    "application/x-www-form-urlencoded",
    "text/plain",
}


def content_length_guard(request: Request, limit: int) -> None:
    raw = request.headers.get("content-length")
    if raw is not None and raw.strip().isdigit() and int(raw) > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The body is larger than {limit} bytes")


def check_content_type(request: Request) -> None:
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


async def read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, state: ApiState) -> Any:
    """The body of a JSON request, checked in the documented order: size by Content-Length
    (413), content type (415), size while reading (413), JSON (400)."""
    content_length_guard(request, state.api.max_body)
    check_content_type(request)
    return parse_json(await read_body(request, state.api.max_body))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
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


def validate(state: ApiState, data: Any) -> ProvisionRequest:
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

Preference = tuple[bool, float | None]


def prefers_async(prefer: str | None) -> Preference:
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


def stored_idempotency_key(idempotency_key: str | None) -> str | None:
    """The Idempotency-Key as stored (`api:` + key), after checking its form."""
    if idempotency_key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible "
                       "ASCII characters", field="Idempotency-Key")
    return f"api:{idempotency_key}"


def number_error(raw: str) -> FieldError | None:
    try:
        canonical_number(raw, strict=False)
    except ValueError as exc:
        return FieldError(field="number", message=str(exc), code="value_error")
    return None


def path_number(raw: str) -> str:
    """The path's number in E.164, or a 400 naming `number`."""
    error = number_error(raw)
    if error is not None:
        raise validation_error([error])
    return canonical_number(raw, strict=False)
