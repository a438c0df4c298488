"""Unit tests for worker.store.JobStore on fakeredis (its Lua scripts run through lupa)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis.exceptions

from tests.worker.fake_livekit import NUMBER, ORG, build_job, settings
from worker.messages import QueuedMessage
from worker.records import Job, JobState, PhoneNumberRecord, new_job_id
from worker.store import (
    RESULTS_STREAM,
    ClaimStatus,
    IdempotencyConflict,
    JobStore,
    LeaseLost,
    NumberTaken,
)
from worker.vault import Vault

TOKEN = "job_x:token-1"


@pytest.fixture
def vault() -> Vault:
    return Vault(settings().secret_keys)


@pytest.fixture
def store() -> Iterator[JobStore]:
    client = fakeredis.FakeRedis()
    yield JobStore(client, results_maxlen=1000)
    client.close()


def stored(store: JobStore, vault: Vault, **job: Any) -> Job:
    built = build_job(vault, **job)
    store.create(built, deadline=time.time() + 30)
    return built


def terminal(job: Job, state: JobState = JobState.SUCCEEDED) -> Job:
    return job.model_copy(update={"state": state})


def record_for(job: Job, phone_number_id: str = "pn_1") -> PhoneNumberRecord:
    return PhoneNumberRecord(
        phone_number_id=phone_number_id, org_id=job.org_id, number=job.number,
        name=job.create_request.name, job_id=job.job_id, inbound_trunk_id="ST_in",
        outbound_trunk_id="ST_out", dispatch_rule_id="SDR_rule",
        outbound_pstn=job.create_request.outbound_pstn, transport=job.create_request.transport,
        auth_user_name=job.create_request.auth_user_name,
        auth_password_ciphertext=job.create_request.auth_password_ciphertext,
        room_prefix=job.create_request.room_prefix,
    )


# --------------------------------------------------------------------------- create / get


def test_create_then_get_round_trips_the_job(store: JobStore, vault: Vault) -> None:
    """A created job reads back equal, and is in the active index with its deadline."""
    job = build_job(vault)

    job_id, created = store.create(job, deadline=1234.5)

    assert (job_id, created) == (job.job_id, True)
    assert store.get(job.job_id) == job
    assert store.due(1234.5) == [job.job_id]
    assert store.due(1234.4) == []


def test_same_key_and_request_returns_the_same_job(store: JobStore, vault: Vault) -> None:
    """An idempotency key reused with the same request returns the first job's id."""
    first = build_job(vault, idempotency_key="signup-42")
    second = build_job(vault, idempotency_key="signup-42")
    assert first.job_id != second.job_id
    assert first.request_fingerprint == second.request_fingerprint

    assert store.create(first, deadline=1.0, idempotency_key="signup-42") == (first.job_id, True)
    assert store.create(second, deadline=1.0, idempotency_key="signup-42") == (
        first.job_id, False)
    assert store.get(second.job_id) is None


def test_same_key_with_another_request_is_a_conflict(store: JobStore, vault: Vault) -> None:
    """An idempotency key reused with a different request raises IdempotencyConflict."""
    first = build_job(vault, idempotency_key="signup-42")
    other = build_job(vault, idempotency_key="signup-42", name="Another line")
    store.create(first, deadline=1.0, idempotency_key="signup-42")

    with pytest.raises(IdempotencyConflict) as conflict:
        store.create(other, deadline=1.0, idempotency_key="signup-42")

    assert conflict.value.job_id == first.job_id
    assert store.get(other.job_id) is None


def test_idempotency_keys_are_per_organisation(store: JobStore, vault: Vault) -> None:
    """The same key in another organisation creates a job of its own."""
    ours = build_job(vault)
    theirs = build_job(vault, org_id="org_other")
    store.create(ours, deadline=1.0, idempotency_key="k")

    assert store.create(theirs, deadline=1.0, idempotency_key="k") == (theirs.job_id, True)


def test_creating_an_existing_job_id_is_refused(store: JobStore, vault: Vault) -> None:
    """A job id is written once; a second create with it fails instead of overwriting."""
    job = stored(store, vault)

    # The script's own refusal, not just any error Redis could answer (a Lua syntax error,
    # a wrong number of keys, NOSCRIPT would also be a ResponseError).
    with pytest.raises(redis.exceptions.ResponseError, match="job id already exists"):
        store.create(job.model_copy(update={"attempts": 5}), deadline=1.0)

    again = store.get(job.job_id)
    assert again is not None
    assert again.attempts == 0


