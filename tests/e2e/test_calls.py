"""A provisioned number carries real calls: sipp -> LiveKit's SIP bridge -> LiveKit, and back.

Every number here is provisioned through the real pipeline (ProvisioningClient -> Redis ->
a real Celery worker -> livekit-server). Calls are asserted through LiveKit's Room API:
with no agent worker running, the bridge keeps an inbound call ringing, so the room and
its SIP participant are what proves the call was routed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from producers import ProvisioningClient
from tests.e2e.harness import (
    CALLER_HOLD_SECONDS,
    Bridge,
    LiveKitRooms,
    Sipp,
    TwirpError,
    free_udp_port,
    gateway_verdicts,
    start_caller,
    start_gateway,
    unique_prefix,
)
from tests.e2e.lifecycle import AGENT, PASSWORD, USERNAME, provision, release, rotate_password
from tests.integration.conftest import WorkerFactory
from worker.livekit import LiveKitNotFound, LiveKitSIP
from worker.records import JobResult

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean")]

CALLER_NUMBER = "+15559870000"
CALLEE_NUMBER = "+15557654321"
# How long a routed call may take to show up as a room (the bridge answers in well under 1 s).
ROOM_WAIT = CALLER_HOLD_SECONDS - 1
# How long a call that must not be routed is watched for a room.
NO_ROOM_WATCH = 6.0


def call(bridge: Bridge, number: str, tmp_path: Path, name: str) -> Sipp:
    return start_caller(bridge.sipp, bridge_host=bridge.host, bridge_port=bridge.port,
                        called=number, caller=CALLER_NUMBER, workdir=tmp_path, name=name)


def explain(*parts: Sipp | Bridge | str) -> str:
    out = []
    for part in parts:
        if isinstance(part, Sipp):
            out.append(part.diagnostics())
        elif isinstance(part, Bridge):
            out.append(part.log_tail())
        else:
            out.append(part)
    return "\n".join(out)


def expect_routed_call(bridge: Bridge, rooms: LiveKitRooms, *, number: str, prefix: str,
                       result: JobResult, tmp_path: Path, name: str) -> tuple[str, list[str]]:
    """Call ``number``: a room with ``prefix`` appears, holding a SIP participant whose
    attributes name our inbound trunk and dispatch rule. Returns the room's name and the
    agents dispatched into it (read while the call is up)."""
    caller = call(bridge, number, tmp_path, name)
    try:
        room = rooms.wait_for_room(prefix, timeout=ROOM_WAIT, stop=lambda: not caller.alive)
        assert room is not None, explain(
            f"no room starting with {prefix!r} after calling {number}", caller, bridge)
        participant = rooms.wait_for_sip_participant(room, timeout=5,
                                                     stop=lambda: not caller.alive)
        assert participant is not None, explain(f"no SIP participant in {room}", caller, bridge)
        attributes: dict[str, Any] = participant.get("attributes") or {}
        assert attributes.get("sip.trunkID") == result.inbound_trunk_id, attributes
        assert attributes.get("sip.ruleID") == result.dispatch_rule_id, attributes
        agents = [str(d.get("agent_name")) for d in rooms.list_dispatch(room)]
        return room, agents
    finally:
        caller.finish()


def expect_unrouted_call(bridge: Bridge, rooms: LiveKitRooms, *, number: str, prefix: str,
                         tmp_path: Path, name: str) -> None:
    """Call ``number``: the bridge hears the INVITE, and no new room appears at all."""
    before = rooms.room_names()
    caller = call(bridge, number, tmp_path, name)
    try:
        room = rooms.wait_for_room("", timeout=NO_ROOM_WATCH, exclude=before)
        assert room is None, explain(f"calling {number} created room {room}", caller, bridge)
    finally:
        caller.finish()
    assert not rooms.room_names(prefix) - before
    # The INVITE did reach the bridge (it answers every INVITE it reads, at least with
    # 100 Processing), so "no room" is the bridge's decision, not a lost packet.
    assert caller.received_statuses(), explain("the bridge never answered", caller, bridge)


# ------------------------------------------------------------------------------ inbound


def test_inbound_call_reaches_a_room_through_our_trunk_rule_and_agent(
    bridge: Bridge, rooms: LiveKitRooms, worker_factory: WorkerFactory,
    client: ProvisioningClient, tmp_path: Path,
) -> None:
    """Provisioned N + a call to N = a room with the rule's prefix, a SIP participant from our
    trunk and rule, and the requested agent dispatched into that room."""
    worker_factory()
    number, prefix = "+15551230101", unique_prefix("in")
    result = provision(client, number=number, room_prefix=prefix)

    room, agents = expect_routed_call(bridge, rooms, number=number, prefix=prefix,
                                      result=result, tmp_path=tmp_path, name="caller")

    assert AGENT in agents, agents
    rooms.delete_room(room)


def test_unprovisioned_number_gets_no_room(
    bridge: Bridge, rooms: LiveKitRooms, worker_factory: WorkerFactory,
    client: ProvisioningClient, tmp_path: Path,
) -> None:
    """A number we never provisioned is not routed, even while another number is."""
    worker_factory()
    prefix = unique_prefix("unprov")
    provision(client, number="+15551230201", room_prefix=prefix)

    expect_unrouted_call(bridge, rooms, number="+15551230299", prefix=prefix,
                         tmp_path=tmp_path, name="caller-unprovisioned")


def test_released_number_gets_no_room(
    bridge: Bridge, rooms: LiveKitRooms, worker_factory: WorkerFactory,
    client: ProvisioningClient, livekit: LiveKitSIP, tmp_path: Path,
) -> None:
    """N routes calls until it is released; after the release a call to N gets no room."""
    worker_factory()
    number, prefix = "+15551230301", unique_prefix("rel")
    result = provision(client, number=number, room_prefix=prefix)
    room, _ = expect_routed_call(bridge, rooms, number=number, prefix=prefix, result=result,
                                 tmp_path=tmp_path, name="caller-before-release")
    rooms.delete_room(room)

    release(client, number=number)
    assert client.store.get_number(number) is None
    assert not [r for r in livekit.list_dispatch_rules()
                if r.sip_dispatch_rule_id == result.dispatch_rule_id]
    with pytest.raises(LiveKitNotFound):
        livekit.get_inbound_trunk(result.inbound_trunk_id)
    with pytest.raises(LiveKitNotFound):
        livekit.get_outbound_trunk(result.outbound_trunk_id)

    expect_unrouted_call(bridge, rooms, number=number, prefix=prefix, tmp_path=tmp_path,
                         name="caller-after-release")


# ------------------------------------------------------------------------------ outbound


def dial(bridge: Bridge, rooms: LiveKitRooms, *, trunk_id: str, gateway: Sipp,
         label: str) -> tuple[str, dict[str, Any] | TwirpError]:
    """CreateSIPParticipant through ``trunk_id``; returns (room, answer or error). The call
    is hung up (room deleted) and the gateway has finished when this returns."""
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
    finally:
        rooms.delete_room(room)  # the bridge hangs up: BYE to the gateway
        gateway.finish(timeout=30)
    return room, outcome


def expect_answered(bridge: Bridge, rooms: LiveKitRooms, *, trunk_id: str, gateway: Sipp,
                    username: str, label: str) -> None:
    _, outcome = dial(bridge, rooms, trunk_id=trunk_id, gateway=gateway, label=label)
    assert not isinstance(outcome, TwirpError), explain(str(outcome), gateway, bridge)
    assert gateway_verdicts(gateway) == [f"AUTH_OK user={username}"], explain(gateway)


def expect_refused(bridge: Bridge, rooms: LiveKitRooms, *, trunk_id: str, gateway: Sipp,
                   username: str, label: str) -> None:
    _, outcome = dial(bridge, rooms, trunk_id=trunk_id, gateway=gateway, label=label)
    assert isinstance(outcome, TwirpError), explain(
        f"the call was answered: {outcome}", gateway, bridge)
    assert gateway_verdicts(gateway) == [f"AUTH_BAD user={username}"], explain(gateway)


def test_outbound_call_passes_the_gateways_digest_auth_with_provisioned_credentials(
    bridge: Bridge, rooms: LiveKitRooms, worker_factory: WorkerFactory,
    client: ProvisioningClient, tmp_path: Path,
) -> None:
    """A call placed through our outbound trunk reaches the provider's gateway and passes its
    digest challenge with the provisioned username and password; a gateway that expects any
    other password refuses the same call, and CreateSIPParticipant reports the failure."""
    worker_factory()
    port = free_udp_port()
    result = provision(client, number="+15551230401", room_prefix=unique_prefix("obn"),
                       gateway=f"127.0.0.1:{port}")

    gateway = start_gateway(bridge.sipp, port=port, username=USERNAME, password=PASSWORD,
                            workdir=tmp_path, name="gateway-right")
    expect_answered(bridge, rooms, trunk_id=result.outbound_trunk_id, gateway=gateway,
                    username=USERNAME, label="right")

    gateway = start_gateway(bridge.sipp, port=port, username=USERNAME,
                            password=PASSWORD + "-other", workdir=tmp_path,
                            name="gateway-wrong")
    expect_refused(bridge, rooms, trunk_id=result.outbound_trunk_id, gateway=gateway,
                   username=USERNAME, label="wrong")


def test_after_a_credential_rotation_only_the_new_password_works(
    bridge: Bridge, rooms: LiveKitRooms, worker_factory: WorkerFactory,
    client: ProvisioningClient, livekit: LiveKitSIP, tmp_path: Path,
) -> None:
    """Rotating the outbound credentials changes what the bridge answers the gateway with, on
    the same trunk id: the new password passes, the old one is refused."""
    worker_factory()
    port = free_udp_port()
    number, old, new = "+15551230501", PASSWORD, "e2e-Rotated-8b2e71"
    result = provision(client, number=number, room_prefix=unique_prefix("rot"),
                       gateway=f"127.0.0.1:{port}", password=old)

    rotate_password(client, number=number, password=new)
    trunk = livekit.get_outbound_trunk(result.outbound_trunk_id)  # the same trunk id
    assert trunk.auth_username == USERNAME
    assert trunk.auth_password.get_secret_value() == new

    gateway = start_gateway(bridge.sipp, port=port, username=USERNAME, password=new,
                            workdir=tmp_path, name="gateway-new")
    expect_answered(bridge, rooms, trunk_id=result.outbound_trunk_id, gateway=gateway,
                    username=USERNAME, label="new")

    gateway = start_gateway(bridge.sipp, port=port, username=USERNAME, password=old,
                            workdir=tmp_path, name="gateway-old")
    expect_refused(bridge, rooms, trunk_id=result.outbound_trunk_id, gateway=gateway,
                   username=USERNAME, label="old")
