"""Unit tests for worker.livekit.client.LiveKitSIP against httpx.MockTransport (no sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from pydantic import SecretStr

from worker.livekit import (
    DispatchRule,
    DispatchRuleConflict,
    DispatchRuleDirect,
    DispatchRuleIndividual,
    DispatchRuleSpec,
    InboundNumberConflict,
    InboundTrunk,
    LiveKitError,
    LiveKitNotFound,
    LiveKitObject,
    LiveKitRateLimited,
    LiveKitRejected,
    LiveKitServerError,
    LiveKitSIP,
    LiveKitTimeout,
    LiveKitUnauthorized,
    LiveKitUnavailable,
    ObjectKind,
    OutboundTrunk,
    RoomAgentDispatch,
    RoomConfig,
    SIPTransport,
)

BASE = "http://livekit.test"
KEY = "APIkey123"
SECRET = "a-test-secret-that-is-at-least-32-bytes-long"
NOW = 1_800_000_000.0
IN_PASSWORD = "in-canary-pw-7731"
OUT_PASSWORD = "out-canary-pw-9902"

Handler = Callable[[httpx.Request], httpx.Response]


# --------------------------------------------------------------------------- fixtures


class Clock:
    """A settable clock for token lifetimes."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A MockTransport handler that records requests and answers from a queue or a function."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: list[httpx.Response | Exception] = []
        self.fallback: Handler | None = None
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return answer
        if self.fallback is not None:
            return self.fallback(request)
        raise AssertionError(f"unexpected request {request.url}")

    def reply(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.answers.append(httpx.Response(status, json=payload, headers=headers))

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(recorder: Recorder, clock: Clock) -> Iterator[LiveKitSIP]:
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    with LiveKitSIP(BASE, KEY, SECRET, http=http, clock=clock) as lk:
        yield lk
    http.close()


def decode(request: httpx.Request) -> dict[str, Any]:
    """Verify and decode the bearer token of a request."""
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    claims: dict[str, Any] = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_nbf": False},
    )
    return claims


# Answers shaped exactly as livekit-server v1.13.5 sends them (every field, enums as names).


def inbound_answer(**overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "sip_trunk_id": "ST_dmjKZjcM6NFA",
        "name": "acme-in",
        "metadata": '{"job":"j1"}',
        "numbers": ["+15550001111"],
        "allowed_addresses": ["203.0.113.0/24"],
        "allowed_numbers": [],
        "auth_username": "inuser",
        "auth_password": IN_PASSWORD,
        "auth_realm": "",
        "headers": {},
        "headers_to_attributes": {},
        "attributes_to_headers": {},
        "include_headers": "SIP_NO_HEADERS",
        "ringing_timeout": None,
        "max_call_duration": None,
        "krisp_enabled": False,
        "media_encryption": "SIP_MEDIA_ENCRYPT_DISABLE",
        "media": None,
        "created_at": None,
        "updated_at": None,
    }
    answer.update(overrides)
    return answer


def outbound_answer(**overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "sip_trunk_id": "ST_UfRNKThLsFUx",
        "name": "acme-out",
        "metadata": "m-out",
        "address": "sip.example.com:5061",
        "destination_country": "",
        "transport": "SIP_TRANSPORT_TLS",
        "numbers": ["+15550001111"],
        "auth_username": "outuser",
        "auth_password": OUT_PASSWORD,
        "headers": {},
        "headers_to_attributes": {},
        "attributes_to_headers": {},
        "include_headers": "SIP_NO_HEADERS",
        "media_encryption": "SIP_MEDIA_ENCRYPT_DISABLE",
        "from_host": "",
        "media": None,
        "created_at": None,
        "updated_at": None,
    }
    answer.update(overrides)
    return answer


def rule_answer(**overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "sip_dispatch_rule_id": "SDR_9YP9RwQAe7N5",
        "rule": {
            "dispatch_rule_individual": {
                "room_prefix": "call-",
                "pin": "",
                "no_randomness": False,
            }
        },
        "trunk_ids": ["ST_dmjKZjcM6NFA"],
        "hide_phone_number": False,
        "inbound_numbers": [],
        "numbers": [],
        "name": "acme-rule",
        "metadata": "rm",
        "attributes": {},
        "room_preset": "",
        "room_config": {
            "name": "",
            "empty_timeout": 0,
            "departure_timeout": 0,
            "max_participants": 0,
            "metadata": "",
            "egress": None,
            "min_playout_delay": 0,
            "max_playout_delay": 0,
            "sync_streams": False,
            "agents": [{"agent_name": "receptionist", "metadata": "am", "attributes": {}}],
        },
        "media": {"only_listed_codecs": False, "codecs": []},
        "krisp_enabled": False,
        "media_encryption": "SIP_MEDIA_ENCRYPT_DISABLE",
        "created_at": None,
        "updated_at": None,
    }
    answer.update(overrides)
    return answer


def new_inbound() -> InboundTrunk:
    return InboundTrunk(
        name="acme-in",
        metadata='{"job":"j1"}',
        numbers=["+15550001111"],
        allowed_addresses=["203.0.113.0/24"],
        auth_username="inuser",
        auth_password=SecretStr(IN_PASSWORD),
    )