# --------------------------------------------------------------------------- fenced writes


def test_save_with_the_lock_token_writes(store: JobStore, vault: Vault) -> None:
    """A save by the lock holder is written, and moves the sweep deadline when given one."""
    job = stored(store, vault)
    assert store.acquire_number_lock(NUMBER, TOKEN, 30)

    store.save(job.model_copy(update={"attempts": 2}), TOKEN, deadline=99.0)

    again = store.get(job.job_id)
    assert again is not None
    assert again.attempts == 2
    assert store.due(99.0) == [job.job_id]
    assert store.due(98.9) == []


@pytest.mark.parametrize("held_by", [None, "job_other:token-2"])
def test_save_without_the_lock_raises_lease_lost(
    store: JobStore, vault: Vault, held_by: str | None
) -> None:
    """A save with a token that does not hold the number lock raises LeaseLost, writes nothing."""
    job = stored(store, vault)
    if held_by:
        assert store.acquire_number_lock(NUMBER, held_by, 30)

    with pytest.raises(LeaseLost):
        store.save(job.model_copy(update={"attempts": 7}), TOKEN)

    again = store.get(job.job_id)
    assert again is not None
    assert again.attempts == 0


def test_number_lock_is_exclusive_and_released_by_its_holder_only(store: JobStore) -> None:
    """One token holds a number; another cannot take it or release it."""
    assert store.acquire_number_lock(NUMBER, TOKEN, 30)
    assert not store.acquire_number_lock(NUMBER, "job_y:token", 30)

    store.release_number_lock(NUMBER, "job_y:token")
    holder, remaining = store.number_lock_holder(NUMBER)
    assert holder == TOKEN
    assert 0 < remaining <= 30

    store.release_number_lock(NUMBER, TOKEN)
    assert store.number_lock_holder(NUMBER) == (None, 0.0)


# --------------------------------------------------------------------------- finish


def test_finish_twice_publishes_once(store: JobStore, vault: Vault) -> None:
    """A retried finish publishes nothing new and returns the first event's id."""
    job = terminal(stored(store, vault))
    store.acquire_number_lock(NUMBER, TOKEN, 30)

    first = store.finish(job, TOKEN, payload={"n": 1}, dead_letter=False)
    second = store.finish(job, TOKEN, payload={"n": 2}, dead_letter=False)

    assert first[0] is True
    assert second == (False, first[1])
    assert store.redis.xlen(RESULTS_STREAM) == 1
    again = store.get(job.job_id)
    assert again is not None
    assert again.state is JobState.SUCCEEDED
    assert store.due(float("inf")) == []


def test_finish_writes_the_entry_fields(store: JobStore, vault: Vault) -> None:
    """The stream entry carries job_id, org_id, status and the JSON payload."""
    job = terminal(stored(store, vault), JobState.FAILED)
    store.acquire_number_lock(NUMBER, TOKEN, 30)

    _, event_id = store.finish(job, TOKEN, payload={"error_code": "x"}, dead_letter=True)

    entries = store.redis.xrange(RESULTS_STREAM)
    assert entries == [(event_id.encode(), {
        b"job_id": job.job_id.encode(), b"org_id": ORG.encode(), b"status": b"failed",
        b"payload": b'{"error_code":"x"}'})]
    assert store.dead_letter_ids() == [job.job_id]


def test_finish_dead_letters_only_when_asked(store: JobStore, vault: Vault) -> None:
    """A succeeded job is not put in the dead-letter store."""
    job = terminal(stored(store, vault))
    store.acquire_number_lock(NUMBER, TOKEN, 30)

    store.finish(job, TOKEN, payload={}, dead_letter=False)

    assert store.dead_letter_ids() == []


def test_finish_without_the_lock_publishes_nothing(store: JobStore, vault: Vault) -> None:
    """A finish by a run that lost its lock raises LeaseLost and publishes nothing."""
    job = terminal(stored(store, vault))

    with pytest.raises(LeaseLost):
        store.finish(job, TOKEN, payload={}, dead_letter=True)

    assert store.redis.xlen(RESULTS_STREAM) == 0
    assert store.dead_letter_ids() == []
    again = store.get(job.job_id)
    assert again is not None
    assert again.state is JobState.QUEUED


def test_finish_refuses_a_running_job(store: JobStore, vault: Vault) -> None:
    """Only a terminal job can be finished."""
    job = stored(store, vault)
    store.acquire_number_lock(NUMBER, TOKEN, 30)

    with pytest.raises(ValueError, match="terminal"):
        store.finish(job, TOKEN, payload={}, dead_letter=False)

    assert store.redis.xlen(RESULTS_STREAM) == 0


