"""Unit tests for worker.retention on fakeredis (its Lua scripts run through lupa).

"Old" is made by running retention with a clock in the future, so nothing waits.
"""

from __future__ import annotations

import time
from typing import Any, cast

import fakeredis
import pytest
from prometheus_client import REGISTRY

from tests.worker.fake_livekit import build_job, settings
from tests.worker.test_store import store, vault
from worker.app import create_app
from worker.config import ConfigError, Settings
from worker.records import Job, JobState, PhoneNumberRecord
from worker.retention import (
    DAY,
    Retention,
    RetentionPolicy,
    apply_and_observe,
)
from worker.store import JobStore
from worker.tasks import RETENTION_TASK
from worker.vault import Vault

# The store tests' fixtures (fakeredis store, vault), re-exported so that pytest finds them.
__all__ = ["store", "vault"]

POLICY = RetentionPolicy(jobs_seconds=30 * DAY, dead_letters_seconds=90 * DAY,
                         results_seconds=7 * DAY)


def later(days: float) -> Any:
    """A clock that many days from now."""
    return lambda: time.time() + days * DAY


def finished(store: JobStore, vault: Vault, *, state: JobState = JobState.SUCCEEDED,
             dead_letter: bool = False, number: str = "+15551234567",
             idempotency_key: str | None = None) -> Job:
    """A job stored, claimed and finished the way the worker does it (lock released)."""
    job = build_job(vault, number=number, idempotency_key=idempotency_key)
    store.create(job, deadline=time.time() + 30, idempotency_key=idempotency_key)
    token = f"{job.job_id}:t"
    assert store.acquire_number_lock(job.number, token, 30)
    done = job.model_copy(update={"state": state, "dead_lettered": dead_letter})
    record = _record(done) if state is JobState.SUCCEEDED else None
    store.finish(done, token, payload={}, dead_letter=dead_letter, record=record, release=True)
    return done


def _record(job: Job) -> PhoneNumberRecord:
    request = job.create_request
    return PhoneNumberRecord(
        phone_number_id="pn_" + job.job_id[-8:], org_id=job.org_id, number=job.number,
        name=request.name, job_id=job.job_id, inbound_trunk_id="ST_in",
        outbound_trunk_id="ST_out", dispatch_rule_id="SDR_rule",
        outbound_pstn=request.outbound_pstn, transport=request.transport,
        auth_user_name=request.auth_user_name,
        auth_password_ciphertext=request.auth_password_ciphertext,
        room_prefix=request.room_prefix)


def keys_of(store: JobStore, job: Job) -> dict[str, bool]:
    """Which of the keys and index entries hanging off a job still exist."""
    r, k = store.redis, store.keys
    return {
        "record": bool(r.exists(k.job(job.job_id))),
        "published": bool(r.exists(k.published(job.job_id, job.run))),
        "org_index": r.zscore(k.jobs_by_org(job.org_id), job.job_id) is not None,
        "terminal_index": r.zscore(k.terminal, job.job_id) is not None,
        "dead_letter": r.zscore(k.dead_letters, job.job_id) is not None,
    }


def test_finish_indexes_the_job_by_when_it_finished(store: JobStore, vault: Vault) -> None:
    """The finish script writes the terminal index in the same step, scored by the end."""
    before = time.time()
    job = finished(store, vault)
    score = store.redis.zscore(store.keys.terminal, job.job_id)
    assert score is not None and before <= score <= time.time()


def test_idempotency_keys_live_as_long_as_the_store_says(vault: Vault) -> None:
    """The create script takes the TTL from the store (TRUNKLINE_IDEMPOTENCY_TTL_SECONDS)."""
    client = fakeredis.FakeRedis()
    store = JobStore(client, idempotency_ttl=120)
    job = build_job(vault, idempotency_key="k-1")
    store.create(job, deadline=time.time() + 30, idempotency_key="k-1")
    assert 0 < int(client.ttl(store.keys.idempotency(job.org_id, "k-1"))) <= 120


def test_an_old_finished_job_goes_with_what_hangs_off_it(store: JobStore, vault: Vault) -> None:
    """Record, published marker, org index and terminal index entries go; the number stays."""
    old = finished(store, vault)
    report = Retention(store, POLICY, clock=later(31)).apply()
    assert report.deleted["jobs"] == 1 and report.complete
    assert keys_of(store, old) == dict.fromkeys(keys_of(store, old), False)
    number = store.get_number(old.number)
    assert number is not None and number.job_id == old.job_id


