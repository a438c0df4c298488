"""An in-memory fake of LiveKit's SIP Twirp API, served through ``httpx.MockTransport``.

It follows ``shared/reference/livekit-sip.md``: Twirp JSON routes and errors, a checked
HS256 bearer token with the ``sip.admin`` grant, server-made ``ST_``/``SDR_`` ids, snake_case
and lowerCamel request fields with unknown ones silently dropped, full snake_case answers,
the inbound number conflict (numbers normalised to their digits), the dispatch-rule conflict
(same trunk, pin, caller and called numbers), no duplicate check on outbound trunks,
``DeleteSIPTrunk`` answering 200 for unknown ids and ``DeleteSIPDispatchRule`` answering
``not_found``, and the list filters of the open-source server (inbound ``numbers`` also
returns wildcard trunks, outbound ``numbers`` is exact, rules by ``trunk_ids`` also return
wildcard rules; everything after ``after_id``, sorted by id, ``limit`` ignored).

Faults are injected per method, in order: an HTTP error answered without touching state,
``httpx.ReadTimeout`` raised *after* the call was applied (executed, response lost), or
``httpx.ConnectError`` raised before it was applied. ``calls`` counts every request per
method, faulted or not; ``log`` keeps the methods in arrival order and ``deletions`` the ids
of objects actually deleted, in order. ``before_apply`` and ``after_apply`` run just before
and just after a call is applied.

The bottom of the module holds the wiring the worker tests share: settings, a vault and
jobs built the way ``producers.client.ProvisioningClient.submit`` builds them.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import fakeredis
import httpx
import jwt

from worker.config import Settings
from worker.contract import parse_request
from worker.livekit import LiveKitSIP
from worker.records import Job, JobState, StoredRequest, new_job_id
from worker.runner import JobRunner
from worker.saga import ProvisioningSaga
from worker.store import JobStore
from worker.vault import Vault

BASE_URL = "http://livekit.fake"
API_KEY = "APIfakekey"
# At least 32 bytes: PyJWT warns about shorter HMAC keys and warnings are errors here.
API_SECRET = "fake-livekit-secret-long-enough-for-hs256"
SERVICE_PATH = "/twirp/livekit.SIP/"

_TWIRP_STATUS = {
    "invalid_argument": 400,
    "malformed": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "failed_precondition": 412,
    "resource_exhausted": 429,
    "internal": 500,
    "unimplemented": 501,
    "unavailable": 503,
}
_STATUS_CODE = {status: code for code, status in reversed(_TWIRP_STATUS.items())}

_CAMEL_RE = re.compile(r"(?<!^)(?=[A-Z])")

_TRANSPORTS = ("SIP_TRANSPORT_AUTO", "SIP_TRANSPORT_UDP", "SIP_TRANSPORT_TCP",
               "SIP_TRANSPORT_TLS")

_INBOUND_LISTS = ("numbers", "allowed_addresses", "allowed_numbers")
_INBOUND_TEXT = ("name", "metadata", "auth_username", "auth_password")
_INBOUND_MAPS = ("headers", "headers_to_attributes", "attributes_to_headers")
_OUTBOUND_LISTS = ("numbers",)
_OUTBOUND_TEXT = ("name", "metadata", "address", "auth_username", "auth_password",
                  "destination_country", "from_host")
_OUTBOUND_MAPS = ("headers", "headers_to_attributes", "attributes_to_headers")
_RULE_LISTS = ("trunk_ids", "inbound_numbers", "numbers")
_RULE_TEXT = ("name", "metadata", "room_preset")
_RULE_KINDS: dict[str, dict[str, Any]] = {
    "dispatch_rule_individual": {"room_prefix": "", "pin": "", "no_randomness": False},
    "dispatch_rule_direct": {"room_name": "", "pin": ""},
    "dispatch_rule_callee": {"room_prefix": "", "pin": "", "randomize": False},
}


class TwirpError(Exception):
    """An error answer: ``{"code", "msg", "meta"}`` with the code's HTTP status."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


