"""Unit tests for producers.ratelimit: a per-organisation fixed window in Redis."""

from __future__ import annotations

import fakeredis
import pytest

from producers.ratelimit import RateLimiter


def test_limit_then_refuse_then_next_window() -> None:
    """`limit` requests pass, the next is refused, and a new window starts afresh."""
    now = [600.0]
    limiter = RateLimiter(fakeredis.FakeRedis(), 2, clock=lambda: now[0])
    assert [limiter.hit("org").allowed for _ in range(3)] == [True, True, False]
    refused = limiter.hit("org")
    assert refused.remaining == 0
    assert refused.headers()["Retry-After"] == "60"
    now[0] += 60
    assert limiter.hit("org").allowed


def test_orgs_are_counted_apart() -> None:
    """One organisation's traffic does not use another's budget."""
    limiter = RateLimiter(fakeredis.FakeRedis(), 1, clock=lambda: 0.0)
    assert limiter.hit("a").allowed
    assert not limiter.hit("a").allowed
    assert limiter.hit("b").allowed


def test_counters_expire() -> None:
    """Every counter carries an expiry, so none outlives its window for long."""
    redis = fakeredis.FakeRedis()
    RateLimiter(redis, 5, clock=lambda: 30.0).hit("org")
    (key,) = list(redis.scan_iter())
    assert 0 < redis.ttl(key) <= 120


def test_zero_turns_it_off() -> None:
    """A limit of 0 allows everything and stores nothing."""
    redis = fakeredis.FakeRedis()
    limiter = RateLimiter(redis, 0)
    assert all(limiter.hit("org").allowed for _ in range(100))
    assert list(redis.scan_iter()) == []


def test_bad_arguments() -> None:
    """Negative limits and empty windows are refused."""
    with pytest.raises(ValueError, match="limit"):
        RateLimiter(fakeredis.FakeRedis(), -1)
    with pytest.raises(ValueError, match="window"):
        RateLimiter(fakeredis.FakeRedis(), 1, window=0)
