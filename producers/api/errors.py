"""The response envelope and every error path of the HTTP producer.

Every answer is the seed's envelope `{"message", "status", "error", "data"}`. Unlike the seed,
an error always has `status: "error"` and an `error` object: a machine `code`, a human
`message`, the offending `field` (or null) and `retryable`; validation errors add `details`,
one entry per field. Nothing reaches the client as a bare 500 or a stack trace: unexpected
exceptions become `internal_error`, and are logged by type and location only, because an
exception's message may quote request data.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import kombu.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.contract import FieldError
from worker.store import NotReplicated, UnreadableRecord, UnstorableRecord

log = logging.getLogger("trunkline.api")

NO_STORE = {"Cache-Control": "no-store"}

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              redis.exceptions.BusyLoadingError, kombu.exceptions.OperationalError)


class ApiError(Exception):
    """An error answer: raised anywhere in a route, rendered by `error_response`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retryable: bool = False,
        details: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retryable = retryable
        self.details = list(details) if details is not None else None
        self.headers = dict(headers or {})
        super().__init__(message)


def envelope(message: str, status: str, data: Any = None,
             error: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"message": message, "status": status, "error": error, "data": data}


def error_body(exc: ApiError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message, "field": exc.field,
                             "retryable": exc.retryable}
    if exc.details is not None:
        error["details"] = [d.model_dump() for d in exc.details]
    return envelope(exc.message, "error", None, error)


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status,
                        headers={**NO_STORE, **exc.headers})


def validation_error(errors: Sequence[FieldError]) -> ApiError:
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return ApiError(400, "validation_error", f"The request is invalid: {summary}",
                    field=errors[0].field if errors else None, details=errors)


def redis_unavailable() -> ApiError:
    return ApiError(503, "redis_unavailable",
                    "The job store is unreachable; nothing was stored. Retry later.",
                    retryable=True, headers={"Retry-After": "5"})


def internal_error() -> ApiError:
    return ApiError(500, "internal_error",
                    "An unexpected error occurred; it has been logged. Retry later.",
                    retryable=True)


def log_unexpected(exc: BaseException, request_path: str) -> None:
    """Type and location only: an exception's message may carry request data."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in frames[::-1][:8])
    log.error("unhandled %s on %s at %s", type(exc).__name__, request_path, where)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for that type
    status = exc.status_code
    code = _HTTP_CODES.get(status, "http_error")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    message = {404: f"No route for {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(status, phrase)
    headers = dict(exc.headers or {})
    return error_response(ApiError(status, code, message, retryable=status >= 500,
                                   headers=headers))


def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for that type
    errors = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if not isinstance(p, int)]
        field = loc[-1] if loc else "request"
        errors.append(FieldError(field=field, message=str(error.get("msg", "is invalid")),
                                 code=str(error.get("type", "invalid"))))
    return error_response(validation_error(errors))


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)  # noqa: S101 - registered for that type
    return error_response(exc)


def _unreadable(request: Request, exc: Exception) -> JSONResponse:
    # The record may be another organisation's: name nothing of it to the caller.
    log.error("unreadable record on %s: %s", request.url.path, exc)
    return error_response(ApiError(
        409, "record_unreadable", "A stored record this request needs cannot be read; it has "
        "been set aside for an operator (dead letters, code unreadable_record). Other "
        "requests are unaffected.", retryable=False))


def _unstorable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("refused an unstorable request on %s", request.url.path)
    return error_response(ApiError(
        400, "unstorable_request", "The request could not be stored so that it reads back "
        "exactly; nothing was stored", field="body"))


def _not_replicated(request: Request, exc: Exception) -> JSONResponse:
    log.warning("unreplicated write on %s: %s", request.url.path, exc)
    return error_response(ApiError(
        503, "not_replicated", f"{exc}. It was not acknowledged: retry with the same "
        "Idempotency-Key, which finds the job instead of making another", retryable=True,
        headers={"Retry-After": "1"}))


def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unreachable on %s: %s", request.url.path, type(exc).__name__)
    return error_response(redis_unavailable())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(UnreadableRecord, _unreadable)
    app.add_exception_handler(UnstorableRecord, _unstorable)
    app.add_exception_handler(NotReplicated, _not_replicated)
    for kind in REDIS_DOWN:
        app.add_exception_handler(kind, _redis_down)
    app.add_middleware(CatchAll)


class CatchAll:
    """Outermost safety net: any exception that escapes becomes an `internal_error` envelope.

    Starlette's own server-error middleware answers 500 but then re-raises, and the server
    logs the exception with its message; this one logs type and location and swallows it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            # The client went away mid-body: nobody to answer, and nothing went wrong here.
            log.info("client disconnected before its request was read on %s",
                     scope.get("path", ""))
        except Exception as exc:
            log_unexpected(exc, str(scope.get("path", "")))
            if started:
                return  # too late for an envelope; the server closes the connection
            error = redis_unavailable() if isinstance(exc, REDIS_DOWN) else internal_error()
            body = json.dumps(error_body(error)).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode()),
                       (b"cache-control", b"no-store")]
            headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
            await send({"type": "http.response.start", "status": error.status,
                        "headers": headers})
            await send({"type": "http.response.body", "body": body})
