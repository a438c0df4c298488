"""Every way a call to LiveKit's SIP Twirp API can fail, as one typed taxonomy.

Policy
------
The class says what the caller may do next; the attributes say what happened.

* ``retryable`` (class-level) - retrying the same request may succeed:

  - :class:`LiveKitUnavailable` (``livekit_unavailable``): the connection could not be
    opened (refused, DNS, connect timeout, proxy). The request never left this process,
    so ``outcome_unknown`` is False and a retry is always safe.
  - :class:`LiveKitTimeout` (``livekit_timeout``): the connection broke or went quiet
    while the request was in flight (read/write timeout, reset, server closed the
    connection, malformed HTTP, HTTP 408). The server may have acted on it, so
    ``outcome_unknown`` is True. A pool timeout is the exception: it happens before
    anything is sent, so it is reported with ``outcome_unknown`` False.
  - :class:`LiveKitServerError` (``livekit_server_error``): any 5xx, including
    ``internal`` "sip not connected (redis required)". ``outcome_unknown`` is True.
  - :class:`LiveKitRateLimited` (``livekit_rate_limited``): HTTP 429; ``retry_after``
    carries the server's ``Retry-After`` in seconds when it sent one. The request was
    refused, so ``outcome_unknown`` is False.

* permanent (``retryable`` False) - the same request will fail the same way; fix the
  input or the configuration first:

  - :class:`LiveKitRejected` (``livekit_rejected``): other 4xx (``invalid_argument``,
    ``malformed``, ``failed_precondition``, ``bad_route`` - a wrong URL or a server too
    old for the method - and ``unimplemented``).
  - :class:`LiveKitUnauthorized` (``livekit_unauthorized``): 401 or 403. The auth
    middleware answers 401 in plain text, not JSON.
  - :class:`LiveKitNotFound` (``livekit_not_found``): twirp ``not_found``. Callers that
    compensate (delete what they created) treat it as "already gone".
  - :class:`LiveKitConflict` (``livekit_conflict``) and its two known shapes,
    :class:`InboundNumberConflict` (``number_conflict``) and
    :class:`DispatchRuleConflict` (``dispatch_rule_conflict``). LiveKit reports these as
    ``invalid_argument``; ``conflicting_id`` is the id of the existing object when the
    message names one, so an idempotent step can check whether that object is its own.
    On updates LiveKit may name the updated object first or second; pass its id as
    ``error_from_response(..., subject_id=...)`` (the client does) to skip it.

``outcome_unknown`` means "the server may have executed this request": a create that
fails this way must be followed by a look-up (by ``metadata``) before it is retried.

``code`` is the machine reason slug shared by logs, metrics and job events.

Messages never contain request bodies (they carry SIP passwords). Server messages are
cut to about 300 characters and anything shaped like a JWT is masked, because the auth
middleware echoes the bearer token back in some 401 bodies.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

__all__ = [
    "DispatchRuleConflict",
    "InboundNumberConflict",
    "LiveKitConflict",
    "LiveKitError",
    "LiveKitNotFound",
    "LiveKitPermanentError",
    "LiveKitRateLimited",
    "LiveKitRejected",
    "LiveKitRetryableError",
    "LiveKitServerError",
    "LiveKitTimeout",
    "LiveKitUnauthorized",
    "LiveKitUnavailable",
    "error_from_response",
    "error_from_transport",
]

MAX_SERVER_MESSAGE = 300

_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_WHITESPACE_RE = re.compile(r"\s+")
_INBOUND_CONFLICT_MARK = "conflicting inbound sip trunks"
_TRUNK_ID_RE = re.compile(r"\bST_[A-Za-z0-9]+")
_RULE_ID_RE = re.compile(r"\bSDR_[A-Za-z0-9]+")


class LiveKitError(Exception):
    """A call to LiveKit's SIP API failed; see the module docstring for the policy."""

    code: ClassVar[str] = "livekit_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        method: str,
        status: int | None = None,
        twirp_code: str | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.status = status
        self.twirp_code = twirp_code
        self.outcome_unknown = outcome_unknown

    def __str__(self) -> str:
        return f"{self.method}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments defeat Exception's default pickling (Celery, processes).
        return (_restore, (type(self), self.message, dict(self.__dict__)))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method!r}, status={self.status!r}, "
            f"twirp_code={self.twirp_code!r}, outcome_unknown={self.outcome_unknown!r}, "
            f"message={self.message!r})"
        )


class LiveKitRetryableError(LiveKitError):
    """Trying the same request again may succeed."""

    retryable = True


class LiveKitUnavailable(LiveKitRetryableError):
    """LiveKit could not be reached; the request was never sent."""

    code = "livekit_unavailable"


class LiveKitTimeout(LiveKitRetryableError):
    """The connection failed mid-request; the server may have acted on it."""

    code = "livekit_timeout"


class LiveKitServerError(LiveKitRetryableError):
    """LiveKit answered 5xx; the server may have acted on the request."""

    code = "livekit_server_error"