def test_a_recent_or_active_job_stays(store: JobStore, vault: Vault) -> None:
    """Only jobs finished before the cutoff go; a queued job is never looked at."""
    recent = finished(store, vault)
    queued = build_job(vault, number="+15551234568")
    store.create(queued, deadline=time.time() + 30)
    report = Retention(store, POLICY, clock=later(29)).apply()
    assert report.deleted["jobs"] == 0
    assert keys_of(store, recent)["record"] and store.get(queued.job_id) is not None
    # Past the cutoff the finished one goes and the queued one still stays.
    Retention(store, POLICY, clock=later(31)).apply()
    assert store.get(recent.job_id) is None and store.get(queued.job_id) is not None


def test_a_dead_lettered_job_stays_until_its_dead_letter_expires(
        store: JobStore, vault: Vault) -> None:
    """Past the job retention it is kept (and looked at again later); past the dead-letter
    retention the letter and its record go together."""
    dead = finished(store, vault, state=JobState.FAILED, dead_letter=True)
    at_31 = Retention(store, POLICY, clock=later(31)).apply()
    assert at_31.deleted["jobs"] == 0 and at_31.kept_dead_lettered == 1
    assert keys_of(store, dead)["record"] and keys_of(store, dead)["dead_letter"]
    # Re-scored to the run's time: not examined again by the next run.
    assert Retention(store, POLICY, clock=later(31)).apply().kept_dead_lettered == 0
    at_91 = Retention(store, POLICY, clock=later(91)).apply()
    assert at_91.deleted["dead_letters"] == 1
    assert keys_of(store, dead) == dict.fromkeys(keys_of(store, dead), False)


def test_a_purged_dead_letter_leaves_its_job_to_the_job_retention(
        store: JobStore, vault: Vault) -> None:
    """`dlq purge` keeps the record; once off the list it ages out as any finished job."""
    dead = finished(store, vault, state=JobState.FAILED, dead_letter=True)
    Retention(store, POLICY, clock=later(31)).apply()  # kept, re-scored to day 31
    store.redis.zrem(store.keys.dead_letters, dead.job_id)
    assert Retention(store, POLICY, clock=later(60)).apply().deleted["jobs"] == 0
    assert Retention(store, POLICY, clock=later(62)).apply().deleted["jobs"] == 1
    assert store.get(dead.job_id) is None


def test_a_replayed_job_is_never_deleted(store: JobStore, vault: Vault) -> None:
    """A dead letter replayed after the batch was chosen: the script sees it queued (its
    terminal-index entry is stale) and leaves the record."""
    dead = finished(store, vault, state=JobState.FAILED, dead_letter=True)
    store.replay(dead.job_id, deadline=time.time() + 30)
    report = Retention(store, POLICY, clock=later(200)).apply()
    assert (report.deleted["jobs"], report.deleted["dead_letters"]) == (0, 0)
    assert report.skipped == 1
    replayed = store.get(dead.job_id)
    assert replayed is not None and replayed.state is JobState.QUEUED and replayed.run == 2
    assert store.redis.zscore(store.keys.terminal, dead.job_id) is None


def test_a_stale_dead_letter_of_a_running_job_goes_and_the_job_stays(
        store: JobStore, vault: Vault) -> None:
    """A dead letter whose job runs again (an entry written back by hand, say): the entry
    goes, the record stays."""
    dead = finished(store, vault, state=JobState.FAILED, dead_letter=True)
    store.replay(dead.job_id, deadline=time.time() + 30)
    store.redis.zadd(store.keys.dead_letters, {dead.job_id: time.time()})
    report = Retention(store, POLICY, clock=later(91)).apply()
    assert report.deleted["dead_letters"] == 0 and report.skipped >= 1
    assert store.get(dead.job_id) is not None
    assert store.redis.zscore(store.keys.dead_letters, dead.job_id) is None


def test_a_quarantined_job_goes_with_its_dead_letter(store: JobStore) -> None:
    """An unreadable record: its dead letter, record, reason, marker and org entry go."""
    job_id = "job_unreadable"
    store.redis.set(store.keys.job(job_id), b'{"org_id": "org_x", "number": "+15551230000", ')
    store.redis.zadd(store.keys.jobs_by_org("org_x"), {job_id: 1.0})
    assert store.quarantine(job_id, "corrupt")
    report = Retention(store, POLICY, clock=later(91)).apply()
    assert report.deleted["dead_letters"] == 1
    r, k = store.redis, store.keys
    assert not r.exists(k.job(job_id)) and not r.exists(k.published(job_id, 0))
    assert r.hget(k.unreadable, job_id) is None and r.zcard(k.jobs_by_org("org_x")) == 0
    assert r.zcard(k.dead_letters) == 0