def new_outbound() -> OutboundTrunk:
    return OutboundTrunk(
        name="acme-out",
        metadata="m-out",
        address="sip.example.com:5061",
        transport=SIPTransport.SIP_TRANSPORT_TLS,
        numbers=["+15550001111"],
        auth_username="outuser",
        auth_password=SecretStr(OUT_PASSWORD),
    )


def new_rule() -> DispatchRule:
    return DispatchRule(
        name="acme-rule",
        metadata="rm",
        trunk_ids=["ST_dmjKZjcM6NFA"],
        rule=DispatchRuleSpec(dispatch_rule_individual=DispatchRuleIndividual(room_prefix="call-")),
        room_config=RoomConfig(
            agents=[RoomAgentDispatch(agent_name="receptionist", metadata="am")]
        ),
    )


# --------------------------------------------------------------------------- transport


def test_every_call_posts_json_to_the_twirp_path(client: LiveKitSIP, recorder: Recorder) -> None:
    """Requests go to /twirp/livekit.SIP/<Method> as JSON with a bearer token."""
    recorder.reply({"trunk": inbound_answer()})
    client.get_inbound_trunk("ST_dmjKZjcM6NFA")
    request = recorder.requests[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/twirp/livekit.SIP/GetSIPInboundTrunk"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"].startswith("Bearer ")
    assert recorder.body() == {"sip_trunk_id": "ST_dmjKZjcM6NFA"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://127.0.0.1:7880", "http://127.0.0.1:7880"),
        ("wss://acme.livekit.cloud/", "https://acme.livekit.cloud"),
        ("https://acme.livekit.cloud//", "https://acme.livekit.cloud"),
        ("HTTP://localhost:7880", "http://localhost:7880"),
    ],
)
def test_base_url_forms(url: str, expected: str, recorder: Recorder) -> None:
    """ws(s):// maps to http(s):// and trailing slashes are dropped."""
    recorder.fallback = lambda _: httpx.Response(200, json={"sip_trunk_id": "ST_x"})
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    with LiveKitSIP(url, KEY, SECRET, http=http) as lk:
        lk.delete_trunk("ST_x")
    assert str(recorder.requests[0].url) == f"{expected}/twirp/livekit.SIP/DeleteSIPTrunk"


@pytest.mark.parametrize("url", ["", "livekit.test", "ftp://livekit.test", "https://"])
def test_bad_base_url_is_refused(url: str) -> None:
    """A URL without an http(s)/ws(s) scheme and host fails at construction."""
    with pytest.raises(ValueError, match="LiveKit URL"):
        LiveKitSIP(url, KEY, SECRET)


def test_constructor_checks_arguments() -> None:
    """Missing credentials, non-positive timeouts and tiny token lifetimes are refused."""
    with pytest.raises(ValueError, match="key and secret"):
        LiveKitSIP(BASE, "", SECRET)
    with pytest.raises(ValueError, match="key and secret"):
        LiveKitSIP(BASE, KEY, "")
    with pytest.raises(ValueError, match="timeout"):
        LiveKitSIP(BASE, KEY, SECRET, timeout=0)
    with pytest.raises(ValueError, match="token_ttl"):
        LiveKitSIP(BASE, KEY, SECRET, token_ttl=5)


def test_own_http_client_has_explicit_timeouts() -> None:
    """Without an injected client, every timeout is set and connect is capped at 3 s."""
    with LiveKitSIP(BASE, KEY, SECRET, timeout=7.5) as lk:
        timeout = lk._http.timeout
        assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (3, 7.5, 7.5, 7.5)
    with LiveKitSIP(BASE, KEY, SECRET, timeout=2) as lk:
        assert lk._http.timeout.connect == 2
    assert lk._http.is_closed


def test_injected_http_client_is_not_closed(recorder: Recorder) -> None:
    """close() leaves a caller-owned httpx.Client open."""
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    LiveKitSIP(BASE, KEY, SECRET, http=http).close()
    assert not http.is_closed
    http.close()


def test_repr_hides_the_secret() -> None:
    """The client's repr names the URL and key, never the secret."""
    with LiveKitSIP(BASE, KEY, SECRET) as lk:
        assert SECRET not in repr(lk)
        assert KEY in repr(lk)


# --------------------------------------------------------------------------- auth


def test_token_claims(client: LiveKitSIP, recorder: Recorder) -> None:
    """HS256 token: iss/sub = key, nbf one minute back, exp = now + ttl, sip.admin grant."""
    recorder.reply({"sip_trunk_id": "ST_x"})
    client.delete_trunk("ST_x")
    token = recorder.requests[0].headers["authorization"].removeprefix("Bearer ")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert decode(recorder.requests[0]) == {
        "iss": KEY,
        "sub": KEY,
        "nbf": int(NOW) - 60,
        "exp": int(NOW) + 600,
        "sip": {"admin": True},
    }


def test_token_is_cached_then_reminted_at_half_life(
    client: LiveKitSIP, recorder: Recorder, clock: Clock
) -> None:
    """The token is reused while more than half its life is left, then minted again."""
    recorder.fallback = lambda _: httpx.Response(200, json={"sip_trunk_id": "ST_x"})
    client.delete_trunk("ST_x")
    clock.now = NOW + 299
    client.delete_trunk("ST_x")
    clock.now = NOW + 300
    client.delete_trunk("ST_x")
    clock.now = NOW + 301
    client.delete_trunk("ST_x")
    tokens = [r.headers["authorization"] for r in recorder.requests]
    assert tokens[0] == tokens[1]
    assert tokens[2] != tokens[1]
    assert tokens[3] == tokens[2]
    assert decode(recorder.requests[2])["exp"] == int(NOW) + 300 + 600
    assert decode(recorder.requests[2])["nbf"] == int(NOW) + 300 - 60


