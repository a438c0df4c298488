"""Unit tests for worker.contract: the request every producer submits and the worker trusts."""

from __future__ import annotations

import re
import traceback
from typing import Any

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.contract import (
    MAX_METADATA_BYTES,
    MAX_METADATA_KEYS,
    FieldError,
    InvalidRequest,
    ProvisionRequest,
    Transport,
    canonical_number,
    field_errors,
    parse_change,
    parse_request,
    validate_gateway_address,
)
from worker.gateway_policy import GatewayPolicy

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
CANARY = "Canary-Pw-7f3b9c1d"
DROP = object()  # marks a field to remove from the seed body

SEED_BODY: dict[str, Any] = {
    "name": "Main Office SIP Trunk",
    "number": "+15551234567",
    "outboundPstn": "sip.gateway.com",
    "authUserName": "sip_user",
    "authPassword": "sip_password",
}


def body(**changes: Any) -> dict[str, Any]:
    """The seed's example body with some fields replaced (or removed with DROP)."""
    data = dict(SEED_BODY)
    for key, value in changes.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def refused(data: Any, *, strict_numbers: bool = False) -> list[FieldError]:
    """Parse `data`, expecting InvalidRequest; return its field errors."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(data, strict_numbers=strict_numbers)
    assert info.value.errors, "InvalidRequest must name at least one field"
    return info.value.errors


def fields_of(errors: list[FieldError]) -> list[str]:
    return [e.field for e in errors]


# --------------------------------------------------------------------------- the seed example


def test_seed_example_passes_and_normalises() -> None:
    """The seed's documented example body is accepted and filled with the documented defaults."""
    request = parse_request(dict(SEED_BODY))
    assert request.name == "Main Office SIP Trunk"
    assert request.number == "+15551234567"
    assert request.outbound_pstn == "sip.gateway.com"
    assert request.auth_user_name == "sip_user"
    assert request.auth_password.get_secret_value() == "sip_password"
    assert request.agent_name is None
    assert request.transport is Transport.AUTO
    assert request.allowed_addresses == ()
    assert request.room_prefix == "call-"
    assert request.metadata is None


def test_parsed_request_is_frozen() -> None:
    """A parsed request cannot be changed after validation."""
    request = parse_request(dict(SEED_BODY))
    with pytest.raises(ValidationError):
        request.number = "+14155552671"  # type: ignore[misc]  # proving the model is frozen


def test_body_must_be_an_object() -> None:
    """A non-object body is refused as a whole, under the field name `body`."""
    errors = refused(["not", "an", "object"])
    assert fields_of(errors) == ["body"]
    assert errors[0].message == "must be a JSON object"


# --------------------------------------------------------------------------- number


def test_number_seed_example_passes() -> None:
    """+15551234567 (the seed's own example) is a possible number and passes unchanged."""
    assert parse_request(body(number="+15551234567")).number == "+15551234567"


def test_number_local_only_is_refused() -> None:
    """+15550100 is IS_POSSIBLE_LOCAL_ONLY and is refused with a message saying so."""
    parsed = phonenumbers.parse("+15550100", None)
    assert (
        phonenumbers.is_possible_number_with_reason(parsed)
        == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY
    )
    errors = refused(body(number="+15550100"))
    assert fields_of(errors) == ["number"]
    assert "too short to dial from outside its area" in errors[0].message


def test_number_without_plus_is_refused() -> None:
    """15551234567 (no leading '+') is refused with an E.164 hint."""
    errors = refused(body(number="15551234567"))
    assert fields_of(errors) == ["number"]
    assert "E.164" in errors[0].message


@pytest.mark.parametrize("raw", ["+1555CALLNOW", "+1-800-FLOWERS", "+1555123456x7", "+١٥٥٥١٢٣٤٥٦٧"])
def test_number_with_letters_or_foreign_digits_is_refused(raw: str) -> None:
    """Vanity letters, extensions and non-ASCII digits are refused, not translated."""
    errors = refused(body(number=raw))
    assert fields_of(errors) == ["number"]
    assert "only digits" in errors[0].message


