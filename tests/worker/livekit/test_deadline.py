"""Unit tests for worker.livekit.deadline: a run's LiveKit calls end before its lease does."""

from __future__ import annotations

import contextvars
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from worker.livekit import LiveKitSIP, LiveKitTimeout
from worker.livekit.client import ABORT_ON_CLOSE
from worker.livekit.deadline import (
    MIN_CALL_SECONDS,
    NoTimeLeft,
    calls_end_by,
    fit_timeout,
    time_left,
)

BASE = "http://livekit.test"
CONFIGURED = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=10.0)


class Seen:
    """A MockTransport handler that records the timeouts each request was sent with."""

    def __init__(self) -> None:
        self.timeouts: list[dict[str, float | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.timeouts.append(dict(request.extensions["timeout"]))
        return httpx.Response(200, json={"items": []})


def lister(seen: Seen) -> LiveKitSIP:
    http = httpx.Client(transport=httpx.MockTransport(seen), timeout=CONFIGURED)
    return LiveKitSIP(BASE, "key", "secret", http=http)


def test_without_a_deadline_calls_keep_the_clients_timeouts() -> None:
    seen = Seen()
    assert time_left() is None
    assert fit_timeout("ListSIPInboundTrunk", CONFIGURED) is None
    lister(seen).list_inbound_trunks()
    assert seen.timeouts == [{"connect": 3.0, "read": 10.0, "write": 10.0, "pool": 10.0}]


def test_a_call_fits_in_what_is_left_of_the_lease() -> None:
    """With 4 s left, the four phases together take at most 4 s; none grows past its setting."""
    seen = Seen()
    with calls_end_by(time.monotonic() + 4.0):
        lister(seen).list_inbound_trunks()
    [timeout] = seen.timeouts
    assert all(value is not None for value in timeout.values())
    assert sum(v for v in timeout.values() if v is not None) <= 4.0
    assert timeout["connect"] is not None and timeout["connect"] <= 3.0
    assert timeout["read"] is not None and 1.5 < timeout["read"] <= 2.0


def test_a_long_lease_keeps_the_configured_timeouts() -> None:
    with calls_end_by(time.monotonic() + 3600):
        fitted = fit_timeout("CreateSIPInboundTrunk", CONFIGURED)
    assert fitted is not None
    assert (fitted.connect, fitted.read, fitted.write, fitted.pool) == (3.0, 10.0, 10.0, 10.0)


def test_unset_phases_get_their_share_instead_of_no_limit() -> None:
    with calls_end_by(time.monotonic() + 10.0):
        fitted = fit_timeout("CreateSIPInboundTrunk", httpx.Timeout(None))
    assert fitted is not None and fitted.read is not None and 4.0 < fitted.read <= 5.0


@pytest.mark.parametrize("left", [MIN_CALL_SECONDS / 2, -3.0])
def test_no_call_is_started_that_cannot_end_in_time(left: float) -> None:
    seen = Seen()
    with calls_end_by(time.monotonic() + left), pytest.raises(NoTimeLeft) as refused:
        lister(seen).list_inbound_trunks()
    assert seen.timeouts == []
    assert "ListSIPInboundTrunk not sent" in str(refused.value)


def test_the_deadline_ends_with_its_context_and_reaches_copied_contexts() -> None:
    """The saga's pool threads run in a copy of the run's context: they see its deadline."""
    with calls_end_by(time.monotonic() + 60), ThreadPoolExecutor(1) as pool:
        left = pool.submit(contextvars.copy_context().run, time_left).result()
        assert left is not None and 50 < left <= 60
    assert time_left() is None


def test_own_client_resets_a_connection_it_gives_up_on() -> None:
    """SO_LINGER 0: a call given up on (here: no answer within its timeout) resets its
    connection, so the kernel drops what it had not yet delivered instead of retrying it.
    The server sees a reset, not the orderly end of a graceful close."""
    assert [(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))] == ABORT_ON_CLOSE
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        listener.settimeout(10)
        with (LiveKitSIP(f"http://127.0.0.1:{port}", "key", "secret", timeout=0.3) as lk,
              ThreadPoolExecutor(1) as pool):
            call = pool.submit(lk.list_inbound_trunks)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                with pytest.raises(LiveKitTimeout):
                    call.result(timeout=10)
                with pytest.raises(ConnectionResetError):
                    while conn.recv(65536):  # the body, then the reset
                        pass
