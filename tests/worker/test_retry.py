"""Unit tests for worker.retry: which failures are retried, and after how long."""

from __future__ import annotations

import pytest
import redis.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.livekit.errors import (
    DispatchRuleConflict,
    InboundNumberConflict,
    LiveKitConflict,
    LiveKitError,
    LiveKitNotFound,
    LiveKitRateLimited,
    LiveKitRejected,
    LiveKitServerError,
    LiveKitTimeout,
    LiveKitUnauthorized,
    LiveKitUnavailable,
)
from worker.retry import (
    Classified,
    Decision,
    ProvisioningFailure,
    RetryPolicy,
    RunInterrupted,
    backoff,
    classify,
    decide,
)

METHOD = "CreateSIPInboundTrunk"
SECRET = "Canary-Pw-7f3b9c1d"
POLICY = RetryPolicy(max_attempts=5, base=1.0, cap=60.0)


def zero() -> float:
    return 0.0


def one() -> float:
    return 1.0


def half() -> float:
    return 0.5


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("error", "code", "retryable"),
    [
        (LiveKitUnavailable("refused", method=METHOD), "livekit_unavailable", True),
        (
            LiveKitTimeout("read timeout", method=METHOD, outcome_unknown=True),
            "livekit_timeout",
            True,
        ),
        (LiveKitServerError("internal", method=METHOD, status=500), "livekit_server_error", True),
        (
            LiveKitRateLimited("slow down", method=METHOD, status=429, retry_after=2.0),
            "livekit_rate_limited",
            True,
        ),
        (LiveKitRejected("bad", method=METHOD, status=400), "livekit_rejected", False),
        (LiveKitUnauthorized("no", method=METHOD, status=401), "livekit_unauthorized", False),
        (LiveKitNotFound("gone", method=METHOD, status=404), "livekit_not_found", False),
        (LiveKitConflict("exists", method=METHOD, status=409), "livekit_conflict", False),
        (
            InboundNumberConflict("conflict", method=METHOD, conflicting_id="ST_x"),
            "number_conflict",
            False,
        ),
        (
            DispatchRuleConflict("conflict", method=METHOD, conflicting_id="SDR_x"),
            "dispatch_rule_conflict",
            False,
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, LiveKitError) else None,
)
def test_classify_livekit_errors(error: LiveKitError, code: str, retryable: bool) -> None:
    """Each LiveKit error class maps to its own code and its class's retry policy."""
    result = classify(error)
    assert result == Classified(code=code, message=str(error), retryable=retryable)
    assert METHOD in result.message


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError(f"Error connecting to redis://:{SECRET}@cache:6379"),
        redis.exceptions.TimeoutError(f"Timeout reading from redis://:{SECRET}@cache"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    ],
    ids=lambda value: type(value).__name__,
)
def test_redis_connection_trouble_is_retryable(error: Exception) -> None:
    """Redis connection errors and timeouts are retryable and do not echo their text (URLs)."""
    result = classify(error)
    assert result.code == "redis_unavailable"
    assert result.retryable is True
    assert type(error).__name__ in result.message
    assert SECRET not in result.message


@pytest.mark.parametrize(
    "error",
    [redis.exceptions.ResponseError("WRONGTYPE"), redis.exceptions.DataError("bad")],
    ids=lambda value: type(value).__name__,
)
def test_other_redis_errors_are_permanent(error: Exception) -> None:
    """Redis command errors (a bug, not an outage) are not retried."""
    result = classify(error)
    assert result.code == "internal_error"
    assert result.retryable is False


def test_run_interrupted_is_retryable() -> None:
    """An interrupted run (soft time limit, shutdown) is retried with its own code."""
    assert classify(RunInterrupted()) == Classified(
        "run_interrupted", "the run was interrupted", True
    )
    assert classify(RunInterrupted("soft time limit")).message == "soft time limit"


def test_provisioning_failure_carries_code_field_and_retryable() -> None:
    """A ProvisioningFailure is classified with exactly its own code, message, field, policy."""
    failure = ProvisioningFailure(
        "number_taken", "the number belongs to another org", field="number"
    )
    assert failure.retryable is False
    assert classify(failure) == Classified(
        "number_taken", "the number belongs to another org", False, "number"
    )
    busy = ProvisioningFailure("number_locked", "another job holds the number", retryable=True)
    assert classify(busy) == Classified("number_locked", "another job holds the number", True, None)