@pytest.mark.parametrize(
    "raw", ["+1 (555) 123-4567", "+1.555.123.4567", "  +15551234567  ", "+1 555 123 4567"]
)
def test_number_formatting_normalises_to_e164(raw: str) -> None:
    """Spaces, dashes, dots and parentheses are dropped and the result is canonical E.164."""
    assert parse_request(body(number=raw)).number == "+15551234567"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1555123456789012", "between 2 and 15 digits"),  # 16 digits: longer than E.164
        ("+1", "between 2 and 15 digits"),
        ("+1234", "too short"),
        ("+155512345678", "too long"),
    ],
)
def test_number_too_long_or_too_short_is_refused(raw: str, expected: str) -> None:
    """Numbers outside E.164's or their country's length are refused with a length message."""
    errors = refused(body(number=raw))
    assert fields_of(errors) == ["number"]
    assert expected in errors[0].message


def test_number_must_be_a_string() -> None:
    """A JSON number is not silently converted into a phone number."""
    assert fields_of(refused(body(number=15551234567))) == ["number"]


def test_strict_numbers_refuses_fictional_555_number() -> None:
    """With strict_numbers the seed's 555 number is refused: it is possible but not valid."""
    assert not phonenumbers.is_valid_number(phonenumbers.parse("+15551234567", None))
    errors = refused(body(number="+15551234567"), strict_numbers=True)
    assert fields_of(errors) == ["number"]
    assert "strict" in errors[0].message


def test_strict_numbers_accepts_a_valid_number() -> None:
    """With strict_numbers a number libphonenumber calls valid (+14155552671) passes."""
    assert phonenumbers.is_valid_number(phonenumbers.parse("+14155552671", None))
    request = parse_request(body(number="+1 415 555 2671"), strict_numbers=True)
    assert request.number == "+14155552671"


def test_canonical_number_is_lenient_unless_strict() -> None:
    """canonical_number accepts a possible-but-invalid number only when strict is off."""
    assert canonical_number("+15551234567") == "+15551234567"
    with pytest.raises(ValueError, match="strict"):
        canonical_number("+15551234567", strict=True)


_NUMBER_LIKE = st.one_of(
    st.text(max_size=45),
    st.builds(lambda rest: "+" + rest, st.text(alphabet="0123456789 ()-.", max_size=30)),
    st.from_regex(r"\+[1-9][0-9]{1,14}", fullmatch=True),
)


@settings(max_examples=300, database=None, deadline=None)
@given(_NUMBER_LIKE)
def test_accepted_numbers_are_e164_fixed_points(raw: str) -> None:
    """Whatever `number` parse_request accepts comes back as E.164, and re-parsing keeps it."""
    try:
        request = parse_request(body(number=raw))
    except InvalidRequest as exc:
        assert fields_of(exc.errors) == ["number"]
        return
    assert E164.match(request.number), request.number
    assert parse_request(body(number=request.number)).number == request.number


# --------------------------------------------------------------------------- outboundPstn


@pytest.mark.parametrize(
    "address",
    [
        "sip.gateway.com",
        "sip.gateway.com:5060",
        "203.0.113.5",
        "203.0.113.5:5060",
        "[2001:db8::1]",
        "[2001:db8::1]:5061",
        "gateway",
        "sip.gateway.com.",
    ],
)
def test_gateway_accepts_host_or_ip_with_optional_port(address: str) -> None:
    """Bare hostnames, IPv4 and bracketed IPv6, each with an optional port, pass unchanged."""
    assert parse_request(body(outboundPstn=address)).outbound_pstn == address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("sip:user@host", "without 'sip:'"),
        ("sips:host", "without 'sips:'"),
        ("SIP:host", "without 'sip:'"),
        ("user@host", "without '@'"),
        ("host;transport=tcp", "without ';'"),
        ("transport=udp", "without 'transport='"),
        ("host name", "without spaces"),
        ("host\tname", "without spaces"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("host:99999", "port"),
        ("host:0", "port"),
        ("host:", "port"),
        ("host:http", "port"),
        ("sip.gateway.com:٥٠٦٠", "port"),  # Arabic-Indic digits: int() would accept them
        ("host:²", "port"),
        ("-bad-.com", "not a valid hostname"),
        ("bad_host.com", "not a valid hostname"),
        ("a..b", "not a valid hostname"),
        ("2001:db8::1", "brackets"),
        ("[2001:db8::1", "unclosed"),
        ("[not-ipv6]:5060", "invalid IPv6"),
        ("[2001:db8::1]5060", "':port'"),
        ("x" * 261, "at most 260"),
    ],
)
def test_gateway_refuses_uri_syntax_and_junk(address: str, expected: str) -> None:
    """SIP URI pieces, spaces, bad hosts and bad ports are refused with a reason."""
    errors = refused(body(outboundPstn=address))
    assert fields_of(errors) == ["outboundPstn"]
    assert expected in errors[0].message


