"""One client for LiveKit's SIP Twirp API: trunks and dispatch rules.

Policy
------
* Transport: every call is ``POST {base}/twirp/livekit.SIP/<Method>`` with a JSON body
  and ``Authorization: Bearer <JWT>``. Timeouts are always set (connect <= 3 s). There are
  no retries here: a call either returns the server's answer or raises one
  :class:`~worker.livekit.errors.LiveKitError`, whose class says whether retrying may help
  and whose ``outcome_unknown`` says whether the server may already have acted. The
  caller (the saga) owns retry, back-off and "look before you create again".
* Errors: httpx transport failures go through
  :func:`~worker.livekit.errors.error_from_transport`, non-2xx answers through
  :func:`~worker.livekit.errors.error_from_response`. A 2xx answer this client cannot read
  is a :class:`~worker.livekit.errors.LiveKitServerError` with ``outcome_unknown`` set.
* Secrets: request bodies carry SIP passwords, so they are never logged and never put
  into exceptions; only the method name, status and duration are logged. Models keep
  passwords as ``SecretStr``.
* Auth: an HS256 token (``iss``/``sub`` = API key, ``sip.admin`` grant, ``nbf`` one minute
  in the past, ``exp`` = now + ``token_ttl``) is cached and minted again once less than
  half of its lifetime is left.
* Late landings: a call made for a run ends before the run's lease does (see
  :mod:`worker.livekit.deadline`), and sockets close with ``SO_LINGER`` 0: a call given up on
  is reset, its unsent bytes discarded, so it cannot reach LiveKit after a takeover looked.
* Threads: one instance may be shared by threads. ``httpx.Client`` is thread-safe and the
  token cache is guarded by a lock.
* Not idempotent: LiveKit has no idempotency keys and creates are list-then-write
  without a lock, so two creates may both succeed. Put the job id in ``metadata`` and
  serialise per number on the caller's side.
* Changing an existing object keeps every field: :meth:`LiveKitSIP.read_object` gives it as
  the server holds it, :meth:`LiveKitObject.merged` sets Trunkline's fields, and
  :meth:`LiveKitSIP.replace_object` sends it back whole. ``update_*`` replace an object with a
  typed model instead, which resets every field the models do not carry (see
  :mod:`worker.livekit.models`): they set up test conditions, never change a customer's object.
* Lists page with ``{"after_id", "limit": 500}`` until a page comes back empty or short.
  LiveKit Cloud honours ``limit``; the open-source server returns everything at once.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import httpx
import jwt
from jwt.algorithms import HMACAlgorithm
from pydantic import BaseModel, ValidationError

from worker.livekit.deadline import fit_timeout
from worker.livekit.errors import (
    LiveKitError,
    LiveKitNotFound,
    LiveKitServerError,
    error_from_response,
    error_from_transport,
)
from worker.livekit.models import (
    DispatchRule,
    InboundTrunk,
    LiveKitObject,
    ObjectKind,
    OutboundTrunk,
)
from worker.observability import LIVEKIT_ERRORS

__all__ = ["LiveKitSIP"]

logger = logging.getLogger(__name__)

SERVICE_PATH: Final = "/twirp/livekit.SIP/"
# l_onoff=1, l_linger=0: close() resets the connection and drops what was not yet sent
# (see worker.livekit.deadline). A closed keep-alive connection is reset too; harmless.
ABORT_ON_CLOSE: Final = [(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))]
PAGE_LIMIT: Final = 500
NBF_LEEWAY_SECONDS: Final = 60
MIN_TOKEN_TTL: Final = 30
MAX_CONNECT_TIMEOUT: Final = 3.0

_ModelT = TypeVar("_ModelT", bound=BaseModel)
# Per kind: the method that reads one object, the one that replaces it.
_OBJECT_METHODS: Final = {
    ObjectKind.INBOUND_TRUNK: ("GetSIPInboundTrunk", "UpdateSIPInboundTrunk"),
    ObjectKind.OUTBOUND_TRUNK: ("GetSIPOutboundTrunk", "UpdateSIPOutboundTrunk"),
    ObjectKind.DISPATCH_RULE: ("ListSIPDispatchRule", "UpdateSIPDispatchRule"),
}


class _HS256(HMACAlgorithm):
    """PyJWT's HS256 without the short-key warning.

    The secret is LiveKit's, not ours to choose: ``livekit-server --dev`` uses ``secret``
    (6 bytes), and PyJWT warns about keys under 32 bytes on every signature, which test
    runs with ``filterwarnings = error`` turn into failures. Silencing it with
    ``warnings.catch_warnings`` would mutate process-wide state from several threads.
    """

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)

    def check_key_length(self, key: bytes) -> str | None:
        return None


def _http_base_url(url: str) -> str:
    """``ws(s)://`` (LiveKit's usual LIVEKIT_URL) becomes ``http(s)://``; no trailing slash."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or not rest.strip("/"):
        raise ValueError(f"LiveKit URL must look like https://host or wss://host, got {url!r}")
    scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    if scheme not in ("http", "https"):
        raise ValueError(f"LiveKit URL must use http(s):// or ws(s)://, got {url!r}")
    return f"{scheme}://{rest.rstrip('/')}"