@dataclass(frozen=True)
class Fault:
    """One injected failure of one call."""

    kind: Literal["status", "lost", "unreachable"]
    status: int = 500
    code: str = ""
    msg: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def http(cls, status: int, msg: str = "injected failure", *, code: str | None = None,
             headers: Mapping[str, str] | None = None) -> Fault:
        """Answer this HTTP error; the call is not applied."""
        return cls("status", status, code or _STATUS_CODE.get(status, "unknown"), msg,
                   dict(headers or {}))

    @classmethod
    def lost(cls) -> Fault:
        """Apply the call, then raise httpx.ReadTimeout: executed, response lost."""
        return cls("lost")

    @classmethod
    def unreachable(cls) -> Fault:
        """Raise httpx.ConnectError before the call reaches the server."""
        return cls("unreachable")


def normalise_number(number: str) -> str:
    """The server's comparison form: digits only (``+1 (555) 123-4567`` is ``15551234567``)."""
    return "".join(c for c in number if c.isdigit())


def _snake(name: str) -> str:
    return _CAMEL_RE.sub("_", name).lower()


def _snake_keys(value: Any) -> Any:
    """Accept lowerCamel names too, recursively (not inside user-keyed maps)."""
    if isinstance(value, dict):
        return {_snake(k): (v if _snake(k) in ("headers", "attributes", "headers_to_attributes",
                                                "attributes_to_headers") else _snake_keys(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TwirpError("malformed", f"{what}: expected a string")
    return value


def _texts(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TwirpError("malformed", f"{what}: expected a list of strings")
    return list(value)


def _map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _transport(value: Any) -> str:
    if value is None or value == "":
        return _TRANSPORTS[0]
    if isinstance(value, int) and 0 <= value < len(_TRANSPORTS):
        return _TRANSPORTS[value]
    if isinstance(value, str) and value in _TRANSPORTS:
        return value
    raise TwirpError("malformed", "transport: unknown enum value")


def _apply_list_update(current: list[str], update: Any) -> list[str]:
    """``ListUpdate{set|add|remove|clear}`` as the server applies it."""
    if not isinstance(update, dict):
        raise TwirpError("malformed", "expected a ListUpdate")
    if update.get("clear"):
        return []
    if update.get("set"):
        return _texts(update["set"], "set")
    result = [v for v in current if v not in set(_texts(update.get("remove"), "remove"))]
    for item in _texts(update.get("add"), "add"):
        if item not in result:
            result.append(item)
    return result


class FakeLiveKit:
    """LiveKit's SIP service in memory; ``handle`` is the ``httpx.MockTransport`` handler."""

    def __init__(self, *, api_key: str = API_KEY, api_secret: str = API_SECRET) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.inbound: dict[str, dict[str, Any]] = {}
        self.outbound: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.log: list[str] = []
        self.deletions: list[str] = []
        self._faults: dict[str, deque[Fault]] = {}
        # Called with the method name just before / after a call is applied, outside the
        # fake's lock: tests use them to observe overlapping calls or to stop a run mid-call.
        self.before_apply: Callable[[str], None] | None = None
        self.after_apply: Callable[[str], None] | None = None
        self._lock = threading.RLock()
        self._methods = {
            "CreateSIPInboundTrunk": self._create_inbound,
            "CreateSIPOutboundTrunk": self._create_outbound,
            "CreateSIPDispatchRule": self._create_rule,
            "GetSIPInboundTrunk": self._get_inbound,
            "GetSIPOutboundTrunk": self._get_outbound,
            "ListSIPInboundTrunk": self._list_inbound,
            "ListSIPOutboundTrunk": self._list_outbound,
            "ListSIPDispatchRule": self._list_rules,
            "UpdateSIPInboundTrunk": self._update_inbound,
            "UpdateSIPOutboundTrunk": self._update_outbound,
            "UpdateSIPDispatchRule": self._update_rule,
            "DeleteSIPTrunk": self._delete_trunk,
            "DeleteSIPDispatchRule": self._delete_rule,
        }

    # ------------------------------------------------------------------ test controls

    def inject(self, method: str, *faults: Fault) -> None:
        """Queue faults for the next calls of ``method``, one per call, in order."""
        if method not in self._methods:
            raise ValueError(f"unknown method {method}")
        with self._lock:
            self._faults.setdefault(method, deque()).extend(faults)

    def pending_faults(self, method: str) -> int:
        with self._lock:
            return len(self._faults.get(method, ()))

    def client(self) -> tuple[LiveKitSIP, httpx.Client]:
        """A real LiveKitSIP wired to this fake; close the returned httpx.Client after use."""
        http = httpx.Client(transport=httpx.MockTransport(self.handle), base_url=BASE_URL)
        return LiveKitSIP(BASE_URL, self.api_key, self.api_secret, http=http), http

    def list_calls(self) -> int:
        return sum(n for method, n in self.calls.items() if method.startswith("List"))

    def seed_inbound(self, **fields: Any) -> str:
        """Create an inbound trunk directly (no faults, not counted); returns its id."""
        with self._lock:
            return str(self._create_inbound({"trunk": fields})["sip_trunk_id"])

    def seed_outbound(self, **fields: Any) -> str:
        with self._lock:
            return str(self._create_outbound({"trunk": fields})["sip_trunk_id"])

    def seed_rule(self, **fields: Any) -> str:
        with self._lock:
            return str(self._create_rule({"dispatch_rule": fields})["sip_dispatch_rule_id"])

    # ------------------------------------------------------------------ transport

    def handle(self, request: httpx.Request) -> httpx.Response:
        method = self._route(request)
        if isinstance(method, httpx.Response):
            return method
        with self._lock:
            self.calls[method] += 1
            self.log.append(method)
            queue = self._faults.get(method)
            fault = queue.popleft() if queue else None
        if fault is not None and fault.kind == "unreachable":
            raise httpx.ConnectError("injected: connection refused", request=request)
        if fault is not None and fault.kind == "status":
            return _error(fault.code, fault.msg, status=fault.status, headers=fault.headers)
        denied = self._authorise(request)
        if denied is not None:
            return denied
        if self.before_apply is not None:
            self.before_apply(method)
        answer = self._apply(method, request)
        if self.after_apply is not None:
            self.after_apply(method)
        if fault is not None and fault.kind == "lost":
            raise httpx.ReadTimeout("injected: response lost after the call was applied",
                                    request=request)
        return answer

    def _route(self, request: httpx.Request) -> str | httpx.Response:
        """The Twirp method a request names, or the server's bad_route answer."""
        path = request.url.path
        method = path[len(SERVICE_PATH):] if path.startswith(SERVICE_PATH) else ""
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if request.method != "POST" or method not in self._methods:
            return _error("bad_route", f"no handler for path {path!r}")
        if content_type != "application/json":
            return _error("bad_route", f"unexpected Content-Type: {content_type!r}")
        return method

    def _apply(self, method: str, request: httpx.Request) -> httpx.Response:
        try:
            body = json.loads(request.content or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error("malformed", "the json request could not be decoded")
        try:
            with self._lock:
                answer = self._methods[method](_snake_keys(body))
        except TwirpError as exc:
            return _error(exc.code, exc.msg)
        return httpx.Response(200, json=answer)

    def _authorise(self, request: httpx.Request) -> httpx.Response | None:
        """Auth middleware failures are plain-text 401 bodies, as the server sends them."""
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return httpx.Response(401, text="no authorization header")
        try:
            claims = jwt.decode(header[len("Bearer "):], self.api_secret, algorithms=["HS256"],
                                leeway=60, options={"require": ["exp", "nbf"]})
        except jwt.PyJWTError as exc:
            return httpx.Response(401, text=f"invalid token: {type(exc).__name__}")
        if claims.get("iss") != self.api_key:
            return httpx.Response(401, text="invalid API key")
        sip = claims.get("sip")
        if not isinstance(sip, dict) or sip.get("admin") is not True:
            return _error("permission_denied", "permissions denied", status=403)
        return None

    # ------------------------------------------------------------------ inbound trunks

    def _inbound_info(self, raw: Any, trunk_id: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise TwirpError("invalid_argument", "missing trunk")
        info: dict[str, Any] = {"sip_trunk_id": trunk_id}
        for name in _INBOUND_TEXT:
            info[name] = _text(raw.get(name), name)
        for name in _INBOUND_LISTS:
            info[name] = _texts(raw.get(name), name)
        for name in _INBOUND_MAPS:
            info[name] = _map(raw.get(name))
        info.update(include_headers="SIP_NO_HEADERS", ringing_timeout=None,
                    max_call_duration=None, krisp_enabled=bool(raw.get("krisp_enabled")),
                    media_encryption="SIP_MEDIA_ENCRYPT_DISABLE", created_at=None,
                    updated_at=None)
        return info

    def _check_inbound(self, info: dict[str, Any], *, subject: str | None) -> None:
        if not (info["numbers"] or info["allowed_addresses"] or info["auth_username"]):
            raise TwirpError(
                "invalid_argument",
                "for security, one of the fields must be set: AuthUsername+AuthPassword, "
                "AllowedAddresses or Numbers",
            )
        if info["allowed_numbers"]:
            return
        mine = {normalise_number(n) for n in info["numbers"]}
        for other in sorted(self.inbound.values(), key=lambda t: str(t["sip_trunk_id"])):
            if other["sip_trunk_id"] == subject or other["allowed_numbers"]:
                continue
            shared = sorted(mine & {normalise_number(n) for n in other["numbers"]})
            if shared:
                first = subject or "<new>"
                raise TwirpError(
                    "invalid_argument",
                    f'Conflicting inbound SIP Trunks: "{first}" and "{other["sip_trunk_id"]}", '
                    f'using the same number(s) {shared} without AllowedNumbers set',
                )

    def _create_inbound(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("trunk")
        if isinstance(raw, dict) and raw.get("sip_trunk_id"):
            raise TwirpError("invalid_argument", "trunk ID must be empty")
        info = self._inbound_info(raw, _new_id("ST_"))
        self._check_inbound(info, subject=None)
        self.inbound[info["sip_trunk_id"]] = info
        return copy.deepcopy(info)

    def _get_inbound(self, body: dict[str, Any]) -> dict[str, Any]:
        found = self.inbound.get(_text(body.get("sip_trunk_id"), "sip_trunk_id"))
        if found is None:
            raise TwirpError("not_found", "requested sip trunk does not exist")
        return {"trunk": copy.deepcopy(found)}

    def _list_inbound(self, body: dict[str, Any]) -> dict[str, Any]:
        items = self._select(self.inbound, _texts(body.get("trunk_ids"), "trunk_ids"), body)
        numbers = {normalise_number(n) for n in _texts(body.get("numbers"), "numbers")}
        if numbers:
            items = [t for t in items if t is None or not t["numbers"]
                     or numbers & {normalise_number(n) for n in t["numbers"]}]
        return {"items": items}

    def _update_inbound(self, body: dict[str, Any]) -> dict[str, Any]:
        trunk_id = _text(body.get("sip_trunk_id"), "sip_trunk_id")
        current = self.inbound.get(trunk_id)
        if current is None:
            raise TwirpError("not_found", "requested sip trunk does not exist")
        if "replace" in body:
            info = self._inbound_info(body["replace"], trunk_id)
        elif isinstance(body.get("update"), dict):
            info = copy.deepcopy(current)
            _apply_update(info, body["update"], _INBOUND_LISTS, _INBOUND_TEXT)
        else:
            raise TwirpError("invalid_argument", "missing or unsupported action")
        self._check_inbound(info, subject=trunk_id)
        self.inbound[trunk_id] = info
        return copy.deepcopy(info)

    # ------------------------------------------------------------------ outbound trunks

    def _outbound_info(self, raw: Any, trunk_id: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise TwirpError("invalid_argument", "missing trunk")
        info: dict[str, Any] = {"sip_trunk_id": trunk_id}
        for name in _OUTBOUND_TEXT:
            info[name] = _text(raw.get(name), name)
        for name in _OUTBOUND_LISTS:
            info[name] = _texts(raw.get(name), name)
        for name in _OUTBOUND_MAPS:
            info[name] = _map(raw.get(name))
        info.update(transport=_transport(raw.get("transport")), include_headers="SIP_NO_HEADERS",
                    media_encryption="SIP_MEDIA_ENCRYPT_DISABLE", created_at=None,
                    updated_at=None)
        return info

    @staticmethod
    def _check_outbound(info: dict[str, Any]) -> None:
        if not info["address"]:
            raise TwirpError("invalid_argument", "no trunk address specified")
        if not info["numbers"]:
            raise TwirpError("invalid_argument", "no trunk numbers specified")

    def _create_outbound(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("trunk")
        if isinstance(raw, dict) and raw.get("sip_trunk_id"):
            raise TwirpError("invalid_argument", "trunk ID must be empty")
        info = self._outbound_info(raw, _new_id("ST_"))
        self._check_outbound(info)  # no duplicate check: LiveKit has none for outbound
        self.outbound[info["sip_trunk_id"]] = info
        return copy.deepcopy(info)

    def _get_outbound(self, body: dict[str, Any]) -> dict[str, Any]:
        found = self.outbound.get(_text(body.get("sip_trunk_id"), "sip_trunk_id"))
        if found is None:
            raise TwirpError("not_found", "requested sip trunk does not exist")
        return {"trunk": copy.deepcopy(found)}

    def _list_outbound(self, body: dict[str, Any]) -> dict[str, Any]:
        items = self._select(self.outbound, _texts(body.get("trunk_ids"), "trunk_ids"), body)
        numbers = set(_texts(body.get("numbers"), "numbers"))
        if numbers:
            items = [t for t in items if t is None or numbers & set(t["numbers"])]
        return {"items": items}

    def _update_outbound(self, body: dict[str, Any]) -> dict[str, Any]:
        trunk_id = _text(body.get("sip_trunk_id"), "sip_trunk_id")
        current = self.outbound.get(trunk_id)
        if current is None:
            raise TwirpError("not_found", "requested sip trunk does not exist")
        if "replace" in body:
            info = self._outbound_info(body["replace"], trunk_id)
        elif isinstance(body.get("update"), dict):
            info = copy.deepcopy(current)
            _apply_update(info, body["update"], _OUTBOUND_LISTS, _OUTBOUND_TEXT)
            if "transport" in body["update"]:
                info["transport"] = _transport(body["update"]["transport"])
        else:
            raise TwirpError("invalid_argument", "missing or unsupported action")
        self._check_outbound(info)
        self.outbound[trunk_id] = info
        return copy.deepcopy(info)

    def _delete_trunk(self, body: dict[str, Any]) -> dict[str, Any]:
        trunk_id = _text(body.get("sip_trunk_id"), "sip_trunk_id")
        # Unknown ids answer 200, and a trunk's dispatch rules are left in place.
        for table in (self.inbound, self.outbound):
            if table.pop(trunk_id, None) is not None:
                self.deletions.append(trunk_id)
        return {"sip_trunk_id": trunk_id}

    # ------------------------------------------------------------------ dispatch rules

    def _rule_info(self, raw: Any, rule_id: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise TwirpError("invalid_argument", "missing rule")
        info: dict[str, Any] = {"sip_dispatch_rule_id": rule_id}
        spec = raw.get("rule")
        if not isinstance(spec, dict):
            raise TwirpError("invalid_argument", "missing rule")
        kinds = [k for k in _RULE_KINDS if isinstance(spec.get(k), dict)]
        if len(kinds) != 1:
            raise TwirpError("invalid_argument", "unsupported dispatch rule kind")
        member = spec[kinds[0]]
        rule: dict[str, Any] = dict.fromkeys(_RULE_KINDS, None)
        rule[kinds[0]] = {name: type(default)(member.get(name) or default)
                          for name, default in _RULE_KINDS[kinds[0]].items()}
        info["rule"] = rule
        for name in _RULE_LISTS:
            info[name] = _texts(raw.get(name), name)
        for name in _RULE_TEXT:
            info[name] = _text(raw.get(name), name)
        info["hide_phone_number"] = bool(raw.get("hide_phone_number"))
        info["attributes"] = _map(raw.get("attributes"))
        info["krisp_enabled"] = bool(raw.get("krisp_enabled"))
        info["media_encryption"] = "SIP_MEDIA_ENCRYPT_DISABLE"
        info["room_config"] = _room_config(raw.get("room_config"))
        return info

    def _check_rule(self, info: dict[str, Any], *, subject: str | None) -> None:
        mine = _rule_keys(info)
        for other in sorted(self.rules.values(), key=lambda r: str(r["sip_dispatch_rule_id"])):
            if other["sip_dispatch_rule_id"] == subject:
                continue
            if mine & _rule_keys(other):
                raise TwirpError(
                    "invalid_argument",
                    "Dispatch rule for the same trunk, inbound number, number, and PIN "
                    "combination already exists in dispatch rule "
                    f'"{other["sip_dispatch_rule_id"]}" "{other["name"]}"',
                )

    def _create_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("dispatch_rule")
        if isinstance(raw, dict) and raw.get("sip_dispatch_rule_id"):
            raise TwirpError("invalid_argument", "rule ID must be empty")
        info = self._rule_info(raw, _new_id("SDR_"))
        self._check_rule(info, subject=None)  # trunk ids are not checked for existence
        self.rules[info["sip_dispatch_rule_id"]] = info
        return copy.deepcopy(info)

    def _list_rules(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = _texts(body.get("dispatch_rule_ids"), "dispatch_rule_ids")
        items = self._select(self.rules, ids, body)
        trunk_ids = set(_texts(body.get("trunk_ids"), "trunk_ids"))
        if trunk_ids:
            items = [r for r in items if r is None or not r["trunk_ids"]
                     or trunk_ids & set(r["trunk_ids"])]
        return {"items": items}

    def _update_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        rule_id = _text(body.get("sip_dispatch_rule_id"), "sip_dispatch_rule_id")
        current = self.rules.get(rule_id)
        if current is None:
            raise TwirpError("not_found", "requested sip dispatch rule does not exist")
        if "replace" in body:
            info = self._rule_info(body["replace"], rule_id)
        elif isinstance(body.get("update"), dict):
            info = copy.deepcopy(current)
            _apply_update(info, body["update"], ("trunk_ids",), ("name", "metadata"))
        else:
            raise TwirpError("invalid_argument", "missing or unsupported action")
        self._check_rule(info, subject=rule_id)
        self.rules[rule_id] = info
        return copy.deepcopy(info)

    def _delete_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        rule_id = _text(body.get("sip_dispatch_rule_id"), "sip_dispatch_rule_id")
        found = self.rules.pop(rule_id, None)
        if found is None:
            raise TwirpError("not_found", "requested sip dispatch rule does not exist")
        self.deletions.append(rule_id)
        return found

    # ------------------------------------------------------------------ shared

    @staticmethod
    def _select(table: dict[str, dict[str, Any]], ids: list[str],
                body: dict[str, Any]) -> list[dict[str, Any] | None]:
        """By ids: one entry per id (null when unknown). Else all after ``after_id``, by id."""
        if ids:
            return [copy.deepcopy(table[i]) if i in table else None for i in ids]
        page = body.get("page")
        after = _text(page.get("after_id"), "after_id") if isinstance(page, dict) else ""
        return [copy.deepcopy(table[i]) for i in sorted(table) if i > after]


def _apply_update(info: dict[str, Any], update: dict[str, Any], lists: Iterable[str],
                  texts: Iterable[str]) -> None:
    for name in lists:
        if name in update:
            info[name] = _apply_list_update(info[name], update[name])
    for name in texts:
        if update.get(name) is not None:
            info[name] = _text(update[name], name)


def _room_config(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    agents = raw.get("agents") or []
    if not isinstance(agents, list):
        raise TwirpError("malformed", "room_config.agents: expected a list")
    return {
        "name": _text(raw.get("name"), "room_config.name"),
        "empty_timeout": 0,
        "departure_timeout": 0,
        "max_participants": 0,
        "metadata": _text(raw.get("metadata"), "room_config.metadata"),
        "egress": None,
        "min_playout_delay": 0,
        "max_playout_delay": 0,
        "sync_streams": False,
        "agents": [
            {"agent_name": _text(a.get("agent_name"), "agent_name"),
             "metadata": _text(a.get("metadata"), "metadata")}
            for a in agents if isinstance(a, dict)
        ],
    }


def _rule_keys(info: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """What two rules must not share: (trunk, pin, caller number, called number)."""
    member = next(m for m in info["rule"].values() if m is not None)
    pin = str(member.get("pin", ""))
    return {
        (trunk, pin, caller, called)
        for trunk in info["trunk_ids"] or [""]
        for caller in info["inbound_numbers"] or [""]
        for called in info["numbers"] or [""]
    }


def _new_id(prefix: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(12))


def _error(code: str, msg: str, *, status: int | None = None,
           headers: Mapping[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status or _TWIRP_STATUS.get(code, 500),
                          json={"code": code, "msg": msg, "meta": {}},
                          headers=dict(headers or {}))


# ---------------------------------------------------------------------- worker test wiring

NUMBER = "+15551234567"
PASSWORD = "Canary-Trunk-Pw-51c9"
ORG = "org_acme"


def settings(**overrides: Any) -> Settings:
    """Small timings: a 60 s visibility timeout gives a 36 s lease and a 30 s backoff cap."""
    values: dict[str, Any] = {
        "livekit_api_key": API_KEY,
        "livekit_api_secret": API_SECRET,
        "secret_keys": (Vault.generate_key(),),
        "visibility_timeout": 60,
        "max_attempts": 3,
        "backoff_base": 1.0,
        "backoff_cap": 20.0,
        "livekit_timeout": 2.0,
        "results_maxlen": 1000,
    }
    values.update(overrides)
    return Settings(**values)


def request_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Acme main line",
        "number": NUMBER,
        "outboundPstn": "sip.provider.example:5060",
        "authUserName": "acme-user",
        "authPassword": PASSWORD,
        "transport": "tcp",
        "roomPrefix": "acme-",
    }
    data.update(overrides)
    return data


def build_job(vault: Vault, *, org_id: str = ORG, idempotency_key: str | None = None,
              state: JobState = JobState.QUEUED, **request: Any) -> Job:
    """A job as ProvisioningClient.submit builds it (validated, password sealed)."""
    parsed = parse_request(request_data(**request))
    return Job(
        job_id=new_job_id(),
        org_id=org_id,
        number=parsed.number,
        request=StoredRequest.seal(parsed, vault),
        request_fingerprint=vault.fingerprint(parsed.fingerprint_material()),
        idempotency_key=idempotency_key,
        state=state,
    )


def submit_job(store: JobStore, vault: Vault, *, deadline: float | None = None,
               **job: Any) -> Job:
    """Build a job and store it as a producer does; returns the stored job."""
    built = build_job(vault, **job)
    job_id, _ = store.create(built, deadline=time.time() + 30 if deadline is None else deadline,
                             idempotency_key=built.idempotency_key)
    stored = store.get(job_id)
    assert stored is not None
    return stored


class Harness:
    """One test's world: fakeredis, the job store, the fake LiveKit and a real saga on it."""

    def __init__(self, **setting_overrides: Any) -> None:
        self.settings = settings(**setting_overrides)
        self.vault = Vault(self.settings.secret_keys)
        self.redis = fakeredis.FakeRedis()
        self.store = JobStore(self.redis, results_maxlen=self.settings.results_maxlen)
        self.fake = FakeLiveKit()
        self.livekit, self._http = self.fake.client()
        self.saga = ProvisioningSaga(self.livekit, self.store, self.vault)

    def close(self) -> None:
        self.saga.close()
        self._http.close()
        self.redis.close()

    def submit(self, **job: Any) -> Job:
        return submit_job(self.store, self.vault, **job)

    def reload(self, job: Job) -> Job:
        fresh = self.store.get(job.job_id)
        assert fresh is not None
        return fresh

    def lock(self, job: Job) -> str:
        """Take the job's number lock as a run of it would; returns the token."""
        token = f"{job.job_id}:{secrets.token_hex(8)}"
        assert self.store.acquire_number_lock(job.number, token,
                                              self.settings.lease_seconds)
        return token

    def checkpoint(self, token: str) -> Callable[[Job], None]:
        def save(job: Job) -> None:
            self.store.save(job, token)

        return save

    def runner(self, *, rand: Callable[[], float] = lambda: 0.5) -> JobRunner:
        return JobRunner(self.store, self.saga, self.settings, rand=rand)