class LiveKitRateLimited(LiveKitRetryableError):
    """LiveKit answered 429; wait ``retry_after`` seconds when it is set."""

    code = "livekit_rate_limited"

    def __init__(
        self,
        message: str,
        *,
        method: str,
        status: int | None = None,
        twirp_code: str | None = None,
        outcome_unknown: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            method=method,
            status=status,
            twirp_code=twirp_code,
            outcome_unknown=outcome_unknown,
        )
        self.retry_after = retry_after


class LiveKitPermanentError(LiveKitError):
    """The same request will fail again; fix the input or configuration."""

    retryable = False


class LiveKitRejected(LiveKitPermanentError):
    """LiveKit refused the request as invalid (4xx)."""

    code = "livekit_rejected"


class LiveKitUnauthorized(LiveKitPermanentError):
    """LiveKit refused the credentials (401) or the grants (403)."""

    code = "livekit_unauthorized"


class LiveKitNotFound(LiveKitPermanentError):
    """The trunk or dispatch rule does not exist."""

    code = "livekit_not_found"


class LiveKitConflict(LiveKitPermanentError):
    """The request clashes with an existing object, named by ``conflicting_id``."""

    code = "livekit_conflict"

    def __init__(
        self,
        message: str,
        *,
        method: str,
        status: int | None = None,
        twirp_code: str | None = None,
        outcome_unknown: bool = False,
        conflicting_id: str | None = None,
    ) -> None:
        super().__init__(
            message,
            method=method,
            status=status,
            twirp_code=twirp_code,
            outcome_unknown=outcome_unknown,
        )
        self.conflicting_id = conflicting_id


class InboundNumberConflict(LiveKitConflict):
    """Another inbound trunk (``conflicting_id``) already accepts one of these numbers."""

    code = "number_conflict"


class DispatchRuleConflict(LiveKitConflict):
    """A rule (``conflicting_id``) already routes this trunk/number/PIN combination."""

    code = "dispatch_rule_conflict"


# --------------------------------------------------------------------------- helpers


def _restore(cls: type[LiveKitError], message: str, state: dict[str, Any]) -> LiveKitError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


def _clean(text: str) -> str:
    """Collapse whitespace, mask tokens and cut a server message to a loggable size."""
    text = _JWT_RE.sub("<token>", _WHITESPACE_RE.sub(" ", text).strip())
    if len(text) > MAX_SERVER_MESSAGE:
        text = text[: MAX_SERVER_MESSAGE - 3].rstrip() + "..."
    return text


def _parse_body(response: httpx.Response) -> tuple[str | None, str]:
    """Return (twirp code, server message) from a Twirp JSON error or a plain-text body."""
    try:
        raw = response.content
    except httpx.ResponseNotRead:
        return None, ""
    text = raw.decode("utf-8", errors="replace")
    payload: Any = None
    with contextlib.suppress(ValueError):
        payload = json.loads(text)
    if isinstance(payload, dict):
        code = payload.get("code")
        msg = payload.get("msg", payload.get("error"))
        return (
            code if isinstance(code, str) and code else None,
            msg if isinstance(msg, str) else "",
        )
    return None, text


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds: delta-seconds, or an HTTP date relative to ``Date``."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds):
        return max(seconds, 0.0)
    date_header = response.headers.get("date")
    if date_header is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        now = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None or now.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)


def _inbound_conflict_id(msg: str, subject_id: str | None) -> str | None:
    """The other trunk in ``Conflicting inbound SIP Trunks: "<new>" and "ST_x", ...``.

    On create the trunk being written prints as "<new>", so the first id is the other one.
    On update both are real ids in whatever order the server iterated them (observed
    both ways), so the caller's ``subject_id`` is what tells them apart.
    """
    start = msg.lower().find(_INBOUND_CONFLICT_MARK)
    ids: list[str] = _TRUNK_ID_RE.findall(msg[max(start, 0) :])
    return next((found for found in ids if found != subject_id), None)


def _rule_conflict_id(msg: str, subject_id: str | None) -> str | None:
    """The existing rule in ``... already exists in dispatch rule "SDR_x" "name"``.

    On update the server may name the rule being written; then the other rule is unknown.
    """
    start = msg.lower().find("already exists")
    match = _RULE_ID_RE.search(msg, max(start, 0))
    if match is None or match.group(0) == subject_id:
        return None
    return match.group(0)


def _with_detail(hint: str, detail: str) -> str:
    return f"{hint} (LiveKit said: {detail})" if detail else hint


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class _Answer:
    """A non-2xx answer, read once."""

    method: str
    response: httpx.Response
    twirp_code: str | None
    raw: str  # the server's message as sent; only ``detail`` goes into errors
    subject_id: str | None

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def detail(self) -> str:
        return _clean(self.raw)

    @property
    def lowered(self) -> str:
        return self.raw.lower()

    @property
    def common(self) -> dict[str, Any]:
        return {"method": self.method, "status": self.status, "twirp_code": self.twirp_code}

    def or_status(self) -> str:
        return self.detail or f"LiveKit answered HTTP {self.status}"


