"""Who may use /ops, and proof that a POST came from its own pages.

An operator logs in once with an operator key (`trunkline keys create --operator`): its id and
secret go in a POSTed form, never in a URL. The answer is a session cookie holding a random
token (HttpOnly, SameSite=Strict, path /ops, Secure over HTTPS). Redis keeps only the token's
SHA-256, with the key id and the session's CSRF token, for `SESSION_TTL_SECONDS`. Every request
checks again that the key is a live operator key, so revoking it ends its sessions at once.

Every POST carries the session's CSRF token in a hidden field (compared in constant time), and
is refused when the browser says it came from another site (`Origin`, `Sec-Fetch-Site`). The
login form, before any session, uses a double-submit token: the same random value in a cookie
and in the form.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qs, urlsplit

from redis import Redis
from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "trunkline_ops_session"
LOGIN_COOKIE = "trunkline_ops_login"
COOKIE_PATH = "/ops"
SESSION_TTL_SECONDS = 8 * 3600
LOGIN_TOKEN_TTL_SECONDS = 3600
MAX_FORM_BYTES = 8192
CSRF_FIELD = "csrf_token"


class FormError(ValueError):
    """A POST body this page did not make."""


class CsrfRefused(FormError):
    """A POST without this session's token, or from another site."""


@dataclass(frozen=True)
class OpsSession:
    key_id: str
    csrf_token: str
    created_at: float


class OpsSessions:
    """Operator sessions in Redis, found by the SHA-256 of their cookie's token."""

    def __init__(self, redis: Redis, *, prefix: str = "trunkline:ops:session",
                 ttl_seconds: int = SESSION_TTL_SECONDS) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def _key(self, token: str) -> str:
        return f"{self.prefix}:{hashlib.sha256(token.encode()).hexdigest()}"

    def open(self, key_id: str, now: float) -> tuple[str, OpsSession]:
        """A new session for an authenticated operator key: the cookie's token, and the session."""
        token = secrets.token_urlsafe(32)
        session = OpsSession(key_id=key_id, csrf_token=secrets.token_urlsafe(32), created_at=now)
        self.redis.set(self._key(token), json.dumps(session.__dict__), ex=self.ttl_seconds)
        return token, session

    def get(self, token: str | None) -> OpsSession | None:
        if not token or len(token) > 128:
            return None
        raw = self.redis.get(self._key(token))
        if raw is None:
            return None
        try:
            data = json.loads(cast(bytes, raw))
            return OpsSession(key_id=str(data["key_id"]), csrf_token=str(data["csrf_token"]),
                              created_at=float(data["created_at"]))
        except (ValueError, KeyError, TypeError):
            return None

    def close(self, token: str | None) -> None:
        if token and len(token) <= 128:
            self.redis.delete(self._key(token))


def tokens_match(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an empty or missing token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site.

    Browsers send `Origin` on every form POST and `Sec-Fetch-Site` with it; a client that sends
    neither (curl) still needs the CSRF token, which only the page holds.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == host and origin == (
        f"{parts.scheme}://{parts.netloc}")


async def read_form(request: Request) -> dict[str, str]:
    """A small `application/x-www-form-urlencoded` body: one value per field, bounded size."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise FormError("send the page's form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError("the form is too large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise FormError("the form is not valid UTF-8 form data") from None
    return {name: values[0] for name, values in fields.items()}


def set_cookie(response: Response, request: Request, name: str, value: str, *,
               max_age: int) -> None:
    """Every /ops cookie: unreadable to scripts, never sent cross-site, only under /ops."""
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def drop_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
