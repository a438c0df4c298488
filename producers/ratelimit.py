"""Request limits in Redis: a sliding window per subject (an organisation, a client address, an
API key id), one atomic Lua step.

A fixed one-minute window lets twice the limit through across a window edge (the limit at
:59, the limit again at :00). A sliding log never admits more than `limit` requests in any
`window` seconds: each admitted request is a member of a sorted set scored by its time, the
ones older than the window are dropped, and a request is admitted only while fewer than
`limit` remain. Pruning, counting, adding and the key's expiry are one script, so a crash
cannot leave a log without its expiry, and every API process shares the count. Refused
requests are not logged, so a client hammering past its limit does not extend its own wait.
Memory is at most `limit` members per subject: the limit is bounded (`MAX_LIMIT`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis

# Per-subject log size is bounded by the limit; a larger limit would let one subject hold
# megabytes of Redis.
MAX_LIMIT = 10_000

_SLIDE = """
-- KEYS: the subject's log.  ARGV: now (ms), window (ms), limit, member, record (1) or peek (0)
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = count < limit
if allowed and ARGV[5] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local free_in = window
if oldest[2] then free_in = tonumber(oldest[2]) + window - now end
return {allowed and 1 or 0, count, free_in}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # seconds until the oldest counted request leaves the window

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_after)
        return headers


class RateLimiter:
    """At most `limit` requests per subject in any `window` seconds; a limit of 0 turns it off.

    `hit` counts a request if it is allowed; `peek` only asks whether one would be (the
    failed-authentication limit peeks before the costly check and hits after a failure).
    """

    def __init__(self, redis: Redis, limit: int, *, window: int = 60,
                 prefix: str = "trunkline:api:ratelimit",
                 clock: Callable[[], float] = time.time) -> None:
        if not 0 <= limit <= MAX_LIMIT or window < 1:
            raise ValueError(f"limit must be 0-{MAX_LIMIT} and window >= 1")
        self.redis = redis
        self.limit = limit
        self.window = window
        self.prefix = prefix
        self.clock = clock
        self._slide = redis.register_script(_SLIDE)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def hit(self, *subjects: str) -> Verdict:
        """Count one request against each subject; the first refusal, else the last verdict."""
        return self._run(subjects, record=True)

    def peek(self, *subjects: str) -> Verdict:
        """Whether a request would be within every subject's limit; counts nothing."""
        return self._run(subjects, record=False)

    def _run(self, subjects: tuple[str, ...], *, record: bool) -> Verdict:
        if not self.enabled:
            return Verdict(True, 0, 0, self.window)
        now_ms = int(self.clock() * 1000)
        # One round trip however many subjects: authentication asks for two on every request.
        pipe = self.redis.pipeline(transaction=False)
        for subject in subjects:
            self._slide(keys=[f"{self.prefix}:{subject}"],
                        args=[now_ms, self.window * 1000, self.limit,
                              f"{now_ms}:{secrets.token_hex(6)}", int(record)], client=pipe)
        verdicts = [self._verdict(cast(list[Any], raw)) for raw in pipe.execute()]
        return next((v for v in verdicts if not v.allowed), verdicts[-1])

    def _verdict(self, raw: list[Any]) -> Verdict:
        allowed, count, free_in_ms = (int(v) for v in raw)
        reset_after = max(1, -(-free_in_ms // 1000))  # whole seconds, rounded up
        return Verdict(bool(allowed), self.limit, max(0, self.limit - count), reset_after)