def test_custom_token_ttl(recorder: Recorder, clock: Clock) -> None:
    """token_ttl sets exp and the re-mint point."""
    recorder.fallback = lambda _: httpx.Response(200, json={"sip_trunk_id": "ST_x"})
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    with LiveKitSIP(BASE, KEY, SECRET, http=http, clock=clock, token_ttl=120) as lk:
        lk.delete_trunk("ST_x")
        clock.now = NOW + 59
        lk.delete_trunk("ST_x")
        clock.now = NOW + 60
        lk.delete_trunk("ST_x")
    first, second, third = (r.headers["authorization"] for r in recorder.requests)
    assert first == second != third
    assert decode(recorder.requests[0])["exp"] == int(NOW) + 120


def test_short_dev_secret_signs_without_warnings(recorder: Recorder) -> None:
    """livekit-server --dev's 6-byte 'secret' works (filterwarnings=error would catch a warning)."""
    recorder.reply({"sip_trunk_id": "ST_x"})
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    with LiveKitSIP(BASE, "devkey", "secret", http=http) as lk:
        lk.delete_trunk("ST_x")
    token = recorder.requests[0].headers["authorization"].removeprefix("Bearer ")
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(b"secret", signing_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == "devkey"


# --------------------------------------------------------------------------- creates


def test_create_inbound_trunk_body_and_answer(client: LiveKitSIP, recorder: Recorder) -> None:
    """The body wraps the trunk in "trunk", sends the password, omits the id and defaults."""
    recorder.reply(inbound_answer())
    created = client.create_inbound_trunk(new_inbound())
    assert str(recorder.requests[0].url).endswith("/CreateSIPInboundTrunk")
    assert recorder.body() == {
        "trunk": {
            "name": "acme-in",
            "metadata": '{"job":"j1"}',
            "numbers": ["+15550001111"],
            "allowed_addresses": ["203.0.113.0/24"],
            "auth_username": "inuser",
            "auth_password": IN_PASSWORD,
        }
    }
    assert created.sip_trunk_id == "ST_dmjKZjcM6NFA"
    assert created.auth_password.get_secret_value() == IN_PASSWORD
    assert created.model_dump(exclude={"sip_trunk_id"}) == new_inbound().model_dump(
        exclude={"sip_trunk_id"}
    )


def test_create_outbound_trunk_body_and_answer(client: LiveKitSIP, recorder: Recorder) -> None:
    """Outbound trunks carry address, transport name, numbers and digest credentials."""
    recorder.reply(outbound_answer())
    created = client.create_outbound_trunk(new_outbound())
    assert str(recorder.requests[0].url).endswith("/CreateSIPOutboundTrunk")
    assert recorder.body() == {
        "trunk": {
            "name": "acme-out",
            "metadata": "m-out",
            "address": "sip.example.com:5061",
            "transport": "SIP_TRANSPORT_TLS",
            "numbers": ["+15550001111"],
            "auth_username": "outuser",
            "auth_password": OUT_PASSWORD,
        }
    }
    assert created.sip_trunk_id == "ST_UfRNKThLsFUx"
    assert created.transport is SIPTransport.SIP_TRANSPORT_TLS
    assert created.auth_password.get_secret_value() == OUT_PASSWORD


def test_create_never_sends_an_id(client: LiveKitSIP, recorder: Recorder) -> None:
    """A model that already holds an id (e.g. read back) is created without it."""
    recorder.reply(inbound_answer())
    trunk = new_inbound().model_copy(update={"sip_trunk_id": "ST_old"})
    client.create_inbound_trunk(trunk)
    assert "sip_trunk_id" not in recorder.body()["trunk"]


def test_create_outbound_with_defaults_omits_them(client: LiveKitSIP, recorder: Recorder) -> None:
    """AUTO transport and empty credentials are left out of the body."""
    recorder.reply(outbound_answer(transport="SIP_TRANSPORT_AUTO", auth_password=""))
    client.create_outbound_trunk(OutboundTrunk(address="10.0.0.1", numbers=["+15550001111"]))
    assert recorder.body() == {"trunk": {"address": "10.0.0.1", "numbers": ["+15550001111"]}}


def test_create_dispatch_rule_body_and_answer(client: LiveKitSIP, recorder: Recorder) -> None:
    """The body wraps the rule in "dispatch_rule" with the oneof and agent dispatch."""
    recorder.reply(rule_answer())
    created = client.create_dispatch_rule(new_rule())
    assert str(recorder.requests[0].url).endswith("/CreateSIPDispatchRule")
    assert recorder.body() == {
        "dispatch_rule": {
            "name": "acme-rule",
            "metadata": "rm",
            "trunk_ids": ["ST_dmjKZjcM6NFA"],
            "rule": {"dispatch_rule_individual": {"room_prefix": "call-"}},
            "room_config": {"agents": [{"agent_name": "receptionist", "metadata": "am"}]},
        }
    }
    assert created.sip_dispatch_rule_id == "SDR_9YP9RwQAe7N5"
    assert created.rule.dispatch_rule_individual == DispatchRuleIndividual(room_prefix="call-")
    assert created.room_config == RoomConfig(
        agents=[RoomAgentDispatch(agent_name="receptionist", metadata="am")]
    )


def test_dispatch_rule_flags_and_empty_individual(client: LiveKitSIP, recorder: Recorder) -> None:
    """An empty oneof member is still sent; booleans go out only when set."""
    recorder.reply(rule_answer())
    rule = DispatchRule(
        trunk_ids=["ST_a"],
        rule=DispatchRuleSpec(
            dispatch_rule_individual=DispatchRuleIndividual(pin="1234", no_randomness=True)
        ),
        hide_phone_number=True,
    )
    client.create_dispatch_rule(rule)
    assert recorder.body() == {
        "dispatch_rule": {
            "trunk_ids": ["ST_a"],
            "rule": {"dispatch_rule_individual": {"pin": "1234", "no_randomness": True}},
            "hide_phone_number": True,
        }
    }
    recorder.reply(rule_answer())
    client.create_dispatch_rule(
        DispatchRule(
            trunk_ids=["ST_a"],
            rule=DispatchRuleSpec(dispatch_rule_individual=DispatchRuleIndividual()),
        )
    )
    assert recorder.body()["dispatch_rule"]["rule"] == {"dispatch_rule_individual": {}}


def test_dispatch_rule_spec_is_a_oneof() -> None:
    """Setting two rule kinds at once is refused before anything is sent."""
    with pytest.raises(ValueError, match="exactly one"):
        DispatchRuleSpec(
            dispatch_rule_individual=DispatchRuleIndividual(),
            dispatch_rule_direct=DispatchRuleDirect(room_name="r"),
        )


# --------------------------------------------------------------------------- secrets


def test_passwords_never_show_in_models() -> None:
    """repr/str/model_dump/model_dump_json hide passwords; only to_wire reveals them."""
    for model, password in ((new_inbound(), IN_PASSWORD), (new_outbound(), OUT_PASSWORD)):
        assert password not in repr(model)
        assert password not in str(model)
        assert password not in json.dumps(model.model_dump(mode="json"))
        assert password not in model.model_dump_json()
        assert model.to_wire()["auth_password"] == password


def test_passwords_never_show_in_errors_or_logs(
    client: LiveKitSIP, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed create keeps the password out of the exception and the log."""
    caplog.set_level(logging.DEBUG, logger="worker.livekit")
    recorder.reply({"code": "invalid_argument", "msg": "bad trunk"}, status=400)
    recorder.answers.append(httpx.ReadTimeout("timed out"))
    recorder.reply({"code": "internal", "msg": "boom"}, status=500)
    for _ in range(3):
        with pytest.raises(LiveKitError) as info:
            client.create_outbound_trunk(new_outbound())
        assert OUT_PASSWORD not in str(info.value)
        assert OUT_PASSWORD not in repr(info.value)
        assert info.value.__cause__ is None
    assert OUT_PASSWORD in recorder.requests[0].content.decode()
    assert caplog.records
    for record in caplog.records:
        assert OUT_PASSWORD not in record.getMessage()
        assert OUT_PASSWORD not in repr(record.__dict__)


def test_unreadable_answer_hides_returned_password(client: LiveKitSIP, recorder: Recorder) -> None:
    """A 2xx this client cannot parse fails as outcome-unknown without echoing the body."""
    recorder.reply(inbound_answer(numbers="not-a-list"))
    with pytest.raises(LiveKitServerError) as info:
        client.create_inbound_trunk(new_inbound())
    assert info.value.outcome_unknown
    assert info.value.status == 200
    assert "numbers" in str(info.value)
    assert IN_PASSWORD not in str(info.value)


def test_non_json_success_body(client: LiveKitSIP, recorder: Recorder) -> None:
    """A 200 that is not a JSON object is a server error with an unknown outcome."""
    recorder.answers.append(httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(LiveKitServerError) as info:
        client.create_outbound_trunk(new_outbound())
    assert info.value.outcome_unknown


# --------------------------------------------------------------------------- reads


def test_get_trunks_unwrap_and_parse_full_answers(client: LiveKitSIP, recorder: Recorder) -> None:
    """Get answers {"trunk": ...}; unknown fields are ignored, enums read by name."""
    recorder.reply({"trunk": inbound_answer()})
    recorder.reply({"trunk": outbound_answer(transport="SIP_TRANSPORT_UDP")})
    inbound = client.get_inbound_trunk("ST_dmjKZjcM6NFA")
    outbound = client.get_outbound_trunk("ST_UfRNKThLsFUx")
    assert inbound == new_inbound().model_copy(update={"sip_trunk_id": "ST_dmjKZjcM6NFA"})
    assert outbound.transport is SIPTransport.SIP_TRANSPORT_UDP
    assert outbound.address == "sip.example.com:5061"
    assert str(recorder.requests[1].url).endswith("/GetSIPOutboundTrunk")
    assert recorder.body(1) == {"sip_trunk_id": "ST_UfRNKThLsFUx"}


def test_nulls_and_missing_fields_read_as_empty(client: LiveKitSIP, recorder: Recorder) -> None:
    """null or absent lists/strings/messages become their empty values."""
    recorder.reply(
        {
            "trunk": {
                "sip_trunk_id": "ST_a",
                "name": None,
                "numbers": None,
                "allowed_addresses": None,
                "auth_password": None,
                "transport": None,
            }
        }
    )
    recorder.reply(
        {
            "items": [
                {"sip_dispatch_rule_id": "SDR_a", "rule": None, "trunk_ids": None},
                rule_answer(room_config={"agents": None}),
                rule_answer(sip_dispatch_rule_id="SDR_c", room_config=None),
            ]
        }
    )
    trunk = client.get_outbound_trunk("ST_a")
    assert (trunk.name, trunk.numbers, trunk.auth_password.get_secret_value()) == ("", [], "")
    assert trunk.transport is SIPTransport.SIP_TRANSPORT_AUTO
    rules = client.list_dispatch_rules()
    assert rules[0].trunk_ids == []
    assert rules[0].rule == DispatchRuleSpec()
    assert rules[1].room_config == RoomConfig()
    assert rules[2].room_config is None


def test_get_without_trunk_is_an_unreadable_answer(client: LiveKitSIP, recorder: Recorder) -> None:
    """{"trunk": null} cannot be a trunk."""
    recorder.reply({"trunk": None})
    with pytest.raises(LiveKitServerError, match="cannot read"):
        client.get_inbound_trunk("ST_a")


def test_list_sends_filters_with_server_names(client: LiveKitSIP, recorder: Recorder) -> None:
    """Filters use numbers / trunk_ids / dispatch_rule_ids; empty ones are left out."""
    recorder.fallback = lambda _: httpx.Response(200, json={"items": []})
    client.list_inbound_trunks(numbers=["+15550001111"])
    client.list_outbound_trunks(trunk_ids=["ST_a", "ST_b"])
    client.list_dispatch_rules(trunk_ids=["ST_a"], rule_ids=["SDR_a"])
    client.list_inbound_trunks()
    paths = [r.url.path.rsplit("/", 1)[1] for r in recorder.requests]
    assert paths == [
        "ListSIPInboundTrunk",
        "ListSIPOutboundTrunk",
        "ListSIPDispatchRule",
        "ListSIPInboundTrunk",
    ]
    page = {"limit": 500}
    assert recorder.body(0) == {"numbers": ["+15550001111"], "page": page}
    assert recorder.body(1) == {"trunk_ids": ["ST_a", "ST_b"], "page": page}
    assert recorder.body(2) == {"dispatch_rule_ids": ["SDR_a"], "trunk_ids": ["ST_a"], "page": page}
    assert recorder.body(3) == {"page": page}


def test_list_refuses_a_bare_string(client: LiveKitSIP) -> None:
    """numbers="+1555..." would be sent as characters; it is refused instead."""
    with pytest.raises(TypeError, match="sequence of strings"):
        client.list_inbound_trunks(numbers="+15550001111")


def test_list_pages_until_an_empty_page(client: LiveKitSIP, recorder: Recorder) -> None:
    """Two full pages, then an empty one: after_id follows the last id of each page."""
    first = [inbound_answer(sip_trunk_id=f"ST_a{i:04d}") for i in range(500)]
    second = [inbound_answer(sip_trunk_id=f"ST_b{i:04d}") for i in range(500)]
    recorder.reply({"items": first})
    recorder.reply({"items": second})
    recorder.reply({"items": []})
    trunks = client.list_inbound_trunks(numbers=["+15550001111"])
    assert len(trunks) == 1000
    assert trunks[0].sip_trunk_id == "ST_a0000"
    assert trunks[-1].sip_trunk_id == "ST_b0499"
    pages = [recorder.body(i)["page"] for i in range(3)]
    assert pages == [
        {"limit": 500},
        {"limit": 500, "after_id": "ST_a0499"},
        {"limit": 500, "after_id": "ST_b0499"},
    ]
    assert all(recorder.body(i)["numbers"] == ["+15550001111"] for i in range(3))


def test_list_stops_on_a_short_page(client: LiveKitSIP, recorder: Recorder) -> None:
    """A page shorter than the limit (the open server's single answer) ends the listing."""
    recorder.reply({"items": [outbound_answer(), outbound_answer(sip_trunk_id="ST_z")]})
    trunks = client.list_outbound_trunks()
    assert [t.sip_trunk_id for t in trunks] == ["ST_UfRNKThLsFUx", "ST_z"]
    assert len(recorder.requests) == 1


def test_list_stops_when_the_server_repeats_a_page(client: LiveKitSIP, recorder: Recorder) -> None:
    """A server that ignores after_id cannot make the client loop forever."""
    page = [rule_answer(sip_dispatch_rule_id=f"SDR_{i:04d}") for i in range(500)]
    recorder.fallback = lambda _: httpx.Response(200, json={"items": page})
    rules = client.list_dispatch_rules()
    assert len(rules) == 500
    assert len(recorder.requests) == 2


def test_list_skips_null_items(client: LiveKitSIP, recorder: Recorder) -> None:
    """A trunk_ids filter answers null for unknown ids; they are skipped."""
    recorder.reply({"items": [inbound_answer(), None]})
    trunks = client.list_inbound_trunks(trunk_ids=["ST_dmjKZjcM6NFA", "ST_gone"])
    assert [t.sip_trunk_id for t in trunks] == ["ST_dmjKZjcM6NFA"]


def test_list_with_null_items_array(client: LiveKitSIP, recorder: Recorder) -> None:
    """{"items": null} is an empty list."""
    recorder.reply({"items": None})
    assert client.list_dispatch_rules() == []


# --------------------------------------------------------------------------- updates, deletes


def test_update_inbound_replaces_without_id(client: LiveKitSIP, recorder: Recorder) -> None:
    """Update sends the id beside "replace", never inside it."""
    recorder.reply(inbound_answer(name="renamed"))
    replace = new_inbound().model_copy(update={"sip_trunk_id": "ST_x", "name": "renamed"})
    updated = client.update_inbound_trunk("ST_dmjKZjcM6NFA", replace)
    assert str(recorder.requests[0].url).endswith("/UpdateSIPInboundTrunk")
    body = recorder.body()
    assert body["sip_trunk_id"] == "ST_dmjKZjcM6NFA"
    assert body["replace"] == {**new_inbound().to_wire(), "name": "renamed"}
    assert body["replace"]["auth_password"] == IN_PASSWORD
    assert updated.name == "renamed"


def test_update_outbound(client: LiveKitSIP, recorder: Recorder) -> None:
    """Outbound update uses UpdateSIPOutboundTrunk with a full replacement."""
    recorder.reply(outbound_answer(transport="SIP_TRANSPORT_UDP"))
    replace = new_outbound().model_copy(update={"transport": SIPTransport.SIP_TRANSPORT_UDP})
    updated = client.update_outbound_trunk("ST_UfRNKThLsFUx", replace)
    assert str(recorder.requests[0].url).endswith("/UpdateSIPOutboundTrunk")
    assert recorder.body() == {"sip_trunk_id": "ST_UfRNKThLsFUx", "replace": replace.to_wire()}
    assert recorder.body()["replace"]["transport"] == "SIP_TRANSPORT_UDP"
    assert updated.transport is SIPTransport.SIP_TRANSPORT_UDP


def test_update_dispatch_rule(client: LiveKitSIP, recorder: Recorder) -> None:
    """Rule update sends sip_dispatch_rule_id beside "replace"."""
    recorder.reply(rule_answer())
    client.update_dispatch_rule("SDR_9YP9RwQAe7N5", new_rule())
    assert str(recorder.requests[0].url).endswith("/UpdateSIPDispatchRule")
    assert recorder.body() == {
        "sip_dispatch_rule_id": "SDR_9YP9RwQAe7N5",
        "replace": new_rule().to_wire(),
    }


def test_deletes(client: LiveKitSIP, recorder: Recorder) -> None:
    """DeleteSIPTrunk and DeleteSIPDispatchRule take the id and return nothing."""
    recorder.reply({"sip_trunk_id": "ST_a", "kind": "TRUNK_LEGACY", "inbound_addresses": []})
    recorder.reply(rule_answer())
    client.delete_trunk("ST_a")
    client.delete_dispatch_rule("SDR_9YP9RwQAe7N5")
    assert str(recorder.requests[0].url).endswith("/DeleteSIPTrunk")
    assert recorder.body(0) == {"sip_trunk_id": "ST_a"}
    assert str(recorder.requests[1].url).endswith("/DeleteSIPDispatchRule")
    assert recorder.body(1) == {"sip_dispatch_rule_id": "SDR_9YP9RwQAe7N5"}


def test_delete_unknown_rule_is_not_found(client: LiveKitSIP, recorder: Recorder) -> None:
    """LiveKit answers not_found for an unknown rule id."""
    recorder.reply({"code": "not_found", "msg": "requested sip dispatch rule does not exist"}, 404)
    with pytest.raises(LiveKitNotFound) as info:
        client.delete_dispatch_rule("SDR_gone")
    assert str(info.value) == "DeleteSIPDispatchRule: requested sip dispatch rule does not exist"


# --------------------------------------------------------------------------- errors via the client


def _json(status: int, code: str, msg: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "msg": msg}, headers=headers)


Expected = tuple[type[LiveKitError], str, bool, bool]  # class, code, retryable, outcome_unknown


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            _json(400, "invalid_argument", "missing trunk"),
            (LiveKitRejected, "livekit_rejected", False, False),
        ),
        (
            _json(404, "not_found", "requested sip trunk does not exist"),
            (LiveKitNotFound, "livekit_not_found", False, False),
        ),
        (
            _json(412, "failed_precondition", "nope"),
            (LiveKitRejected, "livekit_rejected", False, False),
        ),
        (_json(500, "internal", "boom"), (LiveKitServerError, "livekit_server_error", True, True)),
        (
            _json(500, "internal", "sip not connected (redis required)"),
            (LiveKitServerError, "livekit_server_error", True, True),
        ),
        (
            _json(503, "unavailable", "later"),
            (LiveKitServerError, "livekit_server_error", True, True),
        ),
        (
            _json(429, "resource_exhausted", "slow", **{"Retry-After": "3"}),
            (LiveKitRateLimited, "livekit_rate_limited", True, False),
        ),
        (
            httpx.Response(401, text="invalid authorization token"),
            (LiveKitUnauthorized, "livekit_unauthorized", False, False),
        ),
        (
            _json(
                400,
                "invalid_argument",
                'Conflicting inbound SIP Trunks: "<new>" and "ST_old", using the same number(s) '
                '["+15550001111"] without AllowedNumbers set',
            ),
            (InboundNumberConflict, "number_conflict", False, False),
        ),
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            (LiveKitUnavailable, "livekit_unavailable", True, False),
        ),
        (httpx.ReadTimeout("timed out"), (LiveKitTimeout, "livekit_timeout", True, True)),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            (LiveKitTimeout, "livekit_timeout", True, True),
        ),
    ],
)
def test_failures_raise_the_taxonomy(
    client: LiveKitSIP,
    recorder: Recorder,
    answer: httpx.Response | Exception,
    expected: Expected,
) -> None:
    """HTTP errors and transport failures surface as the documented classes."""
    recorder.answers.append(answer)
    with pytest.raises(LiveKitError) as info:
        client.create_inbound_trunk(new_inbound())
    error = info.value
    assert (type(error), error.code, error.retryable, error.outcome_unknown) == expected
    assert error.method == "CreateSIPInboundTrunk"
    assert IN_PASSWORD not in str(error)
    if isinstance(error, LiveKitRateLimited):
        assert error.retry_after == 3.0
    if isinstance(error, InboundNumberConflict):
        assert error.conflicting_id == "ST_old"