@settings(max_examples=300, database=None, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.text(alphabet="abc019.-:[]@;= \t", max_size=40),
        st.builds("{}:{}".format, st.sampled_from(["h.com", "[::1]", "1.2.3.4"]), st.text()),
    )
)
def test_gateway_arbitrary_text_only_raises_invalid_request(address: str) -> None:
    """Any text as outboundPstn is either accepted as a bare host[:port] or InvalidRequest."""
    try:
        request = parse_request(body(outboundPstn=address))
    except InvalidRequest as exc:
        assert fields_of(exc.errors) == ["outboundPstn"]
        return
    accepted = request.outbound_pstn
    assert accepted and accepted.isascii()
    assert not any(c.isspace() for c in accepted)
    assert not any(token in accepted.lower() for token in ("sip:", "@", ";", "transport="))


# --------------------------------------------------------------------------- credentials, name


@pytest.mark.parametrize("field", ["name", "authUserName", "authPassword"])
@pytest.mark.parametrize("value", ["", "   "])
def test_required_strings_must_not_be_empty(field: str, value: str) -> None:
    """name and both credentials refuse empty and blank values with 'must not be empty'."""
    errors = refused(body(**{field: value}))
    assert fields_of(errors) == [field]
    assert errors[0].message == "must not be empty"


@pytest.mark.parametrize(
    ("field", "limit"), [("name", 200), ("authUserName", 128), ("authPassword", 128)]
)
def test_required_strings_are_bounded(field: str, limit: int) -> None:
    """name and both credentials accept `limit` characters and refuse one more."""
    parse_request(body(**{field: "x" * limit}))
    errors = refused(body(**{field: "x" * (limit + 1)}))
    assert fields_of(errors) == [field]
    assert errors[0].message == f"must be at most {limit} characters"


@pytest.mark.parametrize("username", ["sip user", "sip\tuser", "sip\x00user"])
def test_username_refuses_spaces_and_control_characters(username: str) -> None:
    """authUserName may not contain whitespace or control characters."""
    errors = refused(body(authUserName=username))
    assert fields_of(errors) == ["authUserName"]


def test_password_refuses_control_characters() -> None:
    """authPassword may not contain control characters."""
    errors = refused(body(authPassword="pass\x07word"))
    assert fields_of(errors) == ["authPassword"]
    assert "control characters" in errors[0].message


@pytest.mark.parametrize(
    "field", ["name", "number", "outboundPstn", "authUserName", "authPassword"]
)
def test_missing_required_field_is_named(field: str) -> None:
    """Leaving out any required field is refused with that field named 'is required'."""
    errors = refused(body(**{field: DROP}))
    assert fields_of(errors) == [field]
    assert errors[0].message == "is required"
    assert errors[0].code == "missing"


def test_empty_body_names_every_required_field() -> None:
    """An empty object is refused with all five required fields named at once."""
    errors = refused({})
    assert sorted(fields_of(errors)) == sorted(
        ["name", "number", "outboundPstn", "authUserName", "authPassword"]
    )
    assert {e.code for e in errors} == {"missing"}


# --------------------------------------------------------------------------- field names


def test_misspelled_field_is_refused_by_name() -> None:
    """authUsername (wrong case) is refused as unknown, and authUserName is reported missing."""
    errors = refused(body(authUserName=DROP, authUsername="sip_user"))
    by_field = {e.field: e for e in errors}
    assert set(by_field) == {"authUsername", "authUserName"}
    assert by_field["authUsername"].code == "extra_forbidden"
    assert "spelling" in by_field["authUsername"].message
    assert by_field["authUserName"].code == "missing"


def test_unknown_extra_field_is_refused_by_name() -> None:
    """A field the contract does not know is refused even when everything else is valid."""
    errors = refused(body(sipDomain="example.com"))
    assert fields_of(errors) == ["sipDomain"]


