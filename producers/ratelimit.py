"""A per-organisation request limit in Redis: a fixed one-minute window, one atomic step.

`INCR` and the window's expiry are one Lua script, so a crash cannot leave a counter without
its expiry (which would block an organisation for good). Every API process shares the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis

_HIT = """
-- KEYS: counter.  ARGV: window seconds
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]) * 2) end
return count
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # seconds until the window ends

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
    """`limit` requests per organisation per `window` seconds; a limit of 0 turns it off."""

    def __init__(self, redis: Redis, limit: int, *, window: int = 60,
                 prefix: str = "trunkline:api", clock: Callable[[], float] = time.time) -> None:
        if limit < 0 or window < 1:
            raise ValueError("limit must be >= 0 and window >= 1")
        self.redis = redis
        self.limit = limit
        self.window = window
        self.prefix = prefix
        self.clock = clock
        self._hit = redis.register_script(_HIT)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def hit(self, org_id: str) -> Verdict:
        """Count one request of `org_id` and say whether it is within the limit."""
        now = self.clock()
        window_index = int(now // self.window)
        reset_after = max(1, int((window_index + 1) * self.window - now + 0.999))
        if not self.enabled:
            return Verdict(True, 0, 0, reset_after)
        key = f"{self.prefix}:ratelimit:{org_id}:{window_index}"
        count = int(cast(Any, self._hit(keys=[key], args=[self.window])))
        return Verdict(count <= self.limit, self.limit, max(0, self.limit - count), reset_after)
