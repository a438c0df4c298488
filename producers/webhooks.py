"""CRM signup webhooks: Standard Webhooks verification, source configuration, field mapping.

A source is configured in `TRUNKLINE_WEBHOOK_SOURCES` (JSON):

    {"hubspot": {"secret": "whsec_<base64>", "org_id": "org_1",
                 "default_region": "US",
                 "mapping": {"number": "/contact/phone", "name": "/company/name"}}}

One secret and one organisation per source. Signatures follow Standard Webhooks: the headers
`webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature` (space-separated
`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{raw body}">`), the key being the base64 part of
the secret. The raw bytes are verified, before any parsing.

The default mapping reads the seed's field names from the body's `data` object when it has
one, else from its top level. A source's `mapping` names other places with JSON pointers
(RFC 6901); fields it does not name keep their default place. With `default_region`, a number
without a leading `+` is read as a national number of that region and sent on in E.164.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from producers.keys import valid_org_id

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
DEFAULT_TOLERANCE_SECONDS = 300
MAX_SIGNATURES = 10
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,255}$")

# Contract fields a mapping may fill, as the API spells them.
REQUEST_FIELDS = ("name", "number", "outboundPstn", "authUserName", "authPassword",
                  "agentName", "transport", "allowedAddresses", "roomPrefix", "metadata")


class WebhookConfigError(ValueError):
    """TRUNKLINE_WEBHOOK_SOURCES is malformed; the message says where."""


class SignatureError(Exception):
    """A webhook failed verification; `code` says how (machine slug)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def decode_secret(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX):]
    try:
        # Unpadded base64 too: the Standard Webhooks reference libraries accept it.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {SECRET_PREFIX!r} followed by base64") from None
    if len(key) < 16:
        raise ValueError("must hold at least 16 bytes of key material")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value a sender would put on `body` (used by tests and tools)."""
    mac = hmac.new(decode_secret(secret), f"{webhook_id}.{timestamp}.".encode() + body,
                   hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> str:
    """Check a delivery's signature and freshness; return its webhook id or raise SignatureError."""
    webhook_id = headers.get("webhook-id", "")
    raw_timestamp = headers.get("webhook-timestamp", "")
    raw_signatures = headers.get("webhook-signature", "")
    if not webhook_id or not raw_timestamp or not raw_signatures:
        raise SignatureError("missing_signature", "webhook-id, webhook-timestamp and "
                             "webhook-signature headers are required")
    if not _WEBHOOK_ID.match(webhook_id):
        raise SignatureError("invalid_signature", "webhook-id must be 1-255 visible ASCII "
                             "characters")
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit() or len(raw_timestamp) > 12:
        raise SignatureError("invalid_signature", "webhook-timestamp must be Unix seconds")
    timestamp = int(raw_timestamp)
    if abs(now - timestamp) > tolerance:
        raise SignatureError("stale_webhook", f"webhook-timestamp is more than {tolerance} "
                             "seconds away from now: refused as stale or from the future")
    expected = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body,
                        hashlib.sha256).digest()
    for candidate in raw_signatures.split()[:MAX_SIGNATURES]:
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(given, expected):
            return webhook_id
    raise SignatureError("invalid_signature", "no webhook-signature matches this body")


def resolve_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901: the value at `pointer`, or raise LookupError."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise LookupError(pointer)
    current = document
    for raw_token in pointer[1:].split("/"):
        token = raw_token.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            if token not in current:
                raise LookupError(pointer)
            current = current[token]
        elif isinstance(current, list):
            if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
                raise LookupError(pointer)
            index = int(token)
            if index >= len(current):
                raise LookupError(pointer)
            current = current[index]
        else:
            raise LookupError(pointer)
    return current


def _valid_pointer(pointer: str) -> bool:
    if pointer == "":
        return True
    if not pointer.startswith("/"):
        return False
    return re.search(r"~[^01]|~$", pointer) is None