def _access_or_pacing(a: _Answer) -> LiveKitError | None:
    """401/403 (credentials, grants), 429 (rate limit) and 408 (server-side timeout)."""
    if a.status in (401, 403) or a.twirp_code in ("unauthenticated", "permission_denied"):
        if a.status == 403 or a.twirp_code == "permission_denied" or "permission" in a.lowered:
            hint = "LiveKit denied permission: the token needs the sip.admin grant"
        else:
            hint = "LiveKit rejected the credentials: check LIVEKIT_API_KEY / LIVEKIT_API_SECRET"
        return LiveKitUnauthorized(_with_detail(hint, a.detail), **a.common)
    if a.status == 429 or a.twirp_code == "resource_exhausted":
        return LiveKitRateLimited(
            _with_detail("LiveKit is rate limiting requests", a.detail),
            retry_after=_retry_after(a.response),
            **a.common,
        )
    if a.status == 408 or a.twirp_code in ("deadline_exceeded", "canceled"):
        return LiveKitTimeout(
            _with_detail("LiveKit timed out handling the request", a.detail),
            outcome_unknown=True,
            **a.common,
        )
    return None


def _server_side(a: _Answer) -> LiveKitError | None:
    """5xx: retryable with an unknown outcome, except ``unimplemented``."""
    if a.twirp_code == "unimplemented" or a.status == 501:
        hint = "this LiveKit server does not implement the method"
        return LiveKitRejected(_with_detail(hint, a.detail), **a.common)
    if a.status >= 500:
        message = a.or_status()
        if "redis required" in a.lowered:
            hint = "LiveKit's SIP service is not connected: livekit-server needs Redis configured"
            message = f"{hint} ({a.detail})"
        return LiveKitServerError(message, outcome_unknown=True, **a.common)
    return None


def _client_side(a: _Answer) -> LiveKitError:
    """Other 4xx: conflicts, not found, wrong route, invalid input."""
    if _INBOUND_CONFLICT_MARK in a.lowered:
        conflicting = _inbound_conflict_id(a.raw, a.subject_id)
        return InboundNumberConflict(a.detail, conflicting_id=conflicting, **a.common)
    if "already exists" in a.lowered and (
        "dispatch rule" in a.lowered or "DispatchRule" in a.method
    ):
        conflicting = _rule_conflict_id(a.raw, a.subject_id)
        return DispatchRuleConflict(a.detail, conflicting_id=conflicting, **a.common)
    if a.twirp_code == "already_exists" or a.status == 409:
        return LiveKitConflict(a.or_status(), **a.common)
    if a.twirp_code == "not_found":
        return LiveKitNotFound(a.or_status(), **a.common)
    if a.twirp_code == "bad_route" or (a.status == 404 and a.twirp_code is None):
        hint = (
            "LiveKit has no such endpoint: check LIVEKIT_URL, and that the server is "
            "new enough (>= 1.9) for the SIP API"
        )
        return LiveKitRejected(_with_detail(hint, a.detail), **a.common)
    return LiveKitRejected(a.or_status(), **a.common)


def error_from_response(
    method: str, response: httpx.Response, *, subject_id: str | None = None
) -> LiveKitError:
    """Map a non-2xx answer from LiveKit to the taxonomy. Pure: reads only its arguments.

    ``subject_id`` is the id of the object an update writes; conflict parsing uses it so
    ``conflicting_id`` never names the object being updated.
    """
    twirp_code, raw = _parse_body(response)
    answer = _Answer(
        method=method, response=response, twirp_code=twirp_code, raw=raw, subject_id=subject_id
    )
    for classify in (_access_or_pacing, _server_side):
        error = classify(answer)
        if error is not None:
            return error
    return _client_side(answer)


def error_from_transport(method: str, exc: httpx.TransportError) -> LiveKitError:
    """Map an httpx transport failure to the taxonomy. Pure: reads only ``exc``."""
    name = type(exc).__name__
    # httpx messages hold no request content, only socket-level reasons.
    detail = _clean(str(exc)) or name
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | httpx.ProxyError):
        return LiveKitUnavailable(f"cannot connect to LiveKit: {detail}", method=method)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return LiveKitRejected(f"LIVEKIT_URL has an unsupported scheme: {detail}", method=method)
    if isinstance(exc, httpx.LocalProtocolError):
        return LiveKitRejected(f"the request could not be sent as HTTP: {detail}", method=method)
    if isinstance(exc, httpx.PoolTimeout):
        return LiveKitTimeout(f"no free connection to LiveKit: {detail}", method=method)
    if isinstance(exc, httpx.TimeoutException):
        return LiveKitTimeout(
            f"LiveKit did not answer in time ({name}): {detail}",
            method=method,
            outcome_unknown=True,
        )
    return LiveKitTimeout(
        f"connection to LiveKit failed mid-request ({name}): {detail}",
        method=method,
        outcome_unknown=True,
    )
