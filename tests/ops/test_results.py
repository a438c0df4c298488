"""Unit tests for ops.results: the reference consumer of trunkline:results."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis

from ops.results import ResultEvent, ResultsConsumer
from worker.store import RESULTS_STREAM


def publish(redis: fakeredis.FakeRedis, job_id: str, status: str = "succeeded") -> str:
    payload = {"number": "+15551230001", "run": 1, "inbound_trunk_id": "ST_a"}
    entry = redis.xadd(RESULTS_STREAM, {"job_id": job_id, "org_id": "org_a", "status": status,
                                        "payload": json.dumps(payload)})
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def pending(redis: fakeredis.FakeRedis, group: str) -> int:
    info: Any = redis.xpending(RESULTS_STREAM, group)
    return int(info["pending"])


def test_reads_everything_and_acknowledges_it() -> None:
    """A new group starts at the oldest entry; each entry is handled, then acknowledged."""
    redis = fakeredis.FakeRedis()
    ids = [publish(redis, f"job_{i}") for i in range(3)]
    seen: list[ResultEvent] = []
    consumer = ResultsConsumer(redis, group="billing", consumer="c1")
    assert consumer.run(seen.append, limit=3) == 3
    assert [e.entry_id for e in seen] == ids
    assert seen[0].payload["number"] == "+15551230001" and seen[0].status == "succeeded"
    assert pending(redis, "billing") == 0


def test_limit_takes_no_more_than_it_handles() -> None:
    """Stopping at --count leaves nothing pending on this consumer."""
    redis = fakeredis.FakeRedis()
    for i in range(5):
        publish(redis, f"job_{i}")
    consumer = ResultsConsumer(redis, group="g", consumer="c1")
    assert consumer.run(lambda e: None, limit=2) == 2
    assert pending(redis, "g") == 0
    rest: list[ResultEvent] = []
    assert ResultsConsumer(redis, group="g", consumer="c2").run(rest.append, limit=3) == 3
    assert [e.job_id for e in rest] == ["job_2", "job_3", "job_4"]


def test_claims_entries_a_dead_consumer_left_pending() -> None:
    """Entries a dead consumer read but never acknowledged are claimed and handled."""
    redis = fakeredis.FakeRedis()
    first = publish(redis, "job_dead")
    ResultsConsumer(redis, group="g", consumer="dead").ensure_group()
    redis.xreadgroup("g", "dead", {RESULTS_STREAM: ">"}, count=1)
    assert pending(redis, "g") == 1
    publish(redis, "job_new")
    time.sleep(0.02)
    seen: list[ResultEvent] = []
    consumer = ResultsConsumer(redis, group="g", consumer="alive", claim_idle=0.01)
    assert consumer.run(seen.append, limit=2, idle_timeout=1) == 2
    assert (seen[0].entry_id, seen[0].source) == (first, "claimed")
    assert [e.job_id for e in seen] == ["job_dead", "job_new"]
    assert pending(redis, "g") == 0


def test_entries_idle_for_less_than_claim_idle_are_not_stolen() -> None:
    """A live consumer's fresh pending entry is left to it."""
    redis = fakeredis.FakeRedis()
    publish(redis, "job_busy")
    ResultsConsumer(redis, group="g", consumer="busy").ensure_group()
    redis.xreadgroup("g", "busy", {RESULTS_STREAM: ">"}, count=1)
    consumer = ResultsConsumer(redis, group="g", consumer="other", claim_idle=60)
    assert consumer.run(lambda e: None, idle_timeout=0.05) == 0
    assert pending(redis, "g") == 1


def test_own_pending_entries_are_read_again_first() -> None:
    """A restarted consumer (same name) handles what it received but never acknowledged."""
    redis = fakeredis.FakeRedis()
    publish(redis, "job_a")
    ResultsConsumer(redis, group="g", consumer="me").ensure_group()
    redis.xreadgroup("g", "me", {RESULTS_STREAM: ">"}, count=1)
    seen: list[ResultEvent] = []
    ResultsConsumer(redis, group="g", consumer="me", claim_idle=60).run(
        seen.append, idle_timeout=0.05)
    assert [(e.job_id, e.source) for e in seen] == [("job_a", "pending")]
    assert pending(redis, "g") == 0


def test_timeout_stops_an_idle_reader_and_bad_entries_do_not_block() -> None:
    """--timeout ends a quiet tail; an undecodable entry is handed over and acknowledged."""
    redis = fakeredis.FakeRedis()
    redis.xadd(RESULTS_STREAM, {"job_id": "job_x", "payload": "not json"})
    seen: list[ResultEvent] = []
    started = time.monotonic()
    assert ResultsConsumer(redis, group="g").run(seen.append, idle_timeout=0.1) == 1
    assert time.monotonic() - started < 2
    assert seen[0].status == "?" and seen[0].payload == {"undecodable": "not json"}
    assert pending(redis, "g") == 0


def test_start_at_new_entries_only() -> None:
    """--start-id '$' makes a new group skip what the stream already holds."""
    redis = fakeredis.FakeRedis()
    publish(redis, "job_old")
    consumer = ResultsConsumer(redis, group="g", start_id="$")
    assert consumer.ensure_group() is True
    assert consumer.ensure_group() is False
    publish(redis, "job_new")
    seen: list[ResultEvent] = []
    consumer.run(seen.append, idle_timeout=0.05)
    assert [e.job_id for e in seen] == ["job_new"]
