"""A stored record that does not load is isolated, never fatal: the store refuses to write one,
and the runner, the sweeper and the dead-letter view skip it with a clear reason while every
other job goes on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest

from ops.dlq import DeadLetters
from tests.worker.fake_livekit import NUMBER, ORG, PASSWORD, Harness, build_job
from worker.records import JobState
from worker.store import UnreadableRecord, UnstorableRecord
from worker.sweeper import Sweeper

NOW = 1_900_000_000.0


@pytest.fixture
def world() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def deep_list(levels: int) -> list[Any]:
    top: list[Any] = []
    current = top
    for _ in range(levels):
        inner: list[Any] = []
        current.append(inner)
        current = inner
    return top


def plant(world: Harness, raw: bytes, *, number: str = "+15557654321") -> str:
    """Write a job record into Redis by hand, as if it were queued and overdue."""
    job_id = "job_" + "f" * 32
    keys = world.store.keys
    world.redis.set(keys.job(job_id), raw)
    world.redis.zadd(keys.active, {job_id: NOW - 10})
    world.redis.zadd(keys.in_flight(number), {job_id: NOW - 100})
    return job_id


def corrupt_records(world: Harness) -> dict[str, bytes]:
    """Garbage, an older schema, a hand edit, and nesting past the JSON parser's limit."""
    good = json.loads(build_job(world.vault, number="+15550000001").model_dump_json())
    older = {k: v for k, v in good.items() if k not in ("kind", "request")}
    edited = {**good, "state": "paused"}
    nested = {**good, "request": {**good["request"], "metadata": {"x": deep_list(300)}}}
    return {name: json.dumps({**record, "org_id": ORG, "number": "+15557654321"}).encode()
            for name, record in (("older", older), ("edited", edited),
                                 ("nested", nested))} | {"garbage": b"{not json"}


@pytest.mark.parametrize("kind", ["garbage", "older", "edited", "nested"])
def test_the_store_names_an_unreadable_job_without_its_values(world: Harness, kind: str) -> None:
    raw = corrupt_records(world)[kind]
    job_id = plant(world, raw)
    with pytest.raises(UnreadableRecord) as caught:
        world.store.get(job_id)
    assert caught.value.ident == job_id
    assert job_id in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert "gAAAA" not in str(caught.value)  # no Fernet ciphertext either


@pytest.mark.parametrize("kind", ["garbage", "older", "edited", "nested"])
def test_the_runner_dead_letters_an_unreadable_job_once(world: Harness, kind: str) -> None:
    """Its own reason code, one failed event, out of the sweep and in-flight indexes; a
    second delivery publishes nothing more."""
    job_id = plant(world, corrupt_records(world)[kind])
    runner = world.runner()
    assert runner.run(job_id).kind == "skipped"
    assert runner.run(job_id).kind == "skipped"
    keys = world.store.keys
    assert world.redis.zscore(keys.active, job_id) is None
    # The number is read from the raw record where it can be; garbage names none.
    in_flight = [] if kind != "garbage" else [job_id]
    assert world.store.jobs_in_flight("+15557654321") == in_flight
    assert world.redis.zscore(keys.dead_letters, job_id) is not None
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], world.redis.xrange(keys.results))
    events = [fields for _, fields in entries if fields[b"job_id"] == job_id.encode()]
    assert len(events) == 1
    payload = json.loads(events[0][b"payload"])
    assert events[0][b"status"] == b"failed"
    assert payload["error_code"] == "unreadable_record"
    assert payload["retryable"] is False
    if kind != "garbage":
        assert events[0][b"org_id"] == ORG.encode()
        assert payload["number"] == "+15557654321"
    assert world.store.unreadable_reason(job_id)


def test_the_sweeper_skips_an_unreadable_job_and_resends_the_others(world: Harness) -> None:
    """One corrupt overdue record must not stop the sweeper re-sending every other job, on
    this pass or the next."""
    bad = plant(world, corrupt_records(world)["nested"])
    good = world.submit(deadline=NOW - 5)
    sent: list[str] = []
    sweeper = Sweeper(world.store, sent.append, world.settings, clock=lambda: NOW)
    assert sweeper.sweep_once() == [good.job_id]
    assert world.redis.zscore(world.store.keys.active, bad) is None
    assert world.redis.zscore(world.store.keys.dead_letters, bad) is not None
    world.redis.delete(world.store.keys.sweeper_lock)
    world.store.set_deadline(good.job_id, NOW - 1)
    assert sweeper.sweep_once() == [good.job_id]
    assert sent == [good.job_id, good.job_id]


def test_the_dead_letter_list_shows_an_unreadable_job_beside_the_others(
    world: Harness,
) -> None:
    bad = plant(world, corrupt_records(world)["older"])
    world.runner().run(bad)
    letters = DeadLetters(world.store).entries()
    (letter,) = [entry for entry in letters if entry.job_id == bad]
    assert letter.code == "unreadable_record"
    summary = letter.summary()
    assert summary["unreadable_record"] is True
    assert summary["error"]["code"] == "unreadable_record"
    assert DeadLetters(world.store).get(bad) is not None


def test_the_store_never_writes_what_it_cannot_read_back(world: Harness) -> None:
    """A job whose JSON would not load (nesting past the parser's limit) is refused whole."""
    job = world.submit(number="+15550000002")
    assert job.request is not None
    unloadable = job.model_copy(update={
        "job_id": "job_" + "e" * 32, "number": "+15550000003",
        "request": job.request.model_copy(update={"metadata": {"x": deep_list(300)}})})
    with pytest.raises(UnstorableRecord):
        world.store.create(unloadable, deadline=NOW)
    assert world.store.get(unloadable.job_id) is None
    assert world.store.jobs_in_flight("+15550000003") == []


def test_a_readable_job_still_runs_after_an_unreadable_one(world: Harness) -> None:
    plant(world, b"{not json", number=NUMBER)
    world.runner().run("job_" + "f" * 32)
    job = world.submit()
    world.runner().run(job.job_id)
    assert world.reload(job).state is JobState.SUCCEEDED


def test_a_job_whose_number_record_is_unreadable_fails_with_that_reason(
    world: Harness,
) -> None:
    """The saga meets a corrupt phone-number record for its number: the job fails at once
    (no retry can repair it) with code unreadable_record, one event, nothing left on LiveKit."""
    world.redis.set(world.store.keys.number(NUMBER), b'{"number": "+1555')
    job = world.submit()
    world.runner().run(job.job_id)
    failed = world.reload(job)
    assert failed.state is JobState.FAILED
    assert failed.error is not None
    assert failed.error.code == "unreadable_record"
    assert failed.attempts == 1
    assert "phone-number record" in failed.error.message
    assert world.fake.inbound == {} and world.fake.outbound == {} and world.fake.rules == {}