@pytest.mark.parametrize(
    "error",
    [
        ValueError(f"password={SECRET}"),
        TypeError(f"bad {SECRET}"),
        KeyError(SECRET),
        RuntimeError(SECRET),
        ConnectionError(SECRET),
    ],
    ids=lambda value: type(value).__name__,
)
def test_unexpected_errors_are_permanent_and_not_echoed(error: Exception) -> None:
    """Any other exception is a permanent internal_error whose message omits the exception text."""
    result = classify(error)
    assert result.code == "internal_error"
    assert result.retryable is False
    assert result.field is None
    assert SECRET not in result.message
    assert type(error).__name__ in result.message


# --------------------------------------------------------------------------- backoff


def test_backoff_full_jitter_bounds() -> None:
    """rand()=0 gives no delay and rand()=1 gives the ceiling base * 2**(attempt-1)."""
    policy = RetryPolicy(base=2.0, cap=1000.0)
    assert backoff(3, policy, zero) == 0.0
    assert backoff(3, policy, one) == 8.0
    assert backoff(3, policy, half) == 4.0


def test_backoff_grows_exponentially_then_caps() -> None:
    """Ceilings double per attempt from `base` until they reach `cap`, then stay there."""
    policy = RetryPolicy(base=1.0, cap=60.0)
    ceilings = [backoff(attempt, policy, one) for attempt in range(1, 10)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


@pytest.mark.parametrize("attempt", [0, -3])
def test_backoff_before_the_first_attempt_uses_base(attempt: int) -> None:
    """Attempt numbers below 1 are treated as the first attempt, never a fraction of base."""
    assert backoff(attempt, RetryPolicy(base=5.0, cap=60.0), one) == 5.0


def test_backoff_uses_random_jitter_by_default() -> None:
    """Without an injected rand, delays vary and stay within [0, ceiling]."""
    delays = {backoff(6, POLICY) for _ in range(50)}
    assert len(delays) > 1
    assert all(0.0 <= d <= 32.0 for d in delays)


@settings(max_examples=300, database=None, deadline=None)
@given(
    attempt=st.integers(min_value=-10, max_value=10**9),
    base=st.floats(min_value=0.01, max_value=1e6),
    cap=st.floats(min_value=0.01, max_value=1e6),
    r=st.floats(min_value=0.0, max_value=1.0),
)
def test_backoff_is_bounded_for_any_attempt(
    attempt: int, base: float, cap: float, r: float
) -> None:
    """For any attempt number (even huge ones) the delay is in [0, cap] and never overflows."""
    delay = backoff(attempt, RetryPolicy(base=base, cap=cap), lambda: r)
    assert 0.0 <= delay <= cap


# --------------------------------------------------------------------------- decide


def retryable() -> LiveKitServerError:
    return LiveKitServerError("internal", method=METHOD, status=500)


def test_decide_retries_until_max_attempts() -> None:
    """A retryable error is retried after attempts 1..max-1 and not after max or more."""
    policy = RetryPolicy(max_attempts=3, base=1.0, cap=60.0)
    assert decide(retryable(), 1, policy, one).retry is True
    assert decide(retryable(), 2, policy, one).retry is True
    assert decide(retryable(), 3, policy, one) == Decision(retry=False, delay=0.0)
    assert decide(retryable(), 4, policy, one) == Decision(retry=False, delay=0.0)


def test_decide_single_attempt_policy_never_retries() -> None:
    """With max_attempts=1 even a retryable error is final after the first attempt."""
    assert decide(retryable(), 1, RetryPolicy(max_attempts=1), one).retry is False


def test_decide_delay_is_the_backoff_for_the_attempt() -> None:
    """The delay after attempt n is backoff(n) with the same jitter source."""
    for attempt in range(1, POLICY.max_attempts):
        assert decide(retryable(), attempt, POLICY, half) == Decision(
            retry=True, delay=backoff(attempt, POLICY, half)
        )


@pytest.mark.parametrize(
    "error",
    [
        LiveKitRejected("bad", method=METHOD, status=400),
        LiveKitUnauthorized("no", method=METHOD, status=401),
        InboundNumberConflict("conflict", method=METHOD),
        ProvisioningFailure("number_taken", "taken"),
        ValueError("bug"),
        TypeError("bug"),
    ],
    ids=lambda value: type(value).__name__,
)
def test_decide_never_retries_permanent_errors(error: Exception) -> None:
    """Permanent errors and bugs are not retried, even on the first attempt."""
    assert decide(error, 1, POLICY, one) == Decision(retry=False, delay=0.0)


def test_decide_retries_retryable_provisioning_failure() -> None:
    """A ProvisioningFailure marked retryable is retried like any transient error."""
    failure = ProvisioningFailure("number_locked", "busy", retryable=True)
    assert decide(failure, 1, POLICY, one) == Decision(retry=True, delay=1.0)


def test_decide_honours_retry_after() -> None:
    """A 429's Retry-After is waited out even when the jittered backoff is shorter."""
    limited = LiveKitRateLimited("slow down", method=METHOD, status=429, retry_after=30.0)
    assert decide(limited, 1, POLICY, zero) == Decision(retry=True, delay=30.0)


def test_decide_keeps_a_longer_backoff_than_retry_after() -> None:
    """A Retry-After shorter than the backoff does not shorten the wait."""
    limited = LiveKitRateLimited("slow down", method=METHOD, status=429, retry_after=1.0)
    assert decide(limited, 4, POLICY, one) == Decision(retry=True, delay=8.0)


def test_decide_caps_retry_after() -> None:
    """A Retry-After longer than the cap is cut to the cap."""
    limited = LiveKitRateLimited("slow down", method=METHOD, status=429, retry_after=86_400.0)
    assert decide(limited, 1, POLICY, zero) == Decision(retry=True, delay=POLICY.cap)


def test_decide_rate_limited_without_retry_after_uses_backoff() -> None:
    """A 429 with no Retry-After waits the normal jittered backoff."""
    limited = LiveKitRateLimited("slow down", method=METHOD, status=429)
    assert decide(limited, 3, POLICY, one) == Decision(retry=True, delay=4.0)


def test_decide_retry_after_does_not_extend_attempts() -> None:
    """Retry-After does not buy a retry once the attempts are exhausted."""
    limited = LiveKitRateLimited("slow down", method=METHOD, status=429, retry_after=5.0)
    assert decide(limited, POLICY.max_attempts, POLICY, zero).retry is False


@settings(max_examples=200, database=None, deadline=None)
@given(
    attempts=st.integers(min_value=1, max_value=10_000),
    retry_after=st.none() | st.floats(min_value=0.0, max_value=1e9),
    r=st.floats(min_value=0.0, max_value=1.0),
)
def test_decide_delay_never_exceeds_cap(attempts: int, retry_after: float | None, r: float) -> None:
    """Whatever the attempt and Retry-After, a retry waits between 0 and the cap."""
    policy = RetryPolicy(max_attempts=10_001, base=1.0, cap=60.0)
    limited = LiveKitRateLimited("slow down", method=METHOD, status=429, retry_after=retry_after)
    decision = decide(limited, attempts, policy, lambda: r)
    assert decision.retry is True
    assert 0.0 <= decision.delay <= policy.cap


def test_provisioning_failure_reads_as_its_message() -> None:
    """A saga failure prints as its human message (logs and tracebacks show it)."""
    failure = ProvisioningFailure("number_conflict", "the number is taken", field="number")

    assert str(failure) == "the number is taken"
    assert (failure.code, failure.retryable, failure.field) == ("number_conflict", False, "number")


def test_backoff_exponent_is_clamped_at_one_thousand() -> None:
    """Past attempt 1001 the ceiling stops doubling (2.0 ** 1024 would overflow)."""
    tiny = RetryPolicy(base=2.0 ** -1000, cap=300.0)

    assert backoff(1001, tiny, one) == 1.0
    assert backoff(5000, tiny, one) == 1.0
    assert backoff(1000, tiny, one) == 0.5
