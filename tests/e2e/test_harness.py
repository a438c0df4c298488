"""Self-checks of the suite's own tools, against the parts that need no SIP bridge.

They make the call tests' answers meaningful: the sipp gateway really refuses wrong digest
credentials, the Room API client really sees rooms and agent dispatches, and the caller's
media endpoint really measures a tone and sends RFC 2833 digits.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.harness import (
    AUTH_CALLER_SCENARIO,
    LOOPBACK,
    LiveKitRooms,
    free_udp_port,
    gateway_verdicts,
    start_gateway,
    wait_until,
)
from tests.e2e.lifecycle import AGENT, PASSWORD, USERNAME
from tests.e2e.media import (
    PCMU,
    TELEPHONE_EVENT,
    RtpEndpoint,
    level_and_peak,
    tone_payloads,
    ulaw_decode,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("username", "password", "verdict"),
    [
        (USERNAME, PASSWORD, f"AUTH_OK user={USERNAME}"),
        (USERNAME, PASSWORD + "x", f"AUTH_BAD user={USERNAME}"),
        ("someone_else", PASSWORD, "AUTH_BAD user=someone_else"),
    ],
    ids=["right", "wrong-password", "wrong-username"],
)
def test_gateway_accepts_only_its_own_digest_credentials(
    sipp_bin: str, tmp_path: Path, username: str, password: str, verdict: str,
) -> None:
    port = free_udp_port()
    gateway = start_gateway(sipp_bin, port=port, username=USERNAME, password=PASSWORD,
                            workdir=tmp_path, limit=20)
    try:
        caller = subprocess.run(
            [sipp_bin, f"{LOOPBACK}:{port}", "-sf", str(AUTH_CALLER_SCENARIO),
             "-s", "+15557654321", "-au", username, "-ap", password,
             "-i", LOOPBACK, "-bind_local", "-p", str(free_udp_port()), "-mi", LOOPBACK,
             "-m", "1", "-nostdin", "-timeout", "15s", "-timeout_error"],
            cwd=tmp_path, capture_output=True, timeout=30, check=False,
        )
    finally:
        gateway.finish(timeout=20)
    assert caller.returncode == 0, caller.stdout[-2000:]
    assert gateway.returncode == 0, gateway.diagnostics()
    assert gateway_verdicts(gateway) == [verdict], gateway.diagnostics()


def test_room_api_sees_rooms_participants_and_agent_dispatch(rooms: LiveKitRooms) -> None:
    name = f"e2e-selfcheck-{secrets.token_hex(4)}"
    rooms.create_room(name, agents=[AGENT])
    try:
        assert name in rooms.room_names("e2e-selfcheck-")
        assert rooms.list_participants(name) == []
        assert AGENT in [d.get("agent_name") for d in rooms.list_dispatch(name)]
    finally:
        rooms.delete_room(name)
    assert name not in rooms.room_names("e2e-selfcheck-")


def test_a_tone_survives_ulaw_and_is_measured_at_its_frequency() -> None:
    """The caller's audio checks can tell a tone from silence and one tone from another."""
    samples = np.concatenate([ulaw_decode(p) for p in tone_payloads(700.0, 0.3, 50)])
    level, peak = level_and_peak(samples)
    assert 0.2 <= level <= 0.22  # 0.3 / sqrt(2), within µ-law's error
    assert abs(peak - 700.0) <= 1.0
    assert level_and_peak(np.zeros(8000, dtype=np.int16))[0] == 0.0
    assert abs(level_and_peak(np.concatenate(
        [ulaw_decode(p) for p in tone_payloads(440.0, 0.3, 50)]))[1] - 440.0) <= 1.0


def test_rtp_endpoints_exchange_tone_and_rfc2833_events() -> None:
    """Two endpoints on loopback: the receiver counts the sender's PCMU packets, decodes its
    tone, and sees telephone-events (payload type 101) when a digit is sent."""
    sender, receiver = RtpEndpoint(tone_hz=700.0), RtpEndpoint()
    try:
        sender.start_sending(LOOPBACK, receiver.port)
        assert wait_until(lambda: True if receiver.received(PCMU) >= 25 else None, timeout=10)
        sender.send_dtmf("7")
        assert wait_until(lambda: True if receiver.received(TELEPHONE_EVENT) >= 13 else None,
                          timeout=10)
        level, peak = level_and_peak(receiver.received_audio(0.5))
        assert level > 0.1
        assert abs(peak - 700.0) <= 2.0
        assert sender.sent_events == ["7"]
    finally:
        sender.close()
        receiver.close()