def test_results_stream_is_trimmed_approximately(vault: Vault) -> None:
    """With results_maxlen=100, a thousand finishes leave the stream well under 1000 entries."""
    client = fakeredis.FakeRedis()
    store = JobStore(client, results_maxlen=100)
    job = terminal(build_job(vault))
    store.acquire_number_lock(NUMBER, TOKEN, 60)

    for _ in range(1000):
        published, _ = store.finish(job.model_copy(update={"job_id": new_job_id()}), TOKEN,
                                    payload={}, dead_letter=False)
        assert published

    length = client.xlen(RESULTS_STREAM)
    assert 100 <= length < 500
    client.close()


# --------------------------------------------------------------------------- numbers


def test_put_number_refuses_a_number_held_by_another_job(store: JobStore, vault: Vault) -> None:
    """A record for a number another job holds raises NumberTaken naming that record."""
    first = build_job(vault)
    second = build_job(vault, org_id="org_other")
    store.acquire_number_lock(NUMBER, TOKEN, 30)
    store.put_number(record_for(first, "pn_first"), TOKEN)

    with pytest.raises(NumberTaken) as taken:
        store.put_number(record_for(second, "pn_second"), TOKEN)

    assert taken.value.record.job_id == first.job_id
    assert taken.value.record.phone_number_id == "pn_first"
    held = store.get_number(NUMBER)
    assert held is not None
    assert held.job_id == first.job_id
    assert list(store.numbers_of_org("org_other")) == []


def test_put_number_is_idempotent_for_the_same_job(store: JobStore, vault: Vault) -> None:
    """Writing the same job's record again returns the stored record, once indexed."""
    job = build_job(vault)
    store.acquire_number_lock(NUMBER, TOKEN, 30)
    first = store.put_number(record_for(job, "pn_1"), TOKEN)

    again = store.put_number(record_for(job, "pn_1"), TOKEN)

    assert again == first
    assert list(store.numbers_of_org(ORG)) == [NUMBER]


def test_put_number_needs_the_lock(store: JobStore, vault: Vault) -> None:
    """A record write by a run without the number lock raises LeaseLost."""
    job = build_job(vault)

    with pytest.raises(LeaseLost):
        store.put_number(record_for(job), TOKEN)

    assert store.get_number(NUMBER) is None


def test_delete_number_deletes_only_the_jobs_own_record(store: JobStore, vault: Vault) -> None:
    """Deleting by another job's id leaves the record; by its own job's id removes it."""
    job = build_job(vault)
    store.acquire_number_lock(NUMBER, TOKEN, 30)
    store.put_number(record_for(job), TOKEN)

    store.delete_number_if_owned(NUMBER, ORG, "job_someoneelse", TOKEN)
    assert store.get_number(NUMBER) is not None

    store.delete_number_if_owned(NUMBER, ORG, job.job_id, TOKEN)
    assert store.get_number(NUMBER) is None
    assert list(store.numbers_of_org(ORG)) == []


# --------------------------------------------------------------------------- in flight / keys

def test_a_number_is_in_flight_from_create_until_finish(store: JobStore, vault: Vault) -> None:
    """Stored jobs are listed for their number until their terminal write."""
    first = stored(store, vault)
    second = stored(store, vault)
    assert store.jobs_in_flight(NUMBER) == [first.job_id, second.job_id]
    store.acquire_number_lock(NUMBER, TOKEN, 30)
    store.finish(terminal(first), TOKEN, payload={}, dead_letter=False)
    assert store.jobs_in_flight(NUMBER) == [second.job_id]


def test_replay_puts_the_job_back_in_flight(store: JobStore, vault: Vault) -> None:
    """A replayed dead letter counts as in flight again and leaves the dead-letter store."""
    job = stored(store, vault)
    store.acquire_number_lock(NUMBER, TOKEN, 30)
    store.finish(terminal(job, JobState.FAILED), TOKEN, payload={}, dead_letter=True)
    assert store.jobs_in_flight(NUMBER) == []
    store.replay(job.job_id, deadline=time.time() + 30)
    assert store.jobs_in_flight(NUMBER) == [job.job_id]
    assert store.dead_letter_ids() == []


