"""The request contract shared by every producer and the worker.

Field names follow the seed API (`createSipTrunkDispatch`): camelCase on the wire, snake_case
in Python; both spellings are accepted, anything else is refused by name, because LiveKit
silently drops misspelled fields and we would rather say so than provision half a config.
Validation reports every field error at once.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from enum import StrEnum
from typing import Any

import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from worker.gateway_policy import GatewayPolicy

DEFAULT_GATEWAY_POLICY = GatewayPolicy()
MAX_METADATA_BYTES = 2048
# Nesting and key counts are bounded as well as size: a few hundred bytes of nested lists are
# valid JSON that pydantic's JSON parser (and Redis's cjson) refuse to read back past their
# recursion limits, so such a record, once stored, could never be loaded again.
MAX_METADATA_DEPTH = 8
MAX_METADATA_KEYS = 64  # object keys, counted over the whole value
# Redis's cjson and most JSON consumers hold numbers as 64-bit values.
_METADATA_INT_RANGE = range(-(2**63), 2**63)

_NUMBER_FORMATTING = re.compile(r"[\s().\-]")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ROOM_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# RFC 3261's `user` characters less those that a SIP stack or a provider's digest parser may
# read as syntax (`"` and `\` in the quoted username, `,` between digest parameters, `:` in
# HA1 = username:realm:password, `;`, `?`, `/`): carried verbatim, quoting needs no escapes.
_DIGEST_USERNAME = re.compile(r"^[A-Za-z0-9._~!$&'()*+=%@-]{1,128}$")
_FORBIDDEN_IN_ADDRESS = ("sip:", "sips:", "@", ";", "transport=")


class Transport(StrEnum):
    AUTO = "auto"
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


class FieldError(BaseModel):
    field: str
    message: str
    code: str


class InvalidRequest(ValueError):
    """A request failed validation; `errors` names every offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
        super().__init__(f"invalid request: {summary}")


