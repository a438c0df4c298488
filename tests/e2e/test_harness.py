"""Self-checks of the suite's own tools, against the parts that need no SIP bridge.

They make the call tests' negative answers meaningful: the sipp gateway really refuses
wrong digest credentials, and the Room API client really sees rooms and agent dispatches.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import (
    AUTH_CALLER_SCENARIO,
    LOOPBACK,
    LiveKitRooms,
    free_udp_port,
    gateway_verdicts,
    start_gateway,
)
from tests.e2e.lifecycle import AGENT, PASSWORD, USERNAME

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