class LiveKitSIP:
    """LiveKit's SIP API: create, read, list, replace and delete trunks and dispatch rules."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = 10.0,
        token_ttl: int = 600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not api_key or not api_secret:
            raise ValueError("LiveKit API key and secret are required")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if token_ttl < MIN_TOKEN_TTL:
            raise ValueError(f"token_ttl must be at least {MIN_TOKEN_TTL} seconds")
        self._base_url = _http_base_url(base_url)
        self._api_key = api_key
        self._api_secret = api_secret
        self._token_ttl = token_ttl
        self._clock = clock
        self._owns_http = http is None
        self._http = (
            http
            if http is not None
            else httpx.Client(
                transport=httpx.HTTPTransport(socket_options=ABORT_ON_CLOSE),
                timeout=httpx.Timeout(
                    connect=min(MAX_CONNECT_TIMEOUT, timeout),
                    read=timeout,
                    write=timeout,
                    pool=timeout,
                ),
                follow_redirects=False,
            )
        )
        self._signer = jwt.PyJWS(algorithms=[])
        self._signer.register_algorithm("HS256", _HS256())
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_renew_at = 0.0

    def __repr__(self) -> str:
        return f"LiveKitSIP(base_url={self._base_url!r}, api_key={self._api_key!r})"

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the HTTP client if this instance created it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ trunks

    def create_inbound_trunk(self, trunk: InboundTrunk) -> InboundTrunk:
        """Create an inbound trunk; the answer carries the new ``sip_trunk_id``."""
        data = self._call("CreateSIPInboundTrunk", {"trunk": trunk.to_wire()})
        return self._parse("CreateSIPInboundTrunk", InboundTrunk, data)

    def create_outbound_trunk(self, trunk: OutboundTrunk) -> OutboundTrunk:
        """Create an outbound trunk. LiveKit does not refuse duplicates."""
        data = self._call("CreateSIPOutboundTrunk", {"trunk": trunk.to_wire()})
        return self._parse("CreateSIPOutboundTrunk", OutboundTrunk, data)

    def get_inbound_trunk(self, trunk_id: str) -> InboundTrunk:
        """Read one inbound trunk; raises ``LiveKitNotFound`` for an unknown id."""
        data = self._call("GetSIPInboundTrunk", {"sip_trunk_id": trunk_id})
        return self._parse("GetSIPInboundTrunk", InboundTrunk, data.get("trunk"))

    def get_outbound_trunk(self, trunk_id: str) -> OutboundTrunk:
        """Read one outbound trunk; raises ``LiveKitNotFound`` for an unknown id."""
        data = self._call("GetSIPOutboundTrunk", {"sip_trunk_id": trunk_id})
        return self._parse("GetSIPOutboundTrunk", OutboundTrunk, data.get("trunk"))

    def list_inbound_trunks(
        self, *, numbers: Sequence[str] = (), trunk_ids: Sequence[str] = ()
    ) -> list[InboundTrunk]:
        """All inbound trunks matching the filters (numbers also match wildcard trunks)."""
        request = self._filters(trunk_ids=trunk_ids, numbers=numbers)
        return self._list("ListSIPInboundTrunk", InboundTrunk, request, "sip_trunk_id")

    def list_outbound_trunks(
        self, *, numbers: Sequence[str] = (), trunk_ids: Sequence[str] = ()
    ) -> list[OutboundTrunk]:
        """All outbound trunks matching the filters (numbers match exactly)."""
        request = self._filters(trunk_ids=trunk_ids, numbers=numbers)
        return self._list("ListSIPOutboundTrunk", OutboundTrunk, request, "sip_trunk_id")

    def update_inbound_trunk(self, trunk_id: str, replace: InboundTrunk) -> InboundTrunk:
        """Replace every field of an inbound trunk (unmodelled ones reset: see the policy)."""
        body = {"sip_trunk_id": trunk_id, "replace": replace.to_wire()}
        data = self._call("UpdateSIPInboundTrunk", body, subject_id=trunk_id)
        return self._parse("UpdateSIPInboundTrunk", InboundTrunk, data)

    def update_outbound_trunk(self, trunk_id: str, replace: OutboundTrunk) -> OutboundTrunk:
        """Replace every field of an outbound trunk (unmodelled ones reset: see the policy)."""
        body = {"sip_trunk_id": trunk_id, "replace": replace.to_wire()}
        data = self._call("UpdateSIPOutboundTrunk", body, subject_id=trunk_id)
        return self._parse("UpdateSIPOutboundTrunk", OutboundTrunk, data)

    def delete_trunk(self, trunk_id: str) -> None:
        """Delete a trunk of either kind. LiveKit answers 200 for unknown ids too."""
        self._call("DeleteSIPTrunk", {"sip_trunk_id": trunk_id})

    # ------------------------------------------------------------------ dispatch rules

    def create_dispatch_rule(self, rule: DispatchRule) -> DispatchRule:
        """Create a dispatch rule; the answer carries the new ``sip_dispatch_rule_id``."""
        data = self._call("CreateSIPDispatchRule", {"dispatch_rule": rule.to_wire()})
        return self._parse("CreateSIPDispatchRule", DispatchRule, data)

    def list_dispatch_rules(
        self, *, trunk_ids: Sequence[str] = (), rule_ids: Sequence[str] = ()
    ) -> list[DispatchRule]:
        """All dispatch rules matching the filters (trunk_ids also match wildcard rules)."""
        request = self._filters(dispatch_rule_ids=rule_ids, trunk_ids=trunk_ids)
        return self._list("ListSIPDispatchRule", DispatchRule, request, "sip_dispatch_rule_id")

    def update_dispatch_rule(self, rule_id: str, replace: DispatchRule) -> DispatchRule:
        """Replace every field of a dispatch rule (unmodelled ones reset: see the policy)."""
        body = {"sip_dispatch_rule_id": rule_id, "replace": replace.to_wire()}
        data = self._call("UpdateSIPDispatchRule", body, subject_id=rule_id)
        return self._parse("UpdateSIPDispatchRule", DispatchRule, data)

    def delete_dispatch_rule(self, rule_id: str) -> None:
        """Delete a dispatch rule; raises ``LiveKitNotFound`` for an unknown id."""
        self._call("DeleteSIPDispatchRule", {"sip_dispatch_rule_id": rule_id})

    # ------------------------------------------------------------------ whole objects

    def read_object(self, kind: ObjectKind, object_id: str) -> LiveKitObject:
        """One object with every field the server holds; ``LiveKitNotFound`` if unknown."""
        if kind is ObjectKind.DISPATCH_RULE:
            # LiveKit has no GetSIPDispatchRule: a list by id answers null for unknown ids.
            method = "ListSIPDispatchRule"
            items = self._call(method, {"dispatch_rule_ids": [object_id]}).get("items")
            found = items[0] if isinstance(items, list) and items else None
            if found is None:
                raise LiveKitNotFound(f"dispatch rule {object_id} does not exist", method=method,
                                      status=200, twirp_code="not_found")
        else:
            method = _OBJECT_METHODS[kind][0]
            found = self._call(method, {kind.id_field: object_id}).get("trunk")
        return self._object(method, kind, found, object_id)

    def replace_object(self, obj: LiveKitObject) -> LiveKitObject:
        """Write ``obj`` whole with ``Update...{replace}``; returns what the server stored."""
        method = _OBJECT_METHODS[obj.kind][1]
        body = {obj.kind.id_field: obj.object_id, "replace": dict(obj.fields)}
        data = self._call(method, body, subject_id=obj.object_id)
        return self._object(method, obj.kind, data, obj.object_id)

    @staticmethod
    def _object(method: str, kind: ObjectKind, data: Any, object_id: str) -> LiveKitObject:
        if not isinstance(data, dict) or data.get(kind.id_field) != object_id:
            raise LiveKitServerError(
                f"LiveKit answered {method} without the {kind.value} {object_id}",
                method=method, status=200, outcome_unknown=True)
        return LiveKitObject(kind, data)

    # ------------------------------------------------------------------ internals

    def _bearer_token(self) -> str:
        now = self._clock()
        with self._token_lock:
            if self._token is None or now >= self._token_renew_at:
                issued = int(now)
                claims = {
                    "iss": self._api_key,
                    "sub": self._api_key,
                    "nbf": issued - NBF_LEEWAY_SECONDS,
                    "exp": issued + self._token_ttl,
                    "sip": {"admin": True},
                }
                self._token = self._signer.encode(
                    json.dumps(claims, separators=(",", ":")).encode(),
                    self._api_secret,
                    algorithm="HS256",
                )
                self._token_renew_at = issued + self._token_ttl / 2
            return self._token

    def _call(
        self, method: str, body: dict[str, Any], *, subject_id: str | None = None
    ) -> dict[str, Any]:
        """POST one Twirp method; return the decoded JSON object or raise LiveKitError.

        ``subject_id`` names the object an update writes, for conflict parsing.
        """
        headers = {
            "Authorization": f"Bearer {self._bearer_token()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        url = f"{self._base_url}{SERVICE_PATH}{method}"
        timeout = fit_timeout(method, self._http.timeout)
        started = time.monotonic()
        try:
            response = self._http.post(
                url, content=json.dumps(body).encode(), headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout)
        except httpx.TransportError as exc:
            error = error_from_transport(method, exc)
            self._log_failure(method, error, started)
            raise error from None
        if not response.is_success:
            error = error_from_response(method, response, subject_id=subject_id)
            self._log_failure(method, error, started)
            raise error
        logger.debug(
            "livekit call ok",
            extra={
                "livekit_method": method,
                "status": response.status_code,
                "duration_ms": round((time.monotonic() - started) * 1000),
            },
        )
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise LiveKitServerError(
                "LiveKit answered with a body that is not a JSON object",
                method=method,
                status=response.status_code,
                outcome_unknown=True,
            )
        return data

    @staticmethod
    def _log_failure(method: str, error: LiveKitError, started: float) -> None:
        LIVEKIT_ERRORS.labels(method, error.code).inc()
        logger.info(
            "livekit call failed",
            extra={
                "livekit_method": method,
                "reason": error.code,
                "status": error.status,
                "twirp_code": error.twirp_code,
                "outcome_unknown": error.outcome_unknown,
                "detail": error.message,
                "duration_ms": round((time.monotonic() - started) * 1000),
            },
        )

    @staticmethod
    def _parse(method: str, model: type[_ModelT], data: Any) -> _ModelT:
        """Validate an answer; errors name fields, never values (answers hold passwords)."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors(include_input=False, include_url=False)[:5]
            )
            raise LiveKitServerError(
                f"LiveKit sent a {model.__name__} this client cannot read ({problems})",
                method=method,
                status=200,
                outcome_unknown=True,
            ) from None

    @staticmethod
    def _filters(**filters: Sequence[str]) -> dict[str, Any]:
        if any(isinstance(value, str) for value in filters.values()):
            raise TypeError("list filters take a sequence of strings, not a single string")
        return {name: list(values) for name, values in filters.items() if values}

    def _list(
        self, method: str, model: type[_ModelT], request: dict[str, Any], id_field: str
    ) -> list[_ModelT]:
        """Follow ``after_id`` pages until one comes back empty or short."""
        results: list[_ModelT] = []
        seen: set[str] = set()
        after_id = ""
        while True:
            page: dict[str, Any] = {"limit": PAGE_LIMIT}
            if after_id:
                page["after_id"] = after_id
            data = self._call(method, {**request, "page": page})
            raw_items = data.get("items") or []
            if not isinstance(raw_items, list):
                raise LiveKitServerError(
                    "LiveKit answered a list call without an items array",
                    method=method,
                    status=200,
                    outcome_unknown=False,
                )
            fresh = 0
            last_id = after_id
            # A trunk_ids filter answers null for ids that do not exist.
            for raw in raw_items:
                if raw is None:
                    continue
                item = self._parse(method, model, raw)
                item_id = str(getattr(item, id_field))
                last_id = item_id or last_id
                if item_id in seen:
                    continue
                seen.add(item_id)
                results.append(item)
                fresh += 1
            if len(raw_items) < PAGE_LIMIT or fresh == 0 or last_id == after_id:
                return results
            after_id = last_id
