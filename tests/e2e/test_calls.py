"""A number set up through Trunkline carries real calls: sipp -> LiveKit's SIP bridge ->
livekit-server -> a real agent, and back; and out through the customer's own gateway.

Every number is provisioned, changed and released through the public HTTP API (the seed
endpoint, PATCH, DELETE) -> Redis -> a real Celery worker -> livekit-server. Calls come from
a sipp caller whose media is an RTP endpoint of the test (a 700 Hz tone, RFC 2833 digits);
the agent (tests/e2e/agent.py, on livekit-agents) answers with a 440 Hz tone and reports
what it hears.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    AgentProcess,
    Bridge,
    Call,
    LiveKitRooms,
    Sipp,
    TwirpError,
    free_port,
    gateway_transports,
    gateway_verdicts,
    place_call,
    start_gateway,
    unique_prefix,
    wait_until,
)
from tests.e2e.lifecycle import AGENT, OTHER_AGENT, PASSWORD, USERNAME, Customer
from tests.e2e.media import PCMU, level_and_peak

pytestmark = pytest.mark.e2e

CALLER_NUMBER = "+15559870000"
CALLEE_NUMBER = "+15557654321"
CALLER_TONE_HZ = 700.0  # what tests/e2e/media.py plays
AGENT_TONE_HZ = 440.0  # what tests/e2e/agent.py plays
# A tone is "heard" at this level (0..1 of full scale; both sides play 0.3, silence is 0)
# and within this many Hz of its frequency (1 Hz FFT bins at the agent, 1 Hz at the caller).
HEARD_LEVEL = 0.05
HEARD_HZ = 15.0
# Bounds. A routed call's room appears in well under a second; the agent's job, its join
# and the bridge's 200 OK take a few seconds on a loaded 2-core machine.
ROOM_WAIT = 15.0
ANSWER_WAIT = 30.0
MEDIA_WAIT = 15.0
LEAVE_WAIT = 15.0
# A call that must not be routed: the caller gives up after this many seconds.
UNROUTED_RING_LIMIT = 8
# With a guard trunk a call that must not be routed ends with a final failure within this.
REFUSED_WITHIN = 5.0
SIP_ADMIN = {"sip": {"admin": True}}


def dial(bridge: Bridge, number: str, tmp_path: Path, name: str, *, hold: float,
         ring_limit: int = 30) -> Call:
    return place_call(bridge.sipp, bridge_host=bridge.host, bridge_port=bridge.port,
                      called=number, caller=CALLER_NUMBER, workdir=tmp_path, name=name,
                      hold_seconds=hold, ring_limit=ring_limit)


def explain(*parts: Sipp | Call | Bridge | AgentProcess | str) -> str:
    out = []
    for part in parts:
        if isinstance(part, Call):
            out.append(part.sipp.diagnostics())
        elif isinstance(part, Sipp):
            out.append(part.diagnostics())
        elif isinstance(part, (Bridge, AgentProcess)):
            out.append(part.log_tail())
        else:
            out.append(part)
    return "\n".join(out)


def sip_participants(rooms: LiveKitRooms, room: str) -> list[dict[str, Any]]:
    try:
        return [p for p in rooms.list_participants(room) if p.get("kind") == "SIP"]
    except TwirpError as error:
        if error.status == 404:  # the room closed with its last participant
            return []
        raise


def answered_call(bridge: Bridge, rooms: LiveKitRooms, agent: AgentProcess, view: dict[str, Any],
                  *, number: str, prefix: str, tmp_path: Path, name: str,
                  hold: float) -> tuple[Call, str, dict[str, Any]]:
    """Call ``number`` and check the whole inbound path: a room named with ``prefix`` holding
    a SIP participant whose attributes name our inbound trunk and rule, ``agent`` joined it
    (its own report and LiveKit's participant list), and the caller got a 200 OK. Returns the
    call (the caller's tone has started), the room and the SIP participant."""
    call = dial(bridge, number, tmp_path, name, hold=hold)
    try:
        room = rooms.wait_for_room(prefix, timeout=ROOM_WAIT, stop=lambda: not call.sipp.alive)
        assert room is not None, explain(
            f"no room starting with {prefix!r} after calling {number}", call, bridge)
        participant = rooms.wait_for_sip_participant(room, timeout=ROOM_WAIT)
        assert participant is not None, explain(f"no SIP participant in {room}", call, bridge)
        attributes: dict[str, Any] = participant.get("attributes") or {}
        assert attributes.get("sip.trunkID") == view["inboundTrunkId"], attributes
        assert attributes.get("sip.ruleID") == view["dispatchRuleId"], attributes
        assert attributes.get("sip.phoneNumber") == CALLER_NUMBER, attributes

        joined = agent.wait_for(room, "joined", timeout=ANSWER_WAIT)
        assert joined is not None, explain(f"agent {agent.name} never joined {room}", agent,
                                           call, bridge)
        identities = {p.get("identity") for p in rooms.list_participants(room)
                      if p.get("kind") == "AGENT"}
        assert joined["identity"] in identities, identities

        assert call.wait_answered(ANSWER_WAIT), explain(
            f"the caller got no 200 OK for {number}", call, agent, bridge)
        assert 200 in call.sipp.invite_statuses(), explain(call)
    except BaseException:
        call.close()
        raise
    return call, room, participant


def finish(call: Call, timeout: float | None = None) -> int:
    try:
        return call.sipp.finish(timeout)
    finally:
        call.close()


def expect_unrouted_call(bridge: Bridge, rooms: LiveKitRooms, agents: dict[str, AgentProcess],
                         *, number: str, tmp_path: Path, name: str) -> None:
    """Call ``number``: the bridge hears the INVITE, no room appears, no agent gets a job, and
    the caller ends within UNROUTED_RING_LIMIT s without an answer.

    With livekit-server v1.13.5 and the bridge v1.10.0 the caller gets no final response at
    all: for a call that no dispatch rule matches, livekit-server's EvaluateSIPDispatchRules
    answers DROP, and the bridge then drops the INVITE silently ("Rejecting inbound flood",
    flood protection). Asserted as it is, so a bridge that starts answering shows up here."""
    before = rooms.room_names()
    jobs_before = {n: a.rooms() for n, a in agents.items()}
    log_start = bridge.log_path.stat().st_size if bridge.log_path.exists() else 0
    started = time.monotonic()
    call = dial(bridge, number, tmp_path, name, hold=1, ring_limit=UNROUTED_RING_LIMIT)
    try:
        room = rooms.wait_for_room("", timeout=UNROUTED_RING_LIMIT, exclude=before,
                                   stop=lambda: not call.sipp.alive)
        assert room is None, explain(f"calling {number} created room {room}", call, bridge)
    finally:
        finish(call, timeout=UNROUTED_RING_LIMIT + 15)
    assert time.monotonic() - started < UNROUTED_RING_LIMIT + 15
    assert rooms.room_names() - before == set()
    assert {n: a.rooms() for n, a in agents.items()} == jobs_before
    assert not call.media_file.exists(), explain("the call was answered", call)
    assert call.logged("CALLER CANCEL"), explain(call)

    bridge_log = bridge.log_path.read_bytes()[log_start:].decode(errors="replace")
    this_call = [line for line in bridge_log.splitlines() if f'"toUser": "{number}"' in line]
    # The INVITE did reach the bridge, so "no room" is the bridge's decision, not a lost packet.
    assert any("processing invite" in line for line in this_call), explain(bridge)
    assert any("Rejecting inbound flood" in line for line in this_call), explain(bridge)
    final = [code for code in call.sipp.invite_statuses() if code >= 200]
    assert final == [], explain(f"the bridge answered the INVITE with {final}", call, bridge)


# ------------------------------------------------------------------------------ inbound


def test_inbound_call_is_answered_by_the_named_agent_in_a_room_of_our_rule(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, agents: dict[str, AgentProcess],
    tmp_path: Path,
) -> None:
    """Provisioned N + a call to N = a room with the rule's prefix, a SIP participant from our
    trunk and rule, the agent named in the request in the room, and a 200 OK at the caller."""
    number, prefix = "+15551230101", unique_prefix("in")
    view = customer.provision(number=number, room_prefix=prefix, agent=AGENT)

    call, room, _ = answered_call(bridge, rooms, agents[AGENT], view, number=number,
                                  prefix=prefix, tmp_path=tmp_path, name="caller", hold=2)

    assert [d.get("agent_name") for d in rooms.list_dispatch(room)] == [AGENT]
    assert finish(call) == 0, explain(call, bridge)
    assert room not in agents[OTHER_AGENT].rooms()


# ------------------------------------------------------------------------------ media


def test_audio_and_dtmf_flow_both_ways_and_the_caller_hangs_up(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, agents: dict[str, AgentProcess],
    tmp_path: Path,
) -> None:
    """The caller's tone reaches the agent as a non-silent 700 Hz track; a DTMF 7 sent as RFC
    2833 reaches the agent as "7"; the agent's 440 Hz tone reaches the caller as RTP; the
    caller's BYE ends the call and the SIP participant leaves the room."""
    number, prefix = "+15551230201", unique_prefix("media")
    view = customer.provision(number=number, room_prefix=prefix, agent=AGENT)
    agent = agents[AGENT]
    hold = 20.0
    call, room, participant = answered_call(bridge, rooms, agent, view, number=number,
                                            prefix=prefix, tmp_path=tmp_path, name="caller",
                                            hold=hold)
    answered_at = time.monotonic()
    sip_identity = participant["identity"]
    try:
        heard = agent.wait_for(room, "audio", timeout=MEDIA_WAIT, where=lambda e: (
            e["identity"] == sip_identity and e["rms"] >= HEARD_LEVEL
            and abs(e["peak_hz"] - CALLER_TONE_HZ) <= HEARD_HZ))
        assert heard is not None, explain(
            f"the agent never heard the caller's tone: {agent.events(room, 'audio')}", agent,
            call, bridge)

        call.media.send_dtmf("7")
        digit = agent.wait_for(room, "dtmf", timeout=MEDIA_WAIT)
        assert digit is not None, explain("no DTMF reached the agent", agent, call, bridge)
        assert (digit["digit"], digit["code"], digit["identity"]) == ("7", 7, sip_identity)

        assert wait_until(lambda: True if call.media.received(PCMU) >= 100 else None,
                          timeout=MEDIA_WAIT), explain("too few RTP packets at the caller", call)
        level, peak = level_and_peak(call.media.received_audio(1.0))
        assert level >= HEARD_LEVEL, (level, peak)
        assert abs(peak - AGENT_TONE_HZ) <= HEARD_HZ, (level, peak)
        assert time.monotonic() - answered_at < hold, "the checks outlasted the call"
        assert sip_participants(rooms, room), "the call ended before the caller hung up"
    except BaseException:
        call.close()
        raise

    assert finish(call, timeout=hold + 15) == 0, explain(call, bridge)
    assert call.logged("CALLER SENT BYE") and call.logged("CALLER BYE OK"), explain(call)
    gone = wait_until(lambda: True if not sip_participants(rooms, room) else None,
                      timeout=LEAVE_WAIT)
    assert gone, explain(f"the SIP participant is still in {room}", bridge)
    assert agent.wait_for(room, "left", timeout=LEAVE_WAIT,
                          where=lambda e: e["identity"] == sip_identity), explain(agent)
    assert [e["digit"] for e in agent.events(room, "dtmf")] == ["7"]


def test_the_agent_hangs_up_and_the_caller_gets_a_bye(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, agents: dict[str, AgentProcess],
    tmp_path: Path,
) -> None:
    """Hanging up on the agent's side (on "#", the agent removes the SIP participant, as
    agents end calls) sends the caller a BYE long before its own hangup, and the SIP
    participant leaves the room."""
    number, prefix = "+15551230301", unique_prefix("hangup")
    view = customer.provision(number=number, room_prefix=prefix, agent=AGENT)
    agent = agents[AGENT]
    hold = 60.0
    call, room, participant = answered_call(bridge, rooms, agent, view, number=number,
                                            prefix=prefix, tmp_path=tmp_path, name="caller",
                                            hold=hold)
    try:
        call.media.send_dtmf("#")
        hung_up = agent.wait_for(room, "hangup", timeout=MEDIA_WAIT)
        assert hung_up is not None, explain("the agent did not hang up", agent, call, bridge)
        assert hung_up["identity"] == participant["identity"]
        sent = time.monotonic()
    except BaseException:
        call.close()
        raise

    assert finish(call, timeout=LEAVE_WAIT) == 0, explain(call, bridge)
    assert time.monotonic() - sent < LEAVE_WAIT
    assert call.logged("CALLER GOT BYE") and not call.logged("CALLER SENT BYE"), explain(call)
    assert wait_until(lambda: True if not sip_participants(rooms, room) else None,
                      timeout=LEAVE_WAIT), explain(f"the SIP participant is still in {room}")


# ------------------------------------------------------------------------------ routing


def test_a_number_provisioned_for_another_agent_gets_that_agent(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, agents: dict[str, AgentProcess],
    tmp_path: Path,
) -> None:
    """Two agents are registered; the number's agentName picks which one gets the call."""
    number, prefix = "+15551230401", unique_prefix("other")
    view = customer.provision(number=number, room_prefix=prefix, agent=OTHER_AGENT)

    call, room, _ = answered_call(bridge, rooms, agents[OTHER_AGENT], view, number=number,
                                  prefix=prefix, tmp_path=tmp_path, name="caller", hold=2)

    assert finish(call) == 0, explain(call, bridge)
    assert [d.get("agent_name") for d in rooms.list_dispatch(room)] == [OTHER_AGENT]
    assert room not in agents[AGENT].rooms()


def test_an_unprovisioned_number_gets_no_room(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, agents: dict[str, AgentProcess],
    tmp_path: Path,
) -> None:
    """A number we never provisioned is not routed, even while another number is."""
    customer.provision(number="+15551230501", room_prefix=unique_prefix("unprov"))

    expect_unrouted_call(bridge, rooms, agents, number="+15551230599", tmp_path=tmp_path,
                         name="caller-unprovisioned")


@pytest.fixture
def guard_trunk(rooms: LiveKitRooms) -> Iterator[str]:
    """The operator's catch-all inbound trunk (README, "Refusing unknown numbers at once"): no
    numbers, digest credentials nobody has. Removed after the test."""
    trunk = rooms.call("livekit.SIP/CreateSIPInboundTrunk", {"trunk": {
        "name": "reject-unknown-numbers", "auth_username": "nobody",
        "auth_password": secrets.token_hex(16)}}, SIP_ADMIN)
    yield str(trunk["sip_trunk_id"])
    rooms.call("livekit.SIP/DeleteSIPTrunk", {"sip_trunk_id": trunk["sip_trunk_id"]},
               SIP_ADMIN)


def expect_refused_call(bridge: Bridge, rooms: LiveKitRooms, agents: dict[str, AgentProcess],
                        *, number: str, tmp_path: Path, name: str) -> None:
    """Call ``number``: a final 401/407 (the guard's digest challenge, which the caller cannot
    answer) within REFUSED_WITHIN seconds, no room, no agent job."""
    before = rooms.room_names()
    jobs_before = {n: a.rooms() for n, a in agents.items()}
    started = time.monotonic()
    call = dial(bridge, number, tmp_path, name, hold=1, ring_limit=UNROUTED_RING_LIMIT)
    finish(call, timeout=UNROUTED_RING_LIMIT + 15)
    elapsed = time.monotonic() - started
    final = [code for code in call.sipp.invite_statuses() if code >= 200]
    assert final and final[0] in (401, 407), explain(f"final answers {final}", call, bridge)
    assert call.logged("CALLER REJECTED"), explain(call)
    assert elapsed < REFUSED_WITHIN, explain(f"refused only after {elapsed:.1f}s", call)
    assert rooms.room_names() - before == set()
    assert {n: a.rooms() for n, a in agents.items()} == jobs_before


def test_with_a_guard_trunk_unknown_and_released_numbers_are_refused_at_once(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, agents: dict[str, AgentProcess],
    guard_trunk: str, tmp_path: Path,
) -> None:
    """With the operator's catch-all trunk in place, a number provisioned through the API is
    still answered by its agent (LiveKit prefers the trunk naming the number), while a number
    never provisioned, and the same number after DELETE, get a final failure at once."""
    number, prefix = "+15551231001", unique_prefix("guard")
    view = customer.provision(number=number, room_prefix=prefix, agent=AGENT)
    call, _, _ = answered_call(bridge, rooms, agents[AGENT], view, number=number,
                               prefix=prefix, tmp_path=tmp_path, name="caller-provisioned",
                               hold=1)
    assert finish(call) == 0, explain(call, bridge)

    expect_refused_call(bridge, rooms, agents, number="+15551231099", tmp_path=tmp_path,
                        name="caller-unprovisioned")
    customer.release(number)
    expect_refused_call(bridge, rooms, agents, number=number, tmp_path=tmp_path,
                        name="caller-released")


# ------------------------------------------------------------------------------ update, release


def test_after_a_patch_the_next_call_follows_the_new_agent_and_room_prefix(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, agents: dict[str, AgentProcess],
    tmp_path: Path,
) -> None:
    """PATCH agentName, then PATCH roomPrefix (same trunk and rule ids): each next call goes
    to the new agent, in a room with the new prefix."""
    number, first, second = "+15551230601", unique_prefix("patch-a"), unique_prefix("patch-b")
    view = customer.provision(number=number, room_prefix=first, agent=AGENT)

    patched = customer.patch(number, agentName=OTHER_AGENT)
    assert patched["dispatchRuleId"] == view["dispatchRuleId"]
    call, room, _ = answered_call(bridge, rooms, agents[OTHER_AGENT], view, number=number,
                                  prefix=first, tmp_path=tmp_path, name="caller-new-agent",
                                  hold=1)
    assert finish(call) == 0, explain(call, bridge)
    assert room not in agents[AGENT].rooms()

    customer.patch(number, roomPrefix=second)
    call, room, _ = answered_call(bridge, rooms, agents[OTHER_AGENT], view, number=number,
                                  prefix=second, tmp_path=tmp_path, name="caller-new-prefix",
                                  hold=1)
    assert finish(call) == 0, explain(call, bridge)
    assert room.startswith(second)
    assert room not in agents[AGENT].rooms()


def test_after_a_delete_a_call_to_the_number_gets_no_room(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, agents: dict[str, AgentProcess],
    tmp_path: Path,
) -> None:
    """N is answered until it is released with DELETE; afterwards a call to N is not."""
    number, prefix = "+15551230701", unique_prefix("rel")
    view = customer.provision(number=number, room_prefix=prefix, agent=AGENT)
    call, _, _ = answered_call(bridge, rooms, agents[AGENT], view, number=number,
                               prefix=prefix, tmp_path=tmp_path, name="caller-before",
                               hold=1)
    assert finish(call) == 0, explain(call, bridge)

    customer.release(number)

    expect_unrouted_call(bridge, rooms, agents, number=number, tmp_path=tmp_path,
                         name="caller-after-release")


# ------------------------------------------------------------------------------ outbound


def dial_out(bridge: Bridge, rooms: LiveKitRooms, *, trunk_id: str, gateway: Sipp,
             label: str) -> dict[str, Any] | TwirpError:
    """CreateSIPParticipant through ``trunk_id``: the answer, or the error. When answered, the
    SIP participant must be in the room with our trunk's id. The call is hung up (room
    deleted) and the gateway has finished when this returns."""
    room = unique_prefix(f"out-{label}") + "room"
    outcome: dict[str, Any] | TwirpError
    try:
        try:
            outcome = rooms.create_sip_participant(trunk_id=trunk_id, call_to=CALLEE_NUMBER,
                                                   room=room, identity=f"pstn-{label}")
        except TwirpError as error:
            outcome = error
        if not isinstance(outcome, TwirpError):
            participant = rooms.wait_for_sip_participant(room, timeout=10)
            assert participant is not None, explain(f"no SIP participant in {room}", gateway,
                                                    bridge)
            attributes = participant.get("attributes") or {}
            assert attributes.get("sip.trunkID") == trunk_id, attributes
            assert attributes.get("sip.phoneNumber") == CALLEE_NUMBER, attributes
    finally:
        rooms.delete_room(room)  # the bridge hangs up: BYE to the gateway
        gateway.finish(timeout=30)
    return outcome


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_an_outbound_call_reaches_the_customers_gateway_with_the_provisioned_credentials(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, tmp_path: Path, transport: str,
) -> None:
    """CreateSIPParticipant with our outbound trunk reaches the provider's gateway on the
    provisioned address and transport (the gateway listens on no other) and passes its
    digest challenge with the provisioned username and password; the callee answers and the
    SIP participant joins the room. A gateway that expects another password refuses the same
    call, and CreateSIPParticipant reports the failure."""
    port = free_port()
    number = {"udp": "+15551230801", "tcp": "+15551230802"}[transport]
    view = customer.provision(number=number, room_prefix=unique_prefix("obn"),
                              gateway=f"127.0.0.1:{port}", transport=transport)
    trunk_id = view["outboundTrunkId"]

    gateway = start_gateway(bridge.sipp, port=port, username=USERNAME, password=PASSWORD,
                            workdir=tmp_path, name="gateway-right", transport=transport)
    outcome = dial_out(bridge, rooms, trunk_id=trunk_id, gateway=gateway, label="right")
    assert not isinstance(outcome, TwirpError), explain(str(outcome), gateway, bridge)
    assert gateway_verdicts(gateway) == [f"AUTH_OK user={USERNAME}"], explain(gateway)
    assert "GATEWAY ANSWERED" in gateway.read("actions"), explain(gateway)
    assert set(gateway_transports(gateway)) == {transport.upper()}, explain(gateway)

    gateway = start_gateway(bridge.sipp, port=port, username=USERNAME,
                            password=PASSWORD + "-other", workdir=tmp_path,
                            name="gateway-wrong", transport=transport)
    outcome = dial_out(bridge, rooms, trunk_id=trunk_id, gateway=gateway, label="wrong")
    assert isinstance(outcome, TwirpError), explain(f"answered: {outcome}", gateway, bridge)
    assert gateway_verdicts(gateway) == [f"AUTH_BAD user={USERNAME}"], explain(gateway)


# Every character the contract allows in authUserName besides letters and digits.
SPECIAL_USERNAME = "e2e.u-1_~!$&'()*+=%@x"


def test_a_username_with_every_allowed_special_character_passes_the_digest_challenge(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, tmp_path: Path,
) -> None:
    """The contract's digest-safe username set, proven on the wire: the bridge sends it in the
    quoted digest username unescaped and the gateway's digest check accepts it."""
    port = free_port()
    view = customer.provision(number="+15551230803", room_prefix=unique_prefix("usr"),
                              gateway=f"127.0.0.1:{port}", username=SPECIAL_USERNAME)
    gateway = start_gateway(bridge.sipp, port=port, username=SPECIAL_USERNAME,
                            password=PASSWORD, workdir=tmp_path, name="gateway-special")
    outcome = dial_out(bridge, rooms, trunk_id=view["outboundTrunkId"], gateway=gateway,
                       label="special")
    assert not isinstance(outcome, TwirpError), explain(str(outcome), gateway, bridge)
    assert gateway_verdicts(gateway) == [f"AUTH_OK user={SPECIAL_USERNAME}"], explain(gateway)
    assert f'username="{SPECIAL_USERNAME}"' in gateway.read("messages"), explain(gateway)


def test_after_a_credential_rotation_only_the_new_password_works(
    bridge: Bridge, rooms: LiveKitRooms, customer: Customer, tmp_path: Path,
) -> None:
    """PATCH authPassword changes what the bridge answers the gateway's challenge with, on the
    same trunk id: the new password passes, the old one is refused."""
    port = free_port()
    number, old, new = "+15551230901", PASSWORD, "e2e-Rotated-8b2e71"
    view = customer.provision(number=number, room_prefix=unique_prefix("rot"),
                              gateway=f"127.0.0.1:{port}", password=old)

    patched = customer.patch(number, authPassword=new)
    assert patched["outboundTrunkId"] == view["outboundTrunkId"]
    assert patched["hasAuthPassword"] is True

    gateway = start_gateway(bridge.sipp, port=port, username=USERNAME, password=old,
                            workdir=tmp_path, name="gateway-old")
    outcome = dial_out(bridge, rooms, trunk_id=view["outboundTrunkId"], gateway=gateway,
                       label="old")
    assert isinstance(outcome, TwirpError), explain(f"answered: {outcome}", gateway, bridge)
    assert gateway_verdicts(gateway) == [f"AUTH_BAD user={USERNAME}"], explain(gateway)

    gateway = start_gateway(bridge.sipp, port=port, username=USERNAME, password=new,
                            workdir=tmp_path, name="gateway-new")
    outcome = dial_out(bridge, rooms, trunk_id=view["outboundTrunkId"], gateway=gateway,
                       label="new")
    assert not isinstance(outcome, TwirpError), explain(str(outcome), gateway, bridge)
    assert gateway_verdicts(gateway) == [f"AUTH_OK user={USERNAME}"], explain(gateway)

