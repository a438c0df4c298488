"""How late a LiveKit call made for a run may still be under way.

A run holds its number's lock for a lease. Once the lease ends, another worker may take the
job over and look on LiveKit for what this run created before creating anything itself. A
create this run had already sent but that had not yet reached LiveKit (its bytes waiting in
our kernel's send buffer behind a cut link) would land after that look and leave a duplicate
that no fencing can stop: LiveKit knows nothing of our locks.

So every call made for a run must be over before the run's lease is: answered, or given up
with its unsent bytes thrown away (the client closes its sockets with ``SO_LINGER`` 0, so a
closed connection is reset rather than drained). The run sets the deadline around its work
with :func:`calls_end_by`; the client fits each call's timeouts inside what is left, and
refuses to start a call that cannot fit (:class:`NoTimeLeft`). A context variable carries
the deadline, so the saga's pool threads (which run in a copy of the run's context) see it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

import httpx

__all__ = ["MIN_CALL_SECONDS", "NoTimeLeft", "calls_end_by", "fit_timeout", "time_left"]

# Below this there is no point in starting a call: it would be given up before LiveKit could
# plausibly answer.
MIN_CALL_SECONDS: Final = 0.5

# How a call's time is shared out when it must fit in what is left: no request byte is sent
# before a pooled connection is free and connected, and the bytes are given up on at the
# latest a write plus a read timeout after that, so the four phases together must fit.
_SHARES: Final = {"pool": 0.1, "connect": 0.2, "write": 0.2, "read": 0.5}

_must_end_by: ContextVar[float | None] = ContextVar("livekit_calls_end_by", default=None)


class NoTimeLeft(Exception):
    """Too little of the run's lease is left for a LiveKit call to be over before it ends."""

    def __init__(self, method: str, left: float) -> None:
        super().__init__(f"{method} not sent: {max(left, 0.0):.2f}s of the run's lease left, "
                         f"a call needs at least {MIN_CALL_SECONDS}s")
        self.method = method
        self.left = left


@contextlib.contextmanager
def calls_end_by(deadline: float) -> Iterator[None]:
    """LiveKit calls made in this context end by `deadline` (a ``time.monotonic()`` value)."""
    token = _must_end_by.set(deadline)
    try:
        yield
    finally:
        _must_end_by.reset(token)


def time_left() -> float | None:
    """Seconds until the current deadline; None when no run set one."""
    deadline = _must_end_by.get()
    return None if deadline is None else deadline - time.monotonic()


def fit_timeout(method: str, configured: httpx.Timeout) -> httpx.Timeout | None:
    """The timeouts for one call under the current deadline (None: no deadline, keep the
    client's own). Raises NoTimeLeft when the call cannot be over in time."""
    left = time_left()
    if left is None:
        return None
    if left < MIN_CALL_SECONDS:
        raise NoTimeLeft(method, left)
    phases = {phase: getattr(configured, phase) for phase in _SHARES}
    return httpx.Timeout(**{
        phase: left * share if phases[phase] is None else min(phases[phase], left * share)
        for phase, share in _SHARES.items()
    })
