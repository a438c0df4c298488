"""Unit tests for producers.ratelimit: a sliding window per subject in Redis."""

from __future__ import annotations

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.ratelimit import MAX_LIMIT, RateLimiter


def test_limit_then_refuse_until_the_oldest_leaves_the_window() -> None:
    """`limit` requests pass, the next is refused until the oldest is a window old."""
    now = [600.0]
    limiter = RateLimiter(fakeredis.FakeRedis(), 2, clock=lambda: now[0])
    assert [limiter.hit("org").allowed for _ in range(3)] == [True, True, False]
    refused = limiter.hit("org")
    assert refused.remaining == 0
    assert refused.headers()["Retry-After"] == "60"
    now[0] += 59.5
    late = limiter.hit("org")
    assert not late.allowed
    assert late.reset_after == 1
    now[0] += 0.5
    assert limiter.hit("org").allowed


def test_twice_the_limit_cannot_pass_across_a_window_edge() -> None:
    """The fixed window's flaw: the limit just before a minute boundary and again just after
    it. A sliding window refuses the second burst until a minute after the first."""
    now = [659.9]  # 0.1 s before a one-minute boundary
    limiter = RateLimiter(fakeredis.FakeRedis(), 5, clock=lambda: now[0])
    assert all(limiter.hit("org").allowed for _ in range(5))
    now[0] = 660.1
    assert not any(limiter.hit("org").allowed for _ in range(5))
    now[0] = 719.95
    assert all(limiter.hit("org").allowed for _ in range(5))


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.floats(min_value=0.0, max_value=40.0), min_size=1, max_size=60),
       limit=st.integers(min_value=1, max_value=6))
def test_no_window_ever_admits_more_than_the_limit(gaps: list[float], limit: int) -> None:
    """Whatever the arrival times, any 60 s span holds at most `limit` admitted requests."""
    now = [1000.0]
    limiter = RateLimiter(fakeredis.FakeRedis(), limit, clock=lambda: now[0])
    admitted: list[int] = []  # in ms, as the limiter sees the clock
    for gap in gaps:
        now[0] += gap
        if limiter.hit("org").allowed:
            admitted.append(int(now[0] * 1000))
    for start in admitted:
        assert len([t for t in admitted if start <= t < start + 60_000]) <= limit


def test_subjects_are_counted_apart() -> None:
    """One subject's traffic does not use another's budget."""
    limiter = RateLimiter(fakeredis.FakeRedis(), 1, clock=lambda: 0.0)
    assert limiter.hit("a").allowed
    assert not limiter.hit("a").allowed
    assert limiter.hit("b").allowed


def test_peek_counts_nothing() -> None:
    limiter = RateLimiter(fakeredis.FakeRedis(), 1, clock=lambda: 5.0)
    assert all(limiter.peek("a").allowed for _ in range(3))
    assert limiter.hit("a").allowed
    assert not limiter.peek("a").allowed


def test_refused_requests_do_not_extend_the_wait() -> None:
    """Hammering past the limit does not push the reset further out."""
    now = [0.0]
    limiter = RateLimiter(fakeredis.FakeRedis(), 1, clock=lambda: now[0])
    assert limiter.hit("a").allowed
    for _ in range(50):
        now[0] += 1
        assert not limiter.hit("a").allowed
    now[0] = 60.0
    assert limiter.hit("a").allowed


def test_logs_expire() -> None:
    """Every log carries an expiry, so none outlives its window."""
    redis = fakeredis.FakeRedis()
    RateLimiter(redis, 5, clock=lambda: 30.0).hit("org")
    (key,) = list(redis.scan_iter())
    assert 0 < redis.pttl(key) <= 60_000


def test_zero_turns_it_off() -> None:
    """A limit of 0 allows everything and stores nothing."""
    redis = fakeredis.FakeRedis()
    limiter = RateLimiter(redis, 0)
    assert all(limiter.hit("org").allowed for _ in range(100))
    assert list(redis.scan_iter()) == []


def test_bad_arguments() -> None:
    """Negative or unbounded limits and empty windows are refused."""
    with pytest.raises(ValueError, match="limit"):
        RateLimiter(fakeredis.FakeRedis(), -1)
    with pytest.raises(ValueError, match="limit"):
        RateLimiter(fakeredis.FakeRedis(), MAX_LIMIT + 1)
    with pytest.raises(ValueError, match="window"):
        RateLimiter(fakeredis.FakeRedis(), 1, window=0)
