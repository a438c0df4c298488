"""Unit tests for ops.dlq: listing, filtering and purging dead letters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ops.dlq import DeadLetters
from tests.ops.conftest import World
from tests.worker.fake_livekit import PASSWORD


def test_entries_newest_first_with_filters(world: World) -> None:
    """Dead letters come newest first and filter by organisation, error code and age."""
    first = world.dead_letter("+15551230001", org_id="org_a")
    second = world.dead_letter("+15551230002", org_id="org_b")
    letters = DeadLetters(world.store)
    assert [e.job_id for e in letters.entries()] == [second.job_id, first.job_id]
    assert [e.job_id for e in letters.entries(org="org_a")] == [first.job_id]
    assert [e.job_id for e in letters.entries(code="number_conflict")] == [
        second.job_id, first.job_id]
    assert letters.entries(code="livekit_timeout") == []
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert letters.entries(since=future) == []
    assert len(letters.entries(since=datetime.now(UTC) - timedelta(minutes=1))) == 2
    assert [e.job_id for e in letters.entries(limit=1)] == [second.job_id]
    assert letters.count() == 2


def test_views_hold_no_secret(world: World) -> None:
    """Neither the list view nor the detail view holds the password or its ciphertext."""
    job = world.dead_letter("+15551230001")
    assert job.request is not None
    letter = DeadLetters(world.store).get(job.job_id)
    assert letter is not None
    summary, detail = letter.summary(), letter.detail()
    assert summary["error"]["code"] == "number_conflict"
    assert summary["number"] == "+15551230001"
    text = json.dumps([summary, detail])
    assert PASSWORD not in text
    assert job.request.auth_password_ciphertext not in text
    assert detail["request"]["has_auth_password"] is True


def test_get_and_purge(world: World) -> None:
    """get() only finds listed jobs; purge() removes entries and keeps the job records."""
    job = world.dead_letter("+15551230001")
    letters = DeadLetters(world.store)
    assert letters.get("job_unknown") is None
    assert letters.purge([job.job_id, "job_unknown"]) == 1
    assert letters.get(job.job_id) is None
    assert world.store.get(job.job_id) is not None


def test_a_listed_job_without_record_is_shown_as_such(world: World) -> None:
    """An id on the list whose job record is gone still shows up, marked as missing."""
    world.redis.zadd(world.store.keys.dead_letters, {"job_gone": 1.0})
    [letter] = DeadLetters(world.store).entries()
    assert letter.job is None
    assert letter.summary()["missing_record"] is True