def test_update_conflict_skips_the_updated_trunk(client: LiveKitSIP, recorder: Recorder) -> None:
    """LiveKit may name the trunk being updated first; conflicting_id is the other one."""
    recorder.reply(
        {
            "code": "invalid_argument",
            "msg": 'Conflicting inbound SIP Trunks: "ST_other" and "ST_mine", using the same '
            'number(s) ["+15550001111"] without AllowedNumbers set',
        },
        status=400,
    )
    with pytest.raises(InboundNumberConflict) as info:
        client.update_inbound_trunk("ST_mine", new_inbound())
    assert info.value.conflicting_id == "ST_other"


def test_dispatch_rule_conflict_through_client(client: LiveKitSIP, recorder: Recorder) -> None:
    """The dispatch-rule conflict carries the existing rule id."""
    recorder.reply(
        {
            "code": "invalid_argument",
            "msg": "Dispatch rule for the same trunk, inbound number, number, and PIN "
            'combination already exists in dispatch rule "SDR_old" "<blank name>"',
        },
        status=400,
    )
    with pytest.raises(DispatchRuleConflict) as info:
        client.create_dispatch_rule(new_rule())
    assert info.value.conflicting_id == "SDR_old"


# --------------------------------------------------------------------------- threads


def test_concurrent_creates_share_one_client(recorder: Recorder) -> None:
    """The saga's two trunk creates run on two threads against one client."""
    barrier = threading.Barrier(2, timeout=5)

    def answer(request: httpx.Request) -> httpx.Response:
        barrier.wait()  # both requests are in flight at once
        if request.url.path.endswith("CreateSIPInboundTrunk"):
            return httpx.Response(200, json=inbound_answer())
        return httpx.Response(200, json=outbound_answer())

    recorder.fallback = answer
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    with LiveKitSIP(BASE, KEY, SECRET, http=http) as lk:

        def run(name: str, call: Callable[[], InboundTrunk | OutboundTrunk]) -> None:
            try:
                results[name] = call().sip_trunk_id
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [
            threading.Thread(
                target=run, args=("in", lambda: lk.create_inbound_trunk(new_inbound()))
            ),
            threading.Thread(
                target=run, args=("out", lambda: lk.create_outbound_trunk(new_outbound()))
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    http.close()
    assert errors == []
    assert results == {"in": "ST_dmjKZjcM6NFA", "out": "ST_UfRNKThLsFUx"}
    tokens = {r.headers["authorization"] for r in recorder.requests}
    assert len(tokens) == 1


# --------------------------------------------------------------------------- whole objects

# Fields this client models nowhere, as an operator sets them (and one from a later server).
UNMODELLED = {"krisp_enabled": True, "headers": {"X-Tenant": "acme"},
              "media": {"only_listed_codecs": False, "codecs": [],
                        "encryption": "SIP_MEDIA_ENCRYPT_REQUIRE"},
              "field_of_a_later_server": {"kept": [1, 2]}}


def test_read_trunk_objects_keep_every_field(client: LiveKitSIP, recorder: Recorder) -> None:
    """A trunk read whole is the server's answer as is, unmodelled and unknown fields too."""
    recorder.reply({"trunk": inbound_answer(**UNMODELLED)})
    recorder.reply({"trunk": outbound_answer(**UNMODELLED)})
    inbound = client.read_object(ObjectKind.INBOUND_TRUNK, "ST_dmjKZjcM6NFA")
    outbound = client.read_object(ObjectKind.OUTBOUND_TRUNK, "ST_UfRNKThLsFUx")
    assert [r.url.path for r in recorder.requests] == [
        "/twirp/livekit.SIP/GetSIPInboundTrunk", "/twirp/livekit.SIP/GetSIPOutboundTrunk"]
    assert recorder.body(0) == {"sip_trunk_id": "ST_dmjKZjcM6NFA"}
    assert recorder.body(1) == {"sip_trunk_id": "ST_UfRNKThLsFUx"}
    assert inbound == LiveKitObject(ObjectKind.INBOUND_TRUNK, inbound_answer(**UNMODELLED))
    assert outbound.fields == outbound_answer(**UNMODELLED)
    assert outbound.object_id == "ST_UfRNKThLsFUx"


def test_read_rule_object_lists_by_id(client: LiveKitSIP, recorder: Recorder) -> None:
    """LiveKit has no GetSIPDispatchRule: a rule is read by a list filtered on its id."""
    recorder.reply({"items": [rule_answer(attributes={"team": "sales"})]})
    rule = client.read_object(ObjectKind.DISPATCH_RULE, "SDR_9YP9RwQAe7N5")
    assert recorder.requests[0].url.path == "/twirp/livekit.SIP/ListSIPDispatchRule"
    assert recorder.body() == {"dispatch_rule_ids": ["SDR_9YP9RwQAe7N5"]}
    assert rule.fields == rule_answer(attributes={"team": "sales"})


@pytest.mark.parametrize("items", [[None], [], None])
def test_read_unknown_rule_is_not_found(client: LiveKitSIP, recorder: Recorder,
                                        items: Any) -> None:
    """An unknown id is answered with a null item (or none at all): LiveKitNotFound."""
    recorder.reply({"items": items})
    with pytest.raises(LiveKitNotFound) as info:
        client.read_object(ObjectKind.DISPATCH_RULE, "SDR_gone")
    assert "SDR_gone" in str(info.value)


def test_read_unknown_trunk_is_not_found(client: LiveKitSIP, recorder: Recorder) -> None:
    recorder.reply({"code": "not_found", "msg": "requested sip trunk does not exist"}, status=404)
    with pytest.raises(LiveKitNotFound):
        client.read_object(ObjectKind.OUTBOUND_TRUNK, "ST_gone")


@pytest.mark.parametrize("answer", [{"trunk": None}, {"trunk": outbound_answer()}, {}])
def test_read_answer_for_another_object_is_a_server_error(
    client: LiveKitSIP, recorder: Recorder, answer: dict[str, Any],
) -> None:
    """An answer without the asked-for object is not taken for it (nor echoed: passwords)."""
    recorder.reply(answer)
    with pytest.raises(LiveKitServerError) as info:
        client.read_object(ObjectKind.INBOUND_TRUNK, "ST_dmjKZjcM6NFA")
    assert info.value.outcome_unknown
    assert OUT_PASSWORD not in str(info.value)


@pytest.mark.parametrize(("kind", "answer", "method"), [
    (ObjectKind.INBOUND_TRUNK, inbound_answer, "UpdateSIPInboundTrunk"),
    (ObjectKind.OUTBOUND_TRUNK, outbound_answer, "UpdateSIPOutboundTrunk"),
    (ObjectKind.DISPATCH_RULE, rule_answer, "UpdateSIPDispatchRule"),
])
def test_replace_object_sends_every_field_back(
    client: LiveKitSIP, recorder: Recorder, kind: ObjectKind,
    answer: Callable[..., dict[str, Any]], method: str,
) -> None:
    """The request body is {id, replace: the object whole}: nothing dropped, nothing added."""
    changed = LiveKitObject(kind, answer(**UNMODELLED)).merged({"name": "renamed"})
    recorder.reply(changed.fields)
    stored = client.replace_object(changed)
    assert recorder.requests[0].url.path == f"/twirp/livekit.SIP/{method}"
    assert recorder.body() == {kind.id_field: changed.object_id,
                               "replace": answer(**UNMODELLED, name="renamed")}
    assert stored == changed


def test_replace_object_names_the_other_trunk_in_a_conflict(
    client: LiveKitSIP, recorder: Recorder,
) -> None:
    """LiveKit may name the replaced trunk first: the conflict is with the other one."""
    recorder.reply({"code": "invalid_argument", "msg": (
        'Conflicting inbound SIP Trunks: "ST_dmjKZjcM6NFA" and "ST_other", using the same '
        "number(s) [15550001111] without AllowedNumbers set")}, status=400)
    with pytest.raises(InboundNumberConflict) as info:
        client.replace_object(LiveKitObject(ObjectKind.INBOUND_TRUNK, inbound_answer()))
    assert info.value.conflicting_id == "ST_other"


def test_replace_object_keeps_passwords_out_of_errors_and_logs(
    client: LiveKitSIP, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="worker.livekit")
    recorder.reply({"code": "invalid_argument", "msg": "bad trunk"}, status=400)
    recorder.reply({"trunk": "not an object"})
    outbound = LiveKitObject(ObjectKind.OUTBOUND_TRUNK, outbound_answer())
    with pytest.raises(LiveKitRejected) as refused:
        client.replace_object(outbound)
    with pytest.raises(LiveKitServerError) as unreadable:
        client.replace_object(outbound)
    for error in (refused.value, unreadable.value):
        assert OUT_PASSWORD not in f"{error} {error!r}"
    assert OUT_PASSWORD in recorder.requests[0].content.decode()
    assert caplog.records
    for record in caplog.records:
        assert OUT_PASSWORD not in repr(record.__dict__)