def test_snake_case_and_camel_case_are_equivalent() -> None:
    """The same request spelled in snake_case parses to the same model as in camelCase."""
    camel = body(agentName="front-desk", allowedAddresses=["203.0.113.0/24"], roomPrefix="rm-")
    snake = {
        "name": camel["name"],
        "number": camel["number"],
        "outbound_pstn": camel["outboundPstn"],
        "auth_user_name": camel["authUserName"],
        "auth_password": camel["authPassword"],
        "agent_name": "front-desk",
        "allowed_addresses": ["203.0.113.0/24"],
        "room_prefix": "rm-",
    }
    from_camel = parse_request(camel)
    from_snake = parse_request(snake)
    assert from_snake == from_camel
    assert from_snake.auth_password.get_secret_value() == "sip_password"
    assert from_snake.agent_name == "front-desk"


def test_both_spellings_of_one_field_are_refused() -> None:
    """Sending outboundPstn and outbound_pstn together is refused, not silently merged."""
    errors = refused(body(outbound_pstn="other.gateway.com"))
    assert fields_of(errors) == ["outbound_pstn"]


def test_all_field_errors_are_reported_at_once() -> None:
    """A body with four bad fields yields four FieldErrors named as the API spells them."""
    errors = refused(
        body(number="+15550100", outboundPstn="sip:user@host", authUserName="", authPassword="")
    )
    assert len(errors) == 4
    assert sorted(fields_of(errors)) == sorted(
        ["number", "outboundPstn", "authUserName", "authPassword"]
    )
    assert all(e.message for e in errors)
    with pytest.raises(InvalidRequest) as info:
        parse_request(body(number="x", outboundPstn="a b", authUserName="", authPassword=""))
    for field in ("number", "outboundPstn", "authUserName", "authPassword"):
        assert f"{field}: " in str(info.value)


# --------------------------------------------------------------------------- optional fields


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("UDP", Transport.UDP),
        (" Tcp ", Transport.TCP),
        ("tls", Transport.TLS),
        ("AUTO", Transport.AUTO),
    ],
)
def test_transport_is_case_insensitive(raw: str, expected: Transport) -> None:
    """transport accepts auto|udp|tcp|tls in any case and surrounding spaces."""
    assert parse_request(body(transport=raw)).transport is expected


@pytest.mark.parametrize("raw", ["sips", "ws", "", "udp,tcp", 5])
def test_transport_refuses_anything_else(raw: object) -> None:
    """transport refuses values outside auto|udp|tcp|tls."""
    assert fields_of(refused(body(transport=raw))) == ["transport"]


def test_allowed_addresses_are_normalised() -> None:
    """IPs and CIDRs are canonicalised, host bits cleared, single hosts bare, duplicates dropped."""
    request = parse_request(
        body(
            allowedAddresses=[
                "203.0.113.5",
                " 198.51.100.7/24 ",
                "203.0.113.5/32",
                "2001:DB8::1/128",
                "2001:db8:0:0::/32",
            ]
        )
    )
    assert request.allowed_addresses == (
        "203.0.113.5",
        "198.51.100.0/24",
        "2001:db8::1",
        "2001:db8::/32",
    )


def test_allowed_addresses_junk_is_refused_with_its_index() -> None:
    """A non-IP entry is refused, the message giving its position and value."""
    errors = refused(body(allowedAddresses=["203.0.113.5", "10.0.0.0/8", "gateway.example"]))
    assert fields_of(errors) == ["allowedAddresses"]
    assert "item 2" in errors[0].message
    assert "gateway.example" in errors[0].message


@pytest.mark.parametrize("junk", ["10.0.0.256", "10.0.0.0/33", "", "any"])
def test_allowed_addresses_refuses_invalid_entries(junk: str) -> None:
    """Out-of-range octets, bad prefix lengths and empty entries are refused."""
    errors = refused(body(allowedAddresses=[junk]))
    assert fields_of(errors) == ["allowedAddresses"]
    assert "item 0" in errors[0].message


def test_allowed_addresses_are_bounded() -> None:
    """More than 32 allowed addresses are refused."""
    parse_request(body(allowedAddresses=[f"10.0.0.{i}" for i in range(32)]))
    assert fields_of(refused(body(allowedAddresses=[f"10.0.0.{i}" for i in range(33)]))) == [
        "allowedAddresses"
    ]


