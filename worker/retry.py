"""The retry decision, as pure functions: exception -> (code, retryable), attempt -> delay.

Only errors we know to be transient are retried: LiveKit's retryable class (network, timeouts,
5xx, 429), Redis connection trouble, and an interrupted run. Everything else, including bugs,
is permanent: retrying a 4xx or a TypeError only repeats it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import redis.exceptions

from worker.livekit.errors import LiveKitError, LiveKitRateLimited
from worker.store import UnreadableRecord


class ProvisioningFailure(Exception):
    """A failure the saga itself decided on (ownership, conflicts), with a machine code."""

    def __init__(self, code: str, message: str, *, retryable: bool = False,
                 field: str | None = None) -> None:
        self.code = code
        self.message = message
        self.retryable = retryable
        self.field = field
        super().__init__(message)


class RunInterrupted(Exception):
    """The run was stopped from outside (soft time limit, shutdown); its outcome is unknown."""


@dataclass(frozen=True)
class Classified:
    code: str
    message: str
    retryable: bool
    field: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    base: float = 1.0
    cap: float = 300.0
    # After an unknown outcome, wait at least this long before looking for what the call
    # created: a request still being handled by the server must land before we list.
    settle: float = 0.0


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float


_REDIS_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    redis.exceptions.BusyLoadingError)


def classify(exc: BaseException) -> Classified:
    if isinstance(exc, ProvisioningFailure):
        return Classified(exc.code, exc.message, exc.retryable, exc.field)
    if isinstance(exc, LiveKitError):
        return Classified(exc.code, str(exc), exc.retryable)
    if isinstance(exc, RunInterrupted):
        return Classified("run_interrupted", str(exc) or "the run was interrupted", True)
    if isinstance(exc, _REDIS_TRANSIENT):
        return Classified("redis_unavailable", f"Redis is unreachable: {type(exc).__name__}", True)
    if isinstance(exc, UnreadableRecord):
        # e.g. the number's record: retrying cannot repair it; its message names no values.
        return Classified("unreadable_record", str(exc), False)
    # A bug: say which kind without echoing values that may hold request data.
    return Classified("internal_error", f"unexpected {type(exc).__name__} in the worker", False)


def backoff(attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    # Clamp the exponent: 2.0 ** 1024 overflows and TRUNKLINE_MAX_ATTEMPTS has no upper bound.
    ceiling: float = min(policy.cap, policy.base * 2.0 ** min(max(0, attempt - 1), 1000))
    return rand() * ceiling


def decide(
    exc: BaseException,
    attempts: int,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Retry `exc` after `attempts` attempts? The attempt limit counts every delivery."""
    if not classify(exc).retryable or attempts >= policy.max_attempts:
        return Decision(retry=False, delay=0.0)
    delay = backoff(attempts, policy, rand)
    if isinstance(exc, LiveKitRateLimited) and exc.retry_after:
        delay = max(delay, float(exc.retry_after))
    if isinstance(exc, LiveKitError) and exc.outcome_unknown:
        delay = max(delay, policy.settle)
    return Decision(retry=True, delay=min(delay, policy.cap))