def test_find_idempotent_names_the_job_and_fingerprint(store: JobStore, vault: Vault) -> None:
    """An organisation's idempotency key resolves to its job; other orgs see nothing."""
    job = build_job(vault)
    store.create(job, deadline=time.time() + 30, idempotency_key="k-1")
    assert store.find_idempotent(job.org_id, "k-1") == (job.job_id, job.request_fingerprint)
    assert store.find_idempotent("org_other", "k-1") is None
    assert store.find_idempotent(job.org_id, "k-2") is None


# --- claim, and the end that writes the record and releases the lock ----------------------


def same(loaded: Job | PhoneNumberRecord | None, expected: Job | PhoneNumberRecord) -> bool:
    """Equal as stored (a loaded datetime's tzinfo is pydantic's, not datetime's); records
    built apart differ only in their timestamps."""
    skip = {"created_at", "updated_at"} if isinstance(expected, PhoneNumberRecord) else set()
    return loaded is not None and (loaded.model_dump(mode="json", exclude=skip)
                                   == expected.model_dump(mode="json", exclude=skip))


def test_claim_takes_the_lock_and_reads_the_job_and_record(store: JobStore, vault: Vault) -> None:
    job = stored(store, vault)
    store.redis.set(store.keys.number(NUMBER), record_for(job).model_dump_json())

    claim = store.claim(job.job_id, TOKEN, 30)

    assert claim.status is ClaimStatus.CLAIMED
    assert same(claim.job(job.job_id), job)
    assert same(claim.number_record(), record_for(job))
    holder, remaining = store.number_lock_holder(NUMBER)
    assert holder == TOKEN and 29 < remaining <= 30


def test_claim_of_a_number_without_record(store: JobStore, vault: Vault) -> None:
    job = stored(store, vault)

    claim = store.claim(job.job_id, TOKEN, 30)

    assert claim.status is ClaimStatus.CLAIMED
    assert claim.number_record() is None


def test_claim_of_a_locked_number_names_the_holder(store: JobStore, vault: Vault) -> None:
    job = stored(store, vault)
    assert store.acquire_number_lock(NUMBER, "job_y:token", 20)

    claim = store.claim(job.job_id, TOKEN, 30)

    assert claim.status is ClaimStatus.LOCKED
    assert claim.holder == "job_y:token"
    assert 19 < claim.remaining <= 20
    assert store.number_lock_holder(NUMBER)[0] == "job_y:token"


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED])
def test_claim_of_a_finished_job_takes_no_lock(store: JobStore, vault: Vault,
                                               state: JobState) -> None:
    job = stored(store, vault)
    store.redis.set(store.keys.job(job.job_id), terminal(job, state).model_dump_json())

    claim = store.claim(job.job_id, TOKEN, 30)

    assert claim.status is ClaimStatus.FINISHED
    assert claim.job(job.job_id).state is state
    assert store.number_lock_holder(NUMBER) == (None, 0.0)


@pytest.mark.parametrize("raw", [b"{not json", b"[1,2]", b'{"number": 15551234567}'])
def test_claim_of_a_record_without_a_readable_number_takes_no_lock(
    store: JobStore, raw: bytes
) -> None:
    store.redis.set(store.keys.job("job_bad"), raw)

    claim = store.claim("job_bad", TOKEN, 30)

    assert (claim.status, claim.job_raw) == (ClaimStatus.UNPARSED, raw)
    assert not store.redis.keys(store.keys.number_lock("*"))


def test_claim_of_an_unknown_job(store: JobStore) -> None:
    assert store.claim("job_none", TOKEN, 30).status is ClaimStatus.MISSING
    assert not store.redis.keys(store.keys.number_lock("*"))


def test_finish_with_record_writes_both_and_releases_the_lock(
    store: JobStore, vault: Vault
) -> None:
    job = stored(store, vault)
    store.acquire_number_lock(NUMBER, TOKEN, 30)

    published, _ = store.finish(terminal(job), TOKEN, payload={}, dead_letter=False,
                                record=record_for(job), release=True)

    assert published
    assert same(store.get_number(NUMBER), record_for(job))
    assert list(store.numbers_of_org(ORG)) == [NUMBER]
    assert store.number_lock_holder(NUMBER) == (None, 0.0)
    assert same(store.get(job.job_id), terminal(job))


