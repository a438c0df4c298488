"""Unit tests for worker.livekit.errors: mapping LiveKit answers and transport failures."""

from __future__ import annotations

import pickle

import httpx
import pytest

from worker.livekit.errors import (
    DispatchRuleConflict,
    InboundNumberConflict,
    LiveKitConflict,
    LiveKitError,
    LiveKitNotFound,
    LiveKitPermanentError,
    LiveKitRateLimited,
    LiveKitRejected,
    LiveKitRetryableError,
    LiveKitServerError,
    LiveKitTimeout,
    LiveKitUnauthorized,
    LiveKitUnavailable,
    error_from_response,
    error_from_transport,
)

URL = "http://livekit.test/twirp/livekit.SIP/CreateSIPInboundTrunk"
METHOD = "CreateSIPInboundTrunk"

INBOUND_CONFLICT = (
    'Conflicting inbound SIP Trunks: "<new>" and "ST_7GWp7k9td6K7", using the same '
    'number(s) ["+15555784999"] without AllowedNumbers set'
)
RULE_CONFLICT = (
    "Dispatch rule for the same trunk, inbound number, number, and PIN combination already "
    'exists in dispatch rule "SDR_f7EUec9uBCF2" "rule-a4dc9021"'
)


def twirp(
    status: int, code: str, msg: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A Twirp JSON error answer as livekit-server sends it."""
    return httpx.Response(
        status,
        json={"code": code, "msg": msg},
        headers=headers,
        request=httpx.Request("POST", URL),
    )


def plain(status: int, text: str) -> httpx.Response:
    """A plain-text answer, as the auth middleware or a proxy sends it."""
    return httpx.Response(
        status,
        text=text,
        headers={"content-type": "text/plain; charset=utf-8"},
        request=httpx.Request("POST", URL),
    )


def test_taxonomy_flags() -> None:
    """Every class carries its documented reason slug and retry flag."""
    expected: dict[type[LiveKitError], tuple[str, bool]] = {
        LiveKitUnavailable: ("livekit_unavailable", True),
        LiveKitTimeout: ("livekit_timeout", True),
        LiveKitServerError: ("livekit_server_error", True),
        LiveKitRateLimited: ("livekit_rate_limited", True),
        LiveKitRejected: ("livekit_rejected", False),
        LiveKitUnauthorized: ("livekit_unauthorized", False),
        LiveKitNotFound: ("livekit_not_found", False),
        LiveKitConflict: ("livekit_conflict", False),
        InboundNumberConflict: ("number_conflict", False),
        DispatchRuleConflict: ("dispatch_rule_conflict", False),
    }
    for cls, (code, retryable) in expected.items():
        assert (cls.code, cls.retryable) == (code, retryable), cls
        parent = LiveKitRetryableError if retryable else LiveKitPermanentError
        assert issubclass(cls, parent)
    assert issubclass(InboundNumberConflict, LiveKitConflict)
    assert issubclass(DispatchRuleConflict, LiveKitConflict)


def test_str_is_method_and_message() -> None:
    """str() is "<method>: <message>" and the attributes are kept."""
    error = LiveKitRejected("missing trunk", method=METHOD, status=400, twirp_code="x")
    assert str(error) == f"{METHOD}: missing trunk"
    assert (error.message, error.method, error.status, error.twirp_code) == (
        "missing trunk",
        METHOD,
        400,
        "x",
    )
    assert error.outcome_unknown is False
    assert "LiveKitRejected" in repr(error)


@pytest.mark.parametrize(
    ("response", "cls", "outcome_unknown"),
    [
        (twirp(400, "invalid_argument", "missing trunk"), LiveKitRejected, False),
        (twirp(400, "malformed", "bad json"), LiveKitRejected, False),
        (twirp(404, "not_found", "requested sip trunk does not exist"), LiveKitNotFound, False),
        (twirp(412, "failed_precondition", "not ready"), LiveKitRejected, False),
        (twirp(409, "already_exists", "exists"), LiveKitConflict, False),
        (twirp(500, "internal", "boom"), LiveKitServerError, True),
        (twirp(500, "unknown", "twirp error unknown"), LiveKitServerError, True),
        (twirp(503, "unavailable", "try later"), LiveKitServerError, True),
        (twirp(501, "unimplemented", "nope"), LiveKitRejected, False),
        (twirp(408, "deadline_exceeded", "too slow"), LiveKitTimeout, True),
        (twirp(429, "resource_exhausted", "slow down"), LiveKitRateLimited, False),
        (twirp(401, "unauthenticated", "permissions denied"), LiveKitUnauthorized, False),
        (twirp(403, "permission_denied", "no"), LiveKitUnauthorized, False),
        (plain(401, "invalid authorization token"), LiveKitUnauthorized, False),
        (plain(502, "<html>Bad Gateway</html>"), LiveKitServerError, True),
        (plain(404, "404 page not found"), LiveKitRejected, False),
    ],
)
def test_status_mapping(
    response: httpx.Response, cls: type[LiveKitError], outcome_unknown: bool
) -> None:
    """Each status/twirp code lands in its class with the right outcome flag."""
    error = error_from_response(METHOD, response)
    assert type(error) is cls
    assert error.status == response.status_code
    assert error.outcome_unknown is outcome_unknown
    assert error.method == METHOD
    assert str(error).startswith(f"{METHOD}: ")


def test_twirp_code_and_message_are_kept() -> None:
    """The twirp code is an attribute and the server's message is in the text."""
    error = error_from_response(METHOD, twirp(400, "invalid_argument", "no trunk numbers"))
    assert error.twirp_code == "invalid_argument"
    assert error.message == "no trunk numbers"


def test_bad_route_says_what_to_fix() -> None:
    """A bad_route 404 is a wrong URL or an old server, not a missing object."""
    response = twirp(404, "bad_route", 'no handler for path "/twirp/livekit.SIP/X"')
    error = error_from_response(METHOD, response)
    assert type(error) is LiveKitRejected
    assert error.twirp_code == "bad_route"
    assert "LIVEKIT_URL" in error.message
    assert "no handler for path" in error.message


def test_redis_required_is_retryable_with_hint() -> None:
    """'sip not connected (redis required)' is a retryable 5xx naming Redis."""
    error = error_from_response(
        METHOD, twirp(500, "internal", "sip not connected (redis required)")
    )
    assert isinstance(error, LiveKitServerError)
    assert error.retryable
    assert error.outcome_unknown
    assert "Redis" in error.message
    assert "sip not connected (redis required)" in error.message


def test_plain_text_401_masks_the_echoed_token() -> None:
    """The middleware echoes a bad token; the error keeps the reason, not the token."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJkZXZrZXkifQ.iUJXEk7QwZt6qLcgbk2S9lpEwX-ACU0_JSdL1g2"
    response = plain(401, f"invalid token: {token}, error: token signature is invalid")
    error = error_from_response(METHOD, response)
    assert isinstance(error, LiveKitUnauthorized)
    assert error.twirp_code is None
    assert not error.retryable
    assert "LIVEKIT_API_KEY / LIVEKIT_API_SECRET" in str(error)
    assert "signature is invalid" in str(error)
    assert token not in str(error)
    assert token not in repr(error)
    assert "eyJ" not in str(error)


def test_missing_grant_says_so() -> None:
    """A JSON 401 'permissions denied' points at the sip.admin grant, not the secret."""
    error = error_from_response(METHOD, twirp(401, "unauthenticated", "permissions denied"))
    assert isinstance(error, LiveKitUnauthorized)
    assert "sip.admin" in error.message


def test_long_server_messages_are_truncated() -> None:
    """Server text is cut to about 300 characters."""
    error = error_from_response(METHOD, twirp(400, "invalid_argument", "x" * 5000))
    assert 250 <= len(error.message) <= 310
    assert error.message.endswith("...")


def test_json_body_without_msg_and_empty_body() -> None:
    """Odd bodies still give a readable message."""
    empty = httpx.Response(500, content=b"", request=httpx.Request("POST", URL))
    assert "HTTP 500" in error_from_response(METHOD, empty).message
    list_body = httpx.Response(400, json=[1, 2], request=httpx.Request("POST", URL))
    assert type(error_from_response(METHOD, list_body)) is LiveKitRejected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "-3"}, 0.0),
        (
            {
                "Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT",
                "Date": "Wed, 21 Oct 2026 07:28:00 GMT",
            },
            30.0,
        ),
        ({"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_rate_limited_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """429 reads Retry-After as seconds or as a date relative to the Date header."""
    error = error_from_response(METHOD, twirp(429, "resource_exhausted", "slow", headers))
    assert isinstance(error, LiveKitRateLimited)
    assert error.code == "livekit_rate_limited"
    assert error.retryable
    assert error.outcome_unknown is False
    assert error.retry_after == expected


def test_inbound_number_conflict_on_create() -> None:
    """The create form names "<new>" first and the existing trunk second."""
    error = error_from_response(METHOD, twirp(400, "invalid_argument", INBOUND_CONFLICT))
    assert isinstance(error, InboundNumberConflict)
    assert error.code == "number_conflict"
    assert error.conflicting_id == "ST_7GWp7k9td6K7"
    assert not error.retryable
    assert error.status == 400
    assert error.twirp_code == "invalid_argument"


@pytest.mark.parametrize(
    ("msg", "subject_id", "expected"),
    [
        (
            'Conflicting inbound SIP Trunks: "<new>" and "ST_abc123", using the same '
            'number(s) ["+15550001111"] and AllowedNumber "+14155550100"',
            None,
            "ST_abc123",
        ),
        (
            'Conflicting inbound SIP Trunks: "ST_mine" and "ST_theirs", using the same '
            'number(s) ["+15550001111"] without AllowedNumbers set',
            "ST_mine",
            "ST_theirs",
        ),
        (
            'Conflicting inbound SIP Trunks: "ST_theirs" and "ST_mine", using the same '
            'number(s) ["+15550001111"] without AllowedNumbers set',
            "ST_mine",
            "ST_theirs",
        ),
        (
            "conflicting inbound SIP trunks: <new> and ST_noquotes, same numbers",
            None,
            "ST_noquotes",
        ),
        ('Conflicting inbound SIP Trunks: "ST_mine" and "ST_mine"', "ST_mine", None),
        ("Conflicting inbound SIP Trunks: without any id", None, None),
    ],
)
def test_inbound_number_conflict_variants(
    msg: str, subject_id: str | None, expected: str | None
) -> None:
    """Create, AllowedNumber, unquoted and both update orders all find the other trunk."""
    error = error_from_response(
        "UpdateSIPInboundTrunk", twirp(400, "invalid_argument", msg), subject_id=subject_id
    )
    assert isinstance(error, InboundNumberConflict)
    assert error.conflicting_id == expected


def test_dispatch_rule_conflict() -> None:
    """The rule conflict names the existing rule id."""
    error = error_from_response(
        "CreateSIPDispatchRule", twirp(400, "invalid_argument", RULE_CONFLICT)
    )
    assert isinstance(error, DispatchRuleConflict)
    assert error.code == "dispatch_rule_conflict"
    assert error.conflicting_id == "SDR_f7EUec9uBCF2"
    assert not error.retryable


def test_dispatch_rule_conflict_naming_the_updated_rule() -> None:
    """On update, a conflict that names the rule being written has no other id to give."""
    error = error_from_response(
        "UpdateSIPDispatchRule",
        twirp(400, "invalid_argument", RULE_CONFLICT),
        subject_id="SDR_f7EUec9uBCF2",
    )
    assert isinstance(error, DispatchRuleConflict)
    assert error.conflicting_id is None


def test_dispatch_rule_conflict_without_id() -> None:
    """A rule conflict with no SDR_ id still classifies, with no conflicting_id."""
    error = error_from_response(
        "CreateSIPDispatchRule", twirp(400, "invalid_argument", "rule already exists")
    )
    assert isinstance(error, DispatchRuleConflict)
    assert error.conflicting_id is None


def _transport(exc_type: type[httpx.TransportError], text: str = "boom") -> httpx.TransportError:
    return exc_type(text, request=httpx.Request("POST", URL))


@pytest.mark.parametrize(
    ("exc", "cls", "outcome_unknown"),
    [
        (
            _transport(httpx.ConnectError, "[Errno 111] Connection refused"),
            LiveKitUnavailable,
            False,
        ),
        (_transport(httpx.ConnectTimeout), LiveKitUnavailable, False),
        (_transport(httpx.ProxyError), LiveKitUnavailable, False),
        (_transport(httpx.PoolTimeout), LiveKitTimeout, False),
        (_transport(httpx.ReadTimeout), LiveKitTimeout, True),
        (_transport(httpx.WriteTimeout), LiveKitTimeout, True),
        (_transport(httpx.ReadError, "[Errno 104] Connection reset by peer"), LiveKitTimeout, True),
        (_transport(httpx.WriteError), LiveKitTimeout, True),
        (
            _transport(
                httpx.RemoteProtocolError, "Server disconnected without sending a response."
            ),
            LiveKitTimeout,
            True,
        ),
        (_transport(httpx.CloseError), LiveKitTimeout, True),
        (_transport(httpx.UnsupportedProtocol), LiveKitRejected, False),
        (_transport(httpx.LocalProtocolError), LiveKitRejected, False),
    ],
)
def test_transport_mapping(
    exc: httpx.TransportError, cls: type[LiveKitError], outcome_unknown: bool
) -> None:
    """Failures before sending are safe to retry; failures mid-request leave it unknown."""
    error = error_from_transport(METHOD, exc)
    assert type(error) is cls
    assert error.outcome_unknown is outcome_unknown
    assert error.status is None
    assert error.twirp_code is None
    assert str(error).startswith(f"{METHOD}: ")


def test_connect_refused_message() -> None:
    """A refused connection reads as unreachable, keeping the OS reason."""
    error = error_from_transport(
        METHOD, _transport(httpx.ConnectError, "[Errno 111] Connection refused")
    )
    assert error.code == "livekit_unavailable"
    assert error.retryable
    assert str(error) == f"{METHOD}: cannot connect to LiveKit: [Errno 111] Connection refused"


def test_error_kwargs_are_keyword_only() -> None:
    """Attributes of the subclasses with extras are set through keywords."""
    error = LiveKitConflict("x", method=METHOD, conflicting_id="ST_1")
    assert error.conflicting_id == "ST_1"
    limited = LiveKitRateLimited("x", method=METHOD, retry_after=2.0)
    assert limited.retry_after == 2.0
    with pytest.raises(TypeError):
        LiveKitError("x", METHOD)  # type: ignore[call-arg]


def test_errors_survive_pickling() -> None:
    """Errors cross process boundaries (Celery) with their class and attributes."""
    original = error_from_response(METHOD, twirp(400, "invalid_argument", INBOUND_CONFLICT))
    copy = pickle.loads(pickle.dumps(original))  # noqa: S301 - our own object, just made
    assert type(copy) is InboundNumberConflict
    assert copy.__dict__ == original.__dict__
    assert str(copy) == str(original)
    limited = LiveKitRateLimited("x", method=METHOD, retry_after=2.0)
    copied = pickle.loads(pickle.dumps(limited))  # noqa: S301 - as above
    assert isinstance(copied, LiveKitRateLimited)
    assert copied.retry_after == 2.0