def test_dry_run_counts_without_deleting(store: JobStore, vault: Vault) -> None:
    """A dry run pages through everything due (beyond one batch) and writes nothing."""
    jobs = [finished(store, vault, number=f"+1555123{i:04d}") for i in range(7)]
    finished(store, vault, state=JobState.FAILED, dead_letter=True, number="+15559990000")
    retention = Retention(store, POLICY, batch=3, clock=later(31))
    dry = retention.apply(dry_run=True)
    assert dry.deleted["jobs"] == 7 and dry.kept_dead_lettered == 1
    assert all(store.get(j.job_id) is not None for j in jobs)
    real = retention.apply()
    assert real.deleted["jobs"] == 7 and real.kept_dead_lettered == 1


def test_batches_report_progress_and_a_spent_budget_resumes(
        store: JobStore, vault: Vault) -> None:
    """Work runs in batches; a run whose budget is spent stops and the next one goes on."""
    for i in range(25):
        finished(store, vault, number=f"+1555124{i:04d}")
    retention = Retention(store, POLICY, batch=10, clock=later(31))
    stopped = retention.apply(budget_seconds=0)
    assert not stopped.complete and stopped.deleted["jobs"] == 0
    seen: list[tuple[str, int]] = []
    rest = retention.apply(progress=lambda kind, n: seen.append((kind, n)))
    assert rest.complete and rest.deleted["jobs"] == 25
    assert [n for kind, n in seen if kind == "jobs"] == [10, 10, 5]
    assert store.redis.zcard(store.keys.terminal) == 0


def test_jobs_finished_before_the_index_existed_are_backfilled_once(
        store: JobStore, vault: Vault) -> None:
    """A terminal record without a terminal-index entry is indexed by its finished_at."""
    old = finished(store, vault)
    store.redis.zrem(store.keys.terminal, old.job_id)
    retention = Retention(store, POLICY, clock=later(31))
    seen: list[str] = []
    report = retention.apply(progress=lambda kind, _: seen.append(kind))
    assert report.backfilled == 1 and report.deleted["jobs"] == 1
    assert seen[0] == "backfill"
    assert retention.backfill_done() and store.get(old.job_id) is None
    again = finished(store, vault, number="+15551230002")
    store.redis.zrem(store.keys.terminal, again.job_id)
    # Done once: the SCAN does not run again, so this record is not found.
    assert retention.apply().backfilled == 0 and store.get(again.job_id) is not None


def test_results_older_than_the_age_bound_are_trimmed(store: JobStore) -> None:
    """XTRIM MINID on top of MAXLEN: entries older than the retention go, newer stay."""
    old_ms = int((time.time() - 8 * DAY) * 1000)
    for i in range(150):
        store.redis.xadd(store.keys.results, {"job_id": f"old{i}"}, id=f"{old_ms + i}-0")
    for i in range(5):
        store.redis.xadd(store.keys.results, {"job_id": f"new{i}"})
    retention = Retention(store, POLICY)
    assert retention.apply(dry_run=True).deleted["results"] == 150
    report = retention.apply()
    assert report.deleted["results"] >= 100  # whole nodes, as MAXLEN ~ trims
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], store.redis.xrange(store.keys.results))
    left = [fields[b"job_id"] for _, fields in entries]
    assert left[-5:] == [b"new0", b"new1", b"new2", b"new3", b"new4"]
    assert len(left) <= 5 + 100


def test_zero_keeps_forever(store: JobStore, vault: Vault) -> None:
    """A retention of 0 deletes nothing of that kind."""
    finished(store, vault)
    finished(store, vault, state=JobState.FAILED, dead_letter=True, number="+15559990000")
    never = RetentionPolicy(jobs_seconds=0, dead_letters_seconds=0, results_seconds=0)
    report = Retention(store, never, clock=later(10_000)).apply()
    assert report.deleted == {"jobs": 0, "dead_letters": 0, "results": 0}
    assert store.redis.zcard(store.keys.terminal) == 2