@pytest.mark.parametrize("name", ["front-desk", "agent.v1_2", "A", "9lives"])
def test_agent_name_accepts_identifiers(name: str) -> None:
    """agentName accepts names that start with a letter or digit and use . _ -."""
    assert parse_request(body(agentName=name)).agent_name == name


def test_agent_name_empty_means_none() -> None:
    """An empty agentName means no agent, as if it were absent."""
    assert parse_request(body(agentName="")).agent_name is None
    assert parse_request(body(agentName=None)).agent_name is None


@pytest.mark.parametrize("name", ["-agent", "agent name", "agent/1", "a" * 129, "agënt"])
def test_agent_name_refuses_other_text(name: str) -> None:
    """agentName refuses a leading dash, spaces, slashes, non-ASCII and over-long names."""
    assert fields_of(refused(body(agentName=name))) == ["agentName"]


@pytest.mark.parametrize("prefix", ["call-", "room_", "x", "A" * 64])
def test_room_prefix_accepts_safe_names(prefix: str) -> None:
    """roomPrefix accepts 1-64 letters, digits, '_' and '-'."""
    assert parse_request(body(roomPrefix=prefix)).room_prefix == prefix


@pytest.mark.parametrize("prefix", ["", "room/", "a b", "room.", "A" * 65, "rüm"])
def test_room_prefix_refuses_other_text(prefix: str) -> None:
    """roomPrefix refuses empty, spaced, slashed, dotted, non-ASCII and over-long prefixes."""
    assert fields_of(refused(body(roomPrefix=prefix))) == ["roomPrefix"]


def test_metadata_size_limit() -> None:
    """metadata up to the JSON size limit is kept; one byte more is refused."""
    overhead = len('{"k": ""}')
    fits = {"k": "x" * (MAX_METADATA_BYTES - overhead)}
    assert parse_request(body(metadata=fits)).metadata == fits
    errors = refused(body(metadata={"k": "x" * (MAX_METADATA_BYTES - overhead + 1)}))
    assert fields_of(errors) == ["metadata"]
    assert str(MAX_METADATA_BYTES) in errors[0].message


@pytest.mark.parametrize("value", [{"when": object()}, {"tags": {"a", "b"}}, {"raw": b"x"}])
def test_metadata_that_is_not_json_is_refused(value: dict[str, Any]) -> None:
    """Python objects JSON cannot hold are refused as a field error, not a TypeError."""
    errors = refused(body(metadata=value))
    assert fields_of(errors) == ["metadata"]
    assert "JSON" in errors[0].message


def test_metadata_must_be_an_object() -> None:
    """metadata must be a JSON object, not a list or string."""
    assert fields_of(refused(body(metadata=["a"]))) == ["metadata"]
    assert fields_of(refused(body(metadata="a"))) == ["metadata"]


# --------------------------------------------------------------------------- the password


def test_password_absent_from_model_str_and_repr() -> None:
    """The parsed model's str, repr and JSON dump mask the password."""
    request = parse_request(body(authPassword=CANARY))
    assert request.auth_password.get_secret_value() == CANARY
    for text in (
        str(request),
        repr(request),
        request.model_dump_json(),
        repr(request.model_dump()),
    ):
        assert CANARY not in text


def test_password_absent_when_it_is_the_only_valid_field() -> None:
    """When every other field is bad, no error, message or traceback shows the password."""
    data = {
        "name": "",
        "number": "+15550100",
        "outboundPstn": "sip:user@host",
        "authUserName": "",
        "authPassword": CANARY,
        "transport": "carrier-pigeon",
        "allowedAddresses": ["nope"],
        "roomPrefix": "bad prefix",
        "agentName": "-x",
        "metadata": {"k": "x" * (MAX_METADATA_BYTES + 1)},
        "authPasword": "typo",
    }
    with pytest.raises(InvalidRequest) as info:
        parse_request(data)
    exc = info.value
    assert "authPassword" not in fields_of(exc.errors)
    assert len(exc.errors) == 10
    assert_no_canary(exc)


