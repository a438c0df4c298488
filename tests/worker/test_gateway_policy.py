"""The gateway address policy: no outboundPstn inside the platform unless an operator allows
it; nothing is resolved."""

from __future__ import annotations

import pytest

from tests.worker.fake_livekit import request_data
from worker.config import ConfigError, Settings
from worker.contract import InvalidRequest, parse_change, parse_request
from worker.gateway_policy import GatewayPolicy

INSIDE = [
    "127.0.0.1", "127.0.0.1:5060", "127.255.255.254", "0.0.0.0", "10.1.2.3",  # noqa: S104
    "172.16.0.1",
    "172.31.255.255", "192.168.1.1:5061", "169.254.169.254", "169.254.170.2",
    "100.100.100.200", "224.0.0.1", "255.255.255.255", "[::1]", "[::]", "[fe80::1]:5060",
    "[fd00:ec2::254]", "[::ffff:127.0.0.1]", "[::ffff:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]",
    "[2002:7f00:1::]", "[::127.0.0.1]", "localhost", "LocalHost.", "sip.localhost:5060",
    "metadata", "metadata.goog", "metadata.google.internal", "pbx.corp.internal",
]
NUMERIC_SPELLINGS = ["2130706433", "0x7f000001", "0X7F000001", "0177.0.0.1", "127.1",
                     "0x7f.1", "010.0.0.1", "2130706433:5060", "1.2.3.04"]
OUTSIDE = ["sip.gateway.com", "203.0.113.5:5060", "8.8.8.8", "[2001:db8::1]:5061",
           "[2606:4700::1111]", "1e100.net", "sip-1.example", "gateway"]


def refusal(address: str, policy: GatewayPolicy | None = None) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(request_data(outboundPstn=address), gateway_policy=policy)
    (error,) = caught.value.errors
    assert error.field == "outboundPstn"
    return error.message


@pytest.mark.parametrize("address", INSIDE)
def test_targets_inside_the_platform_are_refused_by_default(address: str) -> None:
    message = refusal(address)
    assert "inside the platform" in message
    assert "TRUNKLINE_GATEWAY_ALLOWLIST" in message


@pytest.mark.parametrize("address", NUMERIC_SPELLINGS)
def test_numeric_spellings_of_ipv4_are_refused(address: str) -> None:
    assert "a.b.c.d" in refusal(address)


@pytest.mark.parametrize("address", OUTSIDE)
def test_public_and_documentation_targets_pass(address: str) -> None:
    assert parse_request(request_data(outboundPstn=address)).outbound_pstn == address


def test_the_allowlist_allows_exactly_what_it_names() -> None:
    policy = GatewayPolicy.parse(["10.20.0.0/16", " 127.0.0.1 ", "PBX.corp.internal", ""])
    for address in ("10.20.3.4:5060", "127.0.0.1", "pbx.corp.internal"):
        assert parse_request(request_data(outboundPstn=address),
                             gateway_policy=policy).outbound_pstn == address
    for address in ("10.21.0.1", "127.0.0.2", "other.corp.internal", "169.254.169.254"):
        assert "inside the platform" in refusal(address, policy)


def test_an_update_is_held_to_the_same_policy() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_change({"outboundPstn": "169.254.169.254"})
    assert [e.field for e in caught.value.errors] == ["outboundPstn"]
    allowed = GatewayPolicy.parse(["169.254.0.0/16"])
    assert parse_change({"outboundPstn": "169.254.169.254"},
                        gateway_policy=allowed).values.outbound_pstn == "169.254.169.254"


def test_the_setting_is_read_and_a_bad_entry_names_it() -> None:
    settings = Settings.from_env({"TRUNKLINE_GATEWAY_ALLOWLIST": "10.0.0.0/8,pbx.lan"})
    assert settings.gateway_policy == GatewayPolicy.parse(["10.0.0.0/8", "pbx.lan"])
    assert Settings.from_env({}).gateway_policy == GatewayPolicy()
    with pytest.raises(ConfigError, match="TRUNKLINE_GATEWAY_ALLOWLIST: 'not a net/x'"):
        Settings.from_env({"TRUNKLINE_GATEWAY_ALLOWLIST": "10.0.0.0/8,not a net/x"})
