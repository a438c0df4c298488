"""Who is calling: an organisation's API key and secret, its failed-authentication limit and
its rate limit. `Org` is the dependency every organisation route declares."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from producers.api.errors import ApiError
from producers.api.state import ApiState, api_state

api_key_header = APIKeyHeader(name="X-API-KEY", scheme_name="ApiKey", auto_error=False,
                              description="Your API key (sk_...)")
api_secret_header = APIKeyHeader(name="X-API-SECRET", scheme_name="ApiSecret", auto_error=False,
                                 description="Your API secret (s3cr3t_...), shown once at "
                                 "creation")


async def authenticate(
    request: Request,
    api_key: Annotated[str | None, Security(api_key_header)],
    api_secret: Annotated[str | None, Security(api_secret_header)],
) -> str:
    """The caller's organisation, from X-API-KEY and X-API-SECRET; counts its rate limit."""
    state = api_state(request)
    if not api_key or not api_secret:
        raise ApiError(401, "missing_credentials", "Send your API key in X-API-KEY and its "
                       "secret in X-API-SECRET", field="X-API-KEY" if not api_key else
                       "X-API-SECRET")
    key_id = api_key.strip()
    subjects = auth_subjects(request, key_id)
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


def auth_subjects(request: Request, key_id: str, *, prefix: str = "") -> tuple[str, str]:
    """The failed-authentication counters a request draws on: its client address and the key
    id it claims (hashed: a key id is client-chosen text of any length). `prefix` keeps the
    /ops login's counters apart from the API's."""
    address = request.client.host if request.client else "unknown"
    claimed = hashlib.sha256(key_id.encode("utf-8", "replace")).hexdigest()[:32]
    return f"{prefix}addr:{address}", f"{prefix}key:{claimed}"


async def rate_limit(state: ApiState, org_id: str) -> None:
    await run_in_threadpool(_check_rate, state, org_id)


def _check_rate(state: ApiState, org_id: str) -> None:
    verdict = state.limiter.hit(f"org:{org_id}")
    if not verdict.allowed:
        raise ApiError(429, "rate_limited", f"More than {verdict.limit} requests in a minute "
                       f"for this organisation; retry in {verdict.reset_after} s",
                       retryable=True, headers=verdict.headers())


Org = Annotated[str, Depends(authenticate)]