@pytest.mark.parametrize(
    "changes",
    [
        {"authPassword": CANARY + "\x00"},  # invalid password
        {"authPassword": CANARY * 10},  # over-long password
        {"authPassword": DROP, "authpassword": CANARY},  # misspelled password field
        {"authPassword": DROP, "auth_Password": CANARY, "number": "1"},
    ],
)
def test_password_absent_when_the_password_itself_is_refused(changes: dict[str, Any]) -> None:
    """A refused or misspelled password is never echoed in errors, messages or tracebacks."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(body(**changes))
    assert_no_canary(info.value)


def assert_no_canary(exc: InvalidRequest) -> None:
    """Neither the exception, its field errors nor its logged traceback contain CANARY."""
    rendered = [
        str(exc),
        repr(exc),
        repr(exc.errors),
        *(e.model_dump_json() for e in exc.errors),
        "".join(traceback.format_exception(exc)),
    ]
    for text in rendered:
        assert CANARY not in text
    assert exc.__cause__ is None
    assert exc.__suppress_context__


def test_fingerprint_material_holds_the_password_by_design() -> None:
    """fingerprint_material carries the real password (for HMAC) and the API's field names."""
    material = parse_request(body(authPassword=CANARY)).fingerprint_material()
    assert material["authPassword"] == CANARY
    assert material["outboundPstn"] == "sip.gateway.com"
    assert "auth_password" not in material


def test_model_validate_directly_accepts_context_strictness() -> None:
    """ProvisionRequest honours strict_numbers passed through the validation context."""
    ProvisionRequest.model_validate(dict(SEED_BODY))
    with pytest.raises(ValidationError):
        ProvisionRequest.model_validate(dict(SEED_BODY), context={"strict_numbers": True})


# --------------------------------------------------------------------------- updates (PATCH)


def change_refused(data: Any, *, strict_numbers: bool = False) -> list[FieldError]:
    """Parse an update, expecting InvalidRequest; return its field errors."""
    with pytest.raises(InvalidRequest) as info:
        parse_change(data, strict_numbers=strict_numbers)
    return info.value.errors


def test_change_keeps_the_patched_values_and_names_them_in_python_spelling() -> None:
    """An update in either spelling carries its values and the snake_case names it set."""
    change = parse_change({"authUserName": "new_user", "room_prefix": "r-", "transport": "TLS"})

    assert change.fields == frozenset({"auth_user_name", "room_prefix", "transport"})
    assert change.values.auth_user_name == "new_user"
    assert change.values.room_prefix == "r-"
    assert change.values.transport is Transport.TLS


def test_change_validates_patched_fields_like_a_request() -> None:
    """A patched field meets the request's own rules, named as the API spells it."""
    errors = change_refused({"outboundPstn": "sip:gw@example.com", "agentName": "-x"})

    assert sorted(fields_of(errors)) == ["agentName", "outboundPstn"]


def test_change_may_not_name_the_number() -> None:
    """The number is the record's identity: an update naming it is refused, with a reason."""
    errors = change_refused({"number": "+15557654321"})

    assert [(e.field, e.code, e.message) for e in errors] == [
        ("number", "immutable",
         "cannot be changed: release the number and set the new one up instead")]


def test_change_refuses_the_number_and_bad_fields_at_once() -> None:
    """Every problem of an update is reported together."""
    errors = change_refused({"number": "+15557654321", "authUserName": "a b"})

    assert [(e.field, e.code) for e in errors] == [
        ("number", "immutable"), ("authUserName", "value_error")]


def test_change_must_name_a_field() -> None:
    """An empty update is refused as such."""
    errors = change_refused({})

    assert [(e.field, e.code, e.message) for e in errors] == [
        ("body", "empty", "names no field to change")]


@pytest.mark.parametrize("data", [[], "name=x", None])
def test_change_body_must_be_an_object(data: Any) -> None:
    """An update that is not a JSON object is refused before anything else."""
    errors = change_refused(data)

    assert [(e.field, e.code, e.message) for e in errors] == [
        ("body", "type_error", "must be a JSON object")]


def test_change_refuses_unknown_fields_by_name() -> None:
    """A misspelled field in an update is named, not dropped."""
    errors = change_refused({"authUsername": "x"})

    assert fields_of(errors) == ["authUsername"]


def test_change_passes_under_strict_numbers() -> None:
    """An update never carries the number, so strict number validation cannot refuse it."""
    change = parse_change({"name": "Renamed"}, strict_numbers=True)

    assert change.values.name == "Renamed"
    assert change.fields == frozenset({"name"})


