"""The reference downstream consumer of `trunkline:results`.

Copy this pattern into a service that reacts to provisioning results:

1. One consumer group per downstream service (`XGROUP CREATE ... MKSTREAM`); each process
   of that service reads as its own consumer name within the group.
2. On start, re-read this consumer's own pending entries (`XREADGROUP ... 0`): entries it
   received before a crash but never acknowledged.
3. Claim entries that other consumers of the group received and left unacknowledged for
   longer than `claim_idle` (`XAUTOCLAIM`): their process died. Do it again periodically.
4. Read new entries (`XREADGROUP ... >`, blocking), handle each, then `XACK` it. An entry is
   acknowledged only after it was handled, so delivery is at-least-once: deduplicate on
   `job_id` + `payload.run` in the handler.

Entries that cannot be decoded are handed over as they are (status `?`) and acknowledged
too, so one bad entry never blocks the group.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from redis import Redis
from redis.exceptions import ResponseError

from worker.store import RESULTS_STREAM

DEFAULT_GROUP = "trunkline-cli"


@dataclass(frozen=True)
class ResultEvent:
    entry_id: str
    job_id: str
    org_id: str
    status: str
    payload: dict[str, Any] = field(default_factory=dict)
    # How the consumer got it: "new", "pending" (its own, unacknowledged) or "claimed".
    source: str = "new"

    @classmethod
    def decode(cls, entry_id: Any, fields: dict[Any, Any] | None, source: str) -> ResultEvent:
        data = {_text(k): _text(v) for k, v in (fields or {}).items()}
        try:
            payload = json.loads(data.get("payload", "{}"))
        except ValueError:
            payload = {"undecodable": data.get("payload", "")}
        if not isinstance(payload, dict):
            payload = {"value": payload}
        return cls(
            entry_id=_text(entry_id),
            job_id=data.get("job_id", "?"),
            org_id=data.get("org_id", "?"),
            status=data.get("status", "?"),
            payload=payload,
            source=source,
        )

    def view(self) -> dict[str, Any]:
        return {"id": self.entry_id, "job_id": self.job_id, "org_id": self.org_id,
                "status": self.status, "payload": self.payload, "source": self.source}


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ResultsConsumer:
    def __init__(
        self,
        redis: Redis,
        *,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        stream: str = RESULTS_STREAM,
        claim_idle: float = 60.0,
        start_id: str = "0",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not group:
            raise ValueError("a consumer group name is required")
        self.redis = redis
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.stream = stream
        self.claim_idle_ms = max(0, int(claim_idle * 1000))
        self.start_id = start_id
        self.clock = clock

    def ensure_group(self) -> bool:
        """Create the group (and the stream) if needed; True when it was created now."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    def own_pending(self, count: int) -> list[ResultEvent]:
        """Entries this consumer received earlier and never acknowledged."""
        return self._read("0", count, block_ms=None, source="pending")

    def claim_stale(self, count: int) -> list[ResultEvent]:
        """Take over entries left unacknowledged by any consumer for `claim_idle` or longer."""
        claimed: list[ResultEvent] = []
        start = "0-0"
        while len(claimed) < count:
            reply: list[Any] = self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=start,
                count=count - len(claimed))
            start = _text(reply[0])
            for entry in reply[1]:
                # Redis 6.2 returns nil for entries trimmed from the stream; 7.0 drops them.
                if entry is None or entry[1] is None:
                    continue
                claimed.append(ResultEvent.decode(entry[0], entry[1], "claimed"))
            if start == "0-0":
                break
        return claimed

    def read_new(self, count: int, block_ms: int | None) -> list[ResultEvent]:
        return self._read(">", count, block_ms=block_ms, source="new")

    def ack(self, event: ResultEvent) -> None:
        self.redis.xack(self.stream, self.group, event.entry_id)

    def run(
        self,
        handle: Callable[[ResultEvent], None],
        *,
        limit: int | None = None,
        idle_timeout: float | None = None,
        block: float = 1.0,
        claim_every: float = 5.0,
    ) -> int:
        """Handle and acknowledge entries until `limit` are done or none came for `idle_timeout`.

        Only as many entries are taken from Redis as are still wanted, so stopping at `limit`
        leaves nothing pending on this consumer. Returns the number handled.
        """
        self.ensure_group()
        done = 0
        last_seen = self.clock()
        next_claim = 0.0
        check_own = True

        def remaining() -> int:
            return 100 if limit is None else limit - done

        while remaining() > 0:
            now = self.clock()
            batch: list[ResultEvent] = []
            if check_own:
                batch = self.own_pending(remaining())
                check_own = bool(batch)
            if not batch and now >= next_claim:
                batch = self.claim_stale(remaining())
                next_claim = now + claim_every
            if not batch:
                wait = block
                if idle_timeout is not None:
                    wait = min(wait, idle_timeout - (now - last_seen))
                    if wait <= 0:
                        break
                batch = self.read_new(remaining(), block_ms=max(1, int(wait * 1000)))
            for event in batch:
                handle(event)
                self.ack(event)
                done += 1
            if batch:
                last_seen = self.clock()
        return done

    def _read(self, last_id: str, count: int, *, block_ms: int | None,
              source: str) -> list[ResultEvent]:
        reply = cast(list[Any] | None, self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: last_id}, count=count, block=block_ms))
        events: list[ResultEvent] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                # A pending entry trimmed from the stream comes back without fields.
                if not fields:
                    self.redis.xack(self.stream, self.group, entry_id)
                    continue
                events.append(ResultEvent.decode(entry_id, fields, source))
        return events


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