def test_finish_keeps_this_jobs_record_already_there(store: JobStore, vault: Vault) -> None:
    job = stored(store, vault)
    store.acquire_number_lock(NUMBER, TOKEN, 30)
    store.put_number(record_for(job, "pn_first"), TOKEN)

    published, _ = store.finish(terminal(job), TOKEN, payload={}, dead_letter=False,
                                record=record_for(job, "pn_second"))

    assert published
    assert same(store.get_number(NUMBER), record_for(job, "pn_first"))
    assert store.number_lock_holder(NUMBER)[0] == TOKEN  # release=False keeps the lock


def test_finish_with_another_jobs_record_writes_nothing(store: JobStore, vault: Vault) -> None:
    other = stored(store, vault)
    job = stored(store, vault)
    store.redis.set(store.keys.number(NUMBER), record_for(other).model_dump_json())
    store.acquire_number_lock(NUMBER, TOKEN, 30)

    with pytest.raises(NumberTaken) as taken:
        store.finish(terminal(job), TOKEN, payload={}, dead_letter=False,
                     record=record_for(job), release=True)

    assert same(taken.value.record, record_for(other))
    assert same(store.get(job.job_id), job)
    assert store.redis.xlen(RESULTS_STREAM) == 0
    assert store.number_lock_holder(NUMBER)[0] == TOKEN


def test_finish_already_published_still_releases(store: JobStore, vault: Vault) -> None:
    job = stored(store, vault)
    store.acquire_number_lock(NUMBER, TOKEN, 30)
    store.finish(terminal(job), TOKEN, payload={}, dead_letter=False)

    published, _ = store.finish(terminal(job), TOKEN, payload={}, dead_letter=False,
                                release=True)

    assert not published
    assert store.number_lock_holder(NUMBER) == (None, 0.0)


def test_create_pushes_the_message_with_the_job_only_when_it_creates(
    store: JobStore, vault: Vault
) -> None:
    first = build_job(vault, idempotency_key="signup-7")
    repeat = build_job(vault, idempotency_key="signup-7")
    message = QueuedMessage("trunkline.provision", '{"m": 1}')

    assert store.create(first, deadline=5.0, idempotency_key="signup-7",
                        message=message) == (first.job_id, True)
    assert store.create(repeat, deadline=5.0, idempotency_key="signup-7",
                        message=QueuedMessage("trunkline.provision", '{"m": 2}'))[1] is False

    assert store.redis.lrange("trunkline.provision", 0, -1) == [b'{"m": 1}']
    assert store.redis.zscore(store.keys.active, first.job_id) == 5.0


def test_refused_create_pushes_no_message(store: JobStore, vault: Vault) -> None:
    job = stored(store, vault)

    with pytest.raises(redis.exceptions.ResponseError, match="job id already exists"):
        store.create(job, deadline=5.0, message=QueuedMessage("q", "m"))

    assert store.redis.exists("q") == 0


def test_replay_pushes_its_message_with_the_new_run(store: JobStore, vault: Vault) -> None:
    job = stored(store, vault)
    store.redis.set(store.keys.job(job.job_id), terminal(job, JobState.FAILED).model_dump_json())

    fresh = store.replay(job.job_id, deadline=9.0, message=QueuedMessage("q", "m"))

    assert fresh.state is JobState.QUEUED
    assert store.redis.lrange("q", 0, -1) == [b"m"]


def test_claim_moves_the_sweep_deadline_to_the_lease_end(store: JobStore, vault: Vault) -> None:
    """A run that dies right after its claim, before any write, is due when its lease ends
    (not at the producer's deadline, which can be a visibility timeout away)."""
    job = stored(store, vault)  # created with a deadline 30 s away
    store.redis.zadd(store.keys.active, {job.job_id: 10_000.0})

    store.claim(job.job_id, TOKEN, 12, deadline=1_234.5)

    assert store.redis.zscore(store.keys.active, job.job_id) == 1_234.5


def test_claim_of_a_locked_or_finished_job_keeps_its_deadline(
    store: JobStore, vault: Vault
) -> None:
    locked, finished = stored(store, vault), stored(store, vault, number="+15557654321")
    store.redis.set(store.keys.job(finished.job_id),
                    terminal(finished).model_dump_json())
    store.redis.zadd(store.keys.active, {locked.job_id: 10_000.0})
    assert store.acquire_number_lock(NUMBER, "job_y:token", 20)

    store.claim(locked.job_id, TOKEN, 12, deadline=1_234.5)
    store.claim(finished.job_id, TOKEN, 12, deadline=1_234.5)

    assert store.redis.zscore(store.keys.active, locked.job_id) == 10_000.0
    assert store.redis.zscore(store.keys.active, finished.job_id) != 1_234.5