# --------------------------------------------------------------------------- found by mutants
# Pinned down after mutation testing (`make mutants`) showed these went unchecked.


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("[2001:db8::1", "has an unclosed '[' around an IPv6 address"),
        ("[2001:db8::1]5060", "may only have ':port' after ']'"),
        ("[not-ipv6]:5060", "has an invalid IPv6 address in brackets"),
        ("[2001:db8::1]:50]60", "has a port that is not a number from 1 to 65535"),
    ],
)
def test_gateway_bracket_errors_are_worded_exactly(address: str, message: str) -> None:
    """Each bracket problem has its own message; the first ']' closes the address."""
    assert [e.message for e in refused(body(outboundPstn=address))] == [message]


def test_gateway_accepts_the_shortest_bracketed_ipv6() -> None:
    """The whole text between the brackets is the address, even a three-character one."""
    allow_loopback = GatewayPolicy.parse(["::1"])

    assert validate_gateway_address("[::1]:5060", allow_loopback) == "[::1]:5060"


def test_invalid_request_reads_as_every_field_error() -> None:
    """The exception's text lists every field with its message, separated by '; '."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(body(name="", number=DROP))

    assert str(info.value) == "invalid request: name: must not be empty; number: is required"


def test_unknown_field_and_wrong_choice_are_worded() -> None:
    """An unknown field says to check its spelling; a wrong choice keeps pydantic's words."""
    errors = refused(body(transprt="udp", transport="sctp"))

    assert {e.field: e.message for e in errors} == {
        "transprt": "is not a known field (check its spelling)",
        "transport": "Input should be 'auto', 'udp', 'tcp' or 'tls'",
    }


@pytest.mark.parametrize(
    ("loc", "field"),
    [(("metadata", "crm", 0, "id"), "metadata.crm.id"), ((), "body"), ((0,), "body")],
)
def test_field_names_join_the_location_without_indexes(
    loc: tuple[int | str, ...], field: str
) -> None:
    """A nested location reads as dotted names; one with no name is the body."""
    error = ValidationError.from_exception_data(
        "ProvisionRequest", [{"type": "missing", "loc": loc, "input": {}}])

    assert [e.field for e in field_errors(error)] == [field]


def test_fingerprint_material_is_plain_json() -> None:
    """The fingerprint hashes JSON values (lists and strings), the same in every process."""
    request = parse_request(body(allowedAddresses=["203.0.113.5"], transport="udp"))

    material = request.fingerprint_material()

    assert material["allowedAddresses"] == ["203.0.113.5"]
    assert type(material["transport"]) is str
    assert material["transport"] == "udp"


def test_change_in_python_spelling_replaces_the_field() -> None:
    """A snake_case field in an update is the same field as its camelCase alias."""
    change = parse_change({"auth_user_name": "new_user"})

    assert change.values.auth_user_name == "new_user"
    assert change.fields == frozenset({"auth_user_name"})


def test_change_with_both_spellings_of_one_field_is_refused() -> None:
    """An update naming one field twice is refused, as a full request is, not merged."""
    errors = change_refused({"outboundPstn": "a.example.com", "outbound_pstn": "b.example.com"})

    assert [(e.field, e.code, e.message) for e in errors] == [
        ("outbound_pstn", "duplicate", "is the same field as outboundPstn; give it once")]


@pytest.mark.parametrize("value", ["text", True, None, 7, 1.5])
def test_metadata_key_limit_counts_keys_not_values(value: Any) -> None:
    """64 keys holding strings, booleans, null or numbers pass; the values add no keys."""
    metadata = {f"k{i}": value for i in range(MAX_METADATA_KEYS)}

    assert parse_request(body(metadata=metadata)).metadata == metadata
    assert parse_request(body(metadata={"list": [value] * 100})).metadata == {
        "list": [value] * 100}


def test_metadata_integers_beyond_64_bits_are_worded() -> None:
    """An integer past 64 bits is refused with the reason."""
    [error] = refused(body(metadata={"big": 2**64}))

    assert (error.field, error.message) == ("metadata", "may hold integers of at most 64 bits")


def test_metadata_lone_surrogate_is_worded() -> None:
    """A lone surrogate (valid JSON text, not Unicode) is refused with the reason."""
    [error] = refused(body(metadata={"note": "\ud800"}))

    assert (error.field, error.message) == (
        "metadata", "may hold only valid Unicode text (no lone surrogates)")