def canonical_number(raw: str, *, strict: bool = False) -> str:
    """Return the E.164 form of `raw`, or raise ValueError saying what is wrong with it."""
    text = raw.strip()
    if not text.startswith("+"):
        raise ValueError(
            "must be in E.164 format: a '+' then the country code and number, e.g. +15551234567"
        )
    digits = _NUMBER_FORMATTING.sub("", text[1:])
    if not digits.isdigit() or not digits.isascii():
        raise ValueError("may contain only digits after the '+' (spaces, dashes, dots and "
                         "parentheses are ignored), e.g. +15551234567")
    if not 2 <= len(digits) <= 15:
        raise ValueError("must have between 2 and 15 digits after the '+' (E.164)")
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"is not a phone number libphonenumber can parse ({exc._msg})") from None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        raise ValueError("is too short to dial from outside its area: give the full number "
                         "with country and area code")
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        explanation = {
            phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "has an unknown country code",
            phonenumbers.ValidationResult.TOO_SHORT: "is too short for its country",
            phonenumbers.ValidationResult.TOO_LONG: "is too long for its country",
            phonenumbers.ValidationResult.INVALID_LENGTH: "has an impossible length there",
        }.get(reason, "is not a possible phone number")
        raise ValueError(explanation)
    if strict and not phonenumbers.is_valid_number(parsed):
        raise ValueError("is not an assigned number range in its country (strict validation is "
                         "on: TRUNKLINE_STRICT_NUMBERS)")
    formatted = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    # Degenerate inputs (e.g. a national number of only zeros) format to a different number
    # than they parse from; such a string cannot be one canonical identity for LiveKit.
    reparsed = phonenumbers.parse(formatted, None)
    if phonenumbers.format_number(reparsed, phonenumbers.PhoneNumberFormat.E164) != formatted:
        raise ValueError("is not a number E.164 can represent unambiguously")
    return formatted


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise ValueError("has an unclosed '[' around an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("may only have ':port' after ']'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("has an invalid IPv6 address in brackets") from None
        return host, rest[1:] if rest else None
    if text.count(":") > 1:
        raise ValueError("must put an IPv6 address in brackets, e.g. [2001:db8::1]:5060")
    host, _, port = text.partition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError(
                "is not a valid hostname or IPv4 address (letters, digits, dashes and dots)"
            ) from None
    return host, port if ":" in text else None


def validate_gateway_address(raw: str, policy: GatewayPolicy | None = None) -> str:
    """A SIP provider gateway: hostname or IP, optional port; no URI syntax; not a target
    inside the platform (`worker.gateway_policy`)."""
    text = raw.strip()
    lowered = text.lower()
    for token in _FORBIDDEN_IN_ADDRESS:
        if token in lowered:
            raise ValueError(
                f"must be a bare hostname or IP with an optional port, without {token!r} "
                "(e.g. sip.gateway.com or 203.0.113.5:5060)"
            )
    if not text or any(c.isspace() for c in text):
        raise ValueError("must be a hostname or IP with an optional port, without spaces")
    if len(text) > 260:
        raise ValueError("is longer than 260 characters")
    host, port = _split_host_port(text)
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("has a port that is not a number from 1 to 65535")
    (policy or DEFAULT_GATEWAY_POLICY).check(host)
    return text


class ProvisionRequest(BaseModel):
    """One phone number's trunk setup, as a producer submits it."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
    )

    name: str = Field(min_length=1, max_length=200)
    number: str = Field(min_length=1, max_length=40)
    outbound_pstn: str = Field(alias="outboundPstn", min_length=1, max_length=260)
    auth_user_name: str = Field(alias="authUserName", min_length=1, max_length=128)
    auth_password: SecretStr = Field(alias="authPassword", min_length=1, max_length=128)
    agent_name: str | None = Field(default=None, alias="agentName", max_length=128)
    transport: Transport = Transport.AUTO
    allowed_addresses: tuple[str, ...] = Field(
        default=(), alias="allowedAddresses", max_length=32
    )
    room_prefix: str = Field(default="call-", alias="roomPrefix", max_length=64)
    metadata: dict[str, Any] | None = None

    # Surrounding whitespace is dropped from identifiers, never from the password: a
    # silently changed credential would fail at the provider, far from its cause.
    @field_validator("name", "number", "outbound_pstn", "auth_user_name", "agent_name",
                     "room_prefix", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("number")
    @classmethod
    def _number(cls, value: str, info: ValidationInfo) -> str:
        strict = bool(info.context and info.context.get("strict_numbers"))
        return canonical_number(value, strict=strict)

    @field_validator("outbound_pstn")
    @classmethod
    def _gateway(cls, value: str, info: ValidationInfo) -> str:
        policy = info.context.get("gateway_policy") if info.context else None
        return validate_gateway_address(value, policy)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # CR, LF, NUL and escape sequences would reach LiveKit (and its logs) verbatim.
        if any(not c.isprintable() for c in value):
            raise ValueError("may not contain control characters (CR, LF, NUL, escapes) or "
                             "invalid Unicode")
        return value

    @field_validator("auth_user_name")
    @classmethod
    def _username(cls, value: str) -> str:
        if any(not c.isprintable() or c.isspace() for c in value):
            raise ValueError("may not contain spaces or control characters")
        if not _DIGEST_USERNAME.match(value):
            raise ValueError("may contain only letters, digits and . _ ~ ! $ & ' ( ) * + = % "
                             "@ - (it is sent inside a SIP digest header, where quotes, "
                             "backslashes, commas, colons and semicolons have a meaning)")
        return value

    @field_validator("auth_password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        if any(not c.isprintable() for c in value.get_secret_value()):
            raise ValueError("may not contain control characters")
        return value

    @field_validator("agent_name")
    @classmethod
    def _agent(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not _AGENT_NAME.match(value):
            raise ValueError("must start with a letter or digit and contain only letters, "
                             "digits, '.', '_' and '-' (at most 128)")
        return value

    @field_validator("transport", mode="before")
    @classmethod
    def _transport(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("allowed_addresses")
    @classmethod
    def _allowed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        normalised: list[str] = []
        for index, item in enumerate(value):
            try:
                network = ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"item {index} ({item[:64]!r}) is not an IP address or CIDR block"
                ) from None
            text = str(network.network_address) if network.num_addresses == 1 else str(network)
            if text not in normalised:
                normalised.append(text)
        return tuple(normalised)

    @field_validator("room_prefix")
    @classmethod
    def _room_prefix(cls, value: str) -> str:
        if not _ROOM_PREFIX.match(value):
            raise ValueError("must be 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        keys = _check_metadata_value(value, depth=1)
        if keys > MAX_METADATA_KEYS:
            raise ValueError(f"may have at most {MAX_METADATA_KEYS} keys in all (has {keys})")
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError("must hold only JSON values (objects, arrays, strings, "
                             "numbers, booleans, null)") from None
        if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
            raise ValueError(f"must serialise to at most {MAX_METADATA_BYTES} bytes of JSON")
        return value

    def fingerprint_material(self) -> dict[str, Any]:
        """Everything that defines the request, password included (the caller must HMAC it)."""
        data = self.model_dump(mode="json", by_alias=True)
        data["authPassword"] = self.auth_password.get_secret_value()
        return data


def _check_metadata_value(value: Any, *, depth: int) -> int:
    """Raise ValueError for what cannot round-trip through a stored record; returns the
    number of object keys under `value` (an object or array at `depth`, the top being 1)."""
    if isinstance(value, list | tuple | dict) and depth > MAX_METADATA_DEPTH:
        raise ValueError(f"may nest objects and arrays at most {MAX_METADATA_DEPTH} deep")
    if isinstance(value, str):
        _check_text(value)
        return 0
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        if value not in _METADATA_INT_RANGE:
            raise ValueError("may hold integers of at most 64 bits")
        return 0
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("may not hold NaN or infinite numbers (they are not JSON)")
        return 0
    if isinstance(value, list | tuple):
        return sum(_check_metadata_value(item, depth=depth + 1) for item in value)
    if isinstance(value, dict):
        count = len(value)
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("may only have string keys")
            _check_text(key)
            count += _check_metadata_value(item, depth=depth + 1)
        return count
    raise ValueError("must hold only JSON values (objects, arrays, strings, numbers, "
                     "booleans, null)")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (`"\ud800"` is valid JSON text) is not Unicode text.
        raise ValueError("may hold only valid Unicode text (no lone surrogates)") from None


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ".".join(parts) or "body"


def _message(error: Any) -> str:
    kind = error["type"]
    if kind in ("too_short", "too_long") and error.get("ctx", {}).get("field_type") == "Value":
        kind = "string_" + kind  # SecretStr counts "items" of a "Value"; word it as a string
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field (check its spelling)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {error['ctx']['max_length']} characters"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    return str(error["msg"])


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Flatten pydantic's errors into one message per field, named as the API spells it."""
    errors: list[FieldError] = []
    for error in exc.errors(include_input=False, include_url=False):
        errors.append(
            FieldError(field=_field_name(error["loc"]), message=_message(error), code=error["type"])
        )
    return errors


def parse_request(data: Any, *, strict_numbers: bool = False,
                  gateway_policy: GatewayPolicy | None = None) -> ProvisionRequest:
    """Validate a producer's request; raise InvalidRequest naming every bad field."""
    if not isinstance(data, dict):
        raise InvalidRequest([FieldError(field="body", message="must be a JSON object",
                                         code="type_error")])
    try:
        return ProvisionRequest.model_validate(data, context={
            "strict_numbers": strict_numbers, "gateway_policy": gateway_policy})
    except ValidationError as exc:
        raise InvalidRequest(field_errors(exc)) from None


# Valid stand-ins for the fields an update leaves out: the patch is validated by the same
# model as a full request, so the rules cannot drift apart, and only patched fields can fail.
# The number must pass strict validation too (TRUNKLINE_STRICT_NUMBERS), so not a 555 one.
_PLACEHOLDER = {
    "name": "unchanged",
    "number": "+14155552671",
    "outboundPstn": "unchanged.invalid",
    "authUserName": "unchanged",
    "authPassword": "unchanged",
}


class ChangeRequest(BaseModel):
    """A validated update: `values` holds every field, `fields` the ones the producer set."""

    model_config = ConfigDict(frozen=True)

    values: ProvisionRequest
    fields: frozenset[str]


def parse_change(data: Any, *, strict_numbers: bool = False,
                 gateway_policy: GatewayPolicy | None = None) -> ChangeRequest:
    """Validate an update (any subset of the request's fields except `number`)."""
    if not isinstance(data, dict):
        raise InvalidRequest([FieldError(field="body", message="must be a JSON object",
                                         code="type_error")])
    alias_of: dict[str, str] = {
        name: (info.alias or name) for name, info in ProvisionRequest.model_fields.items()
    }
    name_of = {alias: name for name, alias in alias_of.items()}
    patch: dict[str, Any] = {}
    errors: list[FieldError] = []
    for key, value in data.items():
        spelling = alias_of.get(str(key), str(key))
        if spelling in patch:
            # Both spellings of one field: refused, as a full request refuses them.
            errors.append(FieldError(field=str(key), code="duplicate",
                                     message=f"is the same field as {spelling}; give it once"))
            continue
        patch[spelling] = value
    if "number" in patch:
        errors.append(FieldError(
            field="number", code="immutable",
            message="cannot be changed: release the number and set the new one up instead"))
    if not patch:
        errors.append(FieldError(field="body", code="empty", message="names no field to change"))
    try:
        values = ProvisionRequest.model_validate(
            {**_PLACEHOLDER, **patch, "number": _PLACEHOLDER["number"]},
            context={"strict_numbers": strict_numbers, "gateway_policy": gateway_policy},
        )
    except ValidationError as exc:
        errors.extend(field_errors(exc))
    if errors:
        raise InvalidRequest(errors)
    return ChangeRequest(values=values, fields=frozenset(name_of.get(k, k) for k in patch))