def test_status_counts_what_is_kept_and_due(store: JobStore, vault: Vault) -> None:
    """show: finished jobs, dead letters, results, each kept and due, and active jobs."""
    finished(store, vault)
    finished(store, vault, state=JobState.FAILED, dead_letter=True, number="+15559990000")
    store.create(build_job(vault, number="+15551230001"), deadline=time.time() + 30)
    status = Retention(store, POLICY, clock=later(31)).status()
    assert (status.finished_jobs.kept, status.finished_jobs.due) == (2, 2)
    assert (status.dead_letters.kept, status.dead_letters.due) == (1, 0)
    assert (status.results.kept, status.results.due) == (2, 2)
    assert status.active_jobs == 1 and status.idempotency_ttl_seconds == store.idempotency_ttl
    assert status.as_json()["policy"]["jobs_seconds"] == 30 * DAY


def test_apply_and_observe_updates_the_metrics(store: JobStore, vault: Vault) -> None:
    """Deleted records count by kind; kept counts and the last run time are set."""
    def deleted_jobs() -> float:
        return REGISTRY.get_sample_value("trunkline_retention_deleted_total",
                                         {"kind": "jobs"}) or 0.0

    finished(store, vault)
    before = deleted_jobs()
    # A retention of 0 days is "forever", so age the job instead of shortening the retention.
    indexed = cast(list[bytes], store.redis.zrange(store.keys.terminal, 0, -1))
    store.redis.zadd(store.keys.terminal, dict.fromkeys(indexed, 0.0))
    report = apply_and_observe(store, settings(retain_jobs_days=1))
    assert report.deleted["jobs"] == 1 and deleted_jobs() == before + 1
    assert REGISTRY.get_sample_value("trunkline_retention_kept", {"kind": "jobs"}) == 0
    last = REGISTRY.get_sample_value("trunkline_retention_last_run_timestamp_seconds")
    assert last is not None and last >= time.time() - 60


def test_settings_defaults_and_errors_name_the_variable() -> None:
    defaults = Settings.from_env({})
    assert (defaults.retain_jobs_days, defaults.retain_dead_letters_days,
            defaults.retain_results_days, defaults.idempotency_ttl_seconds,
            defaults.retention_interval) == (30, 90, 7, 86_400, 3600)
    for name, value in (("TRUNKLINE_RETAIN_JOBS_DAYS", "-1"),
                        ("TRUNKLINE_RETAIN_DEAD_LETTERS_DAYS", "x"),
                        ("TRUNKLINE_RETAIN_RESULTS_DAYS", "99999"),
                        ("TRUNKLINE_IDEMPOTENCY_TTL_SECONDS", "5"),
                        ("TRUNKLINE_RETENTION_INTERVAL", "-5")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


def test_an_idempotency_key_may_not_outlive_its_job() -> None:
    """A TTL longer than a retention is refused, naming both variables; 0 (forever) is fine."""
    with pytest.raises(ConfigError, match=r"TRUNKLINE_IDEMPOTENCY_TTL_SECONDS.*"
                                          r"TRUNKLINE_RETAIN_JOBS_DAYS"):
        Settings.from_env({"TRUNKLINE_RETAIN_JOBS_DAYS": "1",
                           "TRUNKLINE_IDEMPOTENCY_TTL_SECONDS": "90000"})
    with pytest.raises(ConfigError, match="TRUNKLINE_RETAIN_DEAD_LETTERS_DAYS"):
        Settings.from_env({"TRUNKLINE_RETAIN_DEAD_LETTERS_DAYS": "1",
                           "TRUNKLINE_IDEMPOTENCY_TTL_SECONDS": "90000"})
    kept = Settings.from_env({"TRUNKLINE_RETAIN_JOBS_DAYS": "0",
                              "TRUNKLINE_IDEMPOTENCY_TTL_SECONDS": "900000"})
    assert kept.idempotency_ttl_seconds == 900_000
    assert JobStore.for_settings(fakeredis.FakeRedis(), kept).idempotency_ttl == 900_000


def test_the_beat_schedule_has_retention_unless_its_interval_is_zero() -> None:
    """Scheduled from the app factory, like reconcile (the task itself runs on a real worker
    in tests/integration/test_retention.py; reading app.tasks here would finalize the app and
    pull in every other test's apps' shared tasks)."""
    app = create_app(settings(retention_interval=600))
    assert app.conf.beat_schedule["retention"]["task"] == RETENTION_TASK
    assert app.conf.beat_schedule["retention"]["schedule"] == 600.0
    assert "retention" not in create_app(settings(retention_interval=0)).conf.beat_schedule