@dataclass(frozen=True)
class WebhookSource:
    name: str
    key: bytes = field(repr=False)
    org_id: str
    default_region: str | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)

    def extract(self, payload: Any) -> dict[str, Any]:
        """Build a contract request from a CRM payload (missing fields stay missing)."""
        base: Any = payload
        if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
            base = payload["data"]
        request: dict[str, Any] = {}
        for name in REQUEST_FIELDS:
            try:
                if name in self.mapping:
                    value = resolve_pointer(payload, self.mapping[name])
                elif isinstance(base, dict) and name in base:
                    value = base[name]
                else:
                    continue
            except LookupError:
                continue
            request[name] = value
        number = request.get("number")
        if isinstance(number, int) and not isinstance(number, bool):
            number = request["number"] = str(number)
        if self.default_region and isinstance(number, str):
            request["number"] = national_to_e164(number, self.default_region)
        return request


def national_to_e164(number: str, region: str) -> str:
    """A national-format number of `region` in E.164; anything else is returned unchanged."""
    text = number.strip()
    if not text or text.startswith("+") or len(text) > 40:
        return number
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def parse_sources(raw: str) -> dict[str, WebhookSource]:
    """Read TRUNKLINE_WEBHOOK_SOURCES; raise WebhookConfigError naming what is wrong."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WebhookConfigError(f"TRUNKLINE_WEBHOOK_SOURCES is not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise WebhookConfigError("TRUNKLINE_WEBHOOK_SOURCES must be a JSON object of sources")
    return {name: _parse_source(name, spec) for name, spec in data.items()}


def _parse_source(name: str, spec: Any) -> WebhookSource:
    where = f"TRUNKLINE_WEBHOOK_SOURCES[{name!r}]"
    if not _SOURCE_NAME.match(name):
        raise WebhookConfigError(f"{where}: a source name is 1-64 letters, digits, '_', '-'")
    if not isinstance(spec, dict):
        raise WebhookConfigError(f"{where} must be an object")
    unknown = set(spec) - {"secret", "org_id", "default_region", "mapping"}
    if unknown:
        raise WebhookConfigError(f"{where}: unknown keys {sorted(unknown)}")
    secret, org_id = spec.get("secret"), spec.get("org_id")
    if not isinstance(secret, str):
        raise WebhookConfigError(f"{where}.secret is required ({SECRET_PREFIX}<base64>)")
    try:
        key = decode_secret(secret)
    except ValueError as exc:
        raise WebhookConfigError(f"{where}.secret {exc}") from None
    if not isinstance(org_id, str) or not valid_org_id(org_id):
        raise WebhookConfigError(f"{where}.org_id is required: 1-128 letters, digits, "
                                 "'.', '_', ':' or '-'")
    return WebhookSource(name=name, key=key, org_id=org_id,
                         default_region=_parse_region(where, spec.get("default_region")),
                         mapping=_parse_mapping(where, spec.get("mapping")))


def _parse_region(where: str, region: Any) -> str | None:
    if region is None:
        return None
    if not isinstance(region, str) or region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise WebhookConfigError(f"{where}.default_region must be a region code "
                                 "libphonenumber knows, e.g. US or GB")
    return region.upper()


def _parse_mapping(where: str, mapping: Any) -> dict[str, str]:
    mapping = mapping or {}
    if not isinstance(mapping, dict):
        raise WebhookConfigError(f"{where}.mapping must be an object")
    for target, pointer in mapping.items():
        if target not in REQUEST_FIELDS:
            raise WebhookConfigError(f"{where}.mapping: {target!r} is not a request field "
                                     f"({', '.join(REQUEST_FIELDS)})")
        if not isinstance(pointer, str) or not _valid_pointer(pointer):
            raise WebhookConfigError(f"{where}.mapping.{target} must be a JSON pointer "
                                     "such as /contact/phone")
    return dict(mapping)
