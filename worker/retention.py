"""Retention: what keeps Redis from growing without bound.

Kept for a while, then deleted, each with its own setting (0 keeps forever):

- a finished job (succeeded, failed) for TRUNKLINE_RETAIN_JOBS_DAYS after it finished, with
  what hangs off it: its published markers, its entries in the organisation's job index, the
  number's in-flight set and the unreadable hash. The phone-number record stays (it is the
  number's live state and keeps its job id); so do the results-stream entries, which age out
  on their own bound. A dead-lettered job stays while its dead letter does.
- a dead letter for TRUNKLINE_RETAIN_DEAD_LETTERS_DAYS after the job was dead-lettered; its job
  record goes with it.
- the results stream: MAXLEN ~ TRUNKLINE_RESULTS_MAXLEN on every XADD, and here an age bound
  (XTRIM MINID ~, TRUNKLINE_RETAIN_RESULTS_DAYS), so whichever keeps less wins.
- idempotency keys expire on their own (TTL TRUNKLINE_IDEMPOTENCY_TTL_SECONDS, which the
  settings keep at or below the job retention, so no key outlives the job it names).

Work is done in bounded batches on indexes ordered by time: `jobs:terminal` (written by the
finish script) and the dead-letter set; never KEYS, and a SCAN only once, to index jobs that
finished before `jobs:terminal` existed (the backfill, resumable, remembered in Redis). Each
batch is one Lua script that checks every job's state, score and indexes before deleting, so a
job replayed meanwhile (a dead letter turned active again) is never touched. A script reads
keys it derives from the prefix, so this suits one Redis (or a Sentinel-managed primary), not
Redis Cluster, as the claim script does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, cast

from redis.commands.core import Script
from redis.exceptions import ResponseError

from worker.config import Settings
from worker.observability import (
    REDIS_USED_MEMORY,
    RETENTION_DELETED,
    RETENTION_KEPT,
    RETENTION_LAST_RUN,
)
from worker.store import JobStore

DAY = 86_400.0
DEFAULT_BATCH = 100
# `show` counts due results entries with XRANGE; past this many it says "at least".
RESULTS_COUNT_CAP = 10_000
BACKFILL_SCAN_COUNT = 1_000

# Deletes one finished job and what hangs off it. `job` is the decoded record, or a table with
# only what could be read from an unreadable one.
_FORGET = """
local function forget(prefix, id, job)
  redis.call('DEL', prefix .. ':job:' .. id)
  local runs = math.min(tonumber(job['run']) or 1, 1000)
  for run = 0, runs do redis.call('DEL', prefix .. ':published:' .. id .. ':' .. run) end
  if type(job['org_id']) == 'string' then
    redis.call('ZREM', prefix .. ':jobs:org:' .. job['org_id'], id)
  end
  if type(job['number']) == 'string' then
    redis.call('ZREM', prefix .. ':inflight:' .. job['number'], id)
  end
  redis.call('HDEL', prefix .. ':unreadable', id)
  redis.call('ZREM', prefix .. ':jobs:terminal', id)
end
local function finished(job)
  return type(job) == 'table' and (job['state'] == 'succeeded' or job['state'] == 'failed')
end
"""

# Finished jobs due by the terminal index. Every job examined leaves the due range (deleted,
# unindexed, or re-scored to now), so a real run always reads from offset 0; a dry run pages.
_EXPIRE_JOBS = _FORGET + """
-- KEYS: terminal index, dead letters, active index
-- ARGV: cutoff, limit, offset, now, dry run ('1'), key prefix
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', ARGV[3], ARGV[2])
local dry = ARGV[5] == '1'
local deleted, dead_lettered, skipped = 0, 0, 0
for _, id in ipairs(ids) do
  local raw = redis.call('GET', ARGV[6] .. ':job:' .. id)
  local ok, job = false, nil
  if raw then ok, job = pcall(cjson.decode, raw) end
  if redis.call('ZSCORE', KEYS[2], id) then
    -- Kept while its dead letter is; looked at again one retention period from now.
    dead_lettered = dead_lettered + 1
    if not dry then redis.call('ZADD', KEYS[1], ARGV[4], id) end
  elseif not ok or not finished(job) or redis.call('ZSCORE', KEYS[3], id) then
    -- Gone, unreadable, or replayed and running again: not ours to delete. Its next finish
    -- indexes it again.
    skipped = skipped + 1
    if not dry then redis.call('ZREM', KEYS[1], id) end
  else
    deleted = deleted + 1
    if not dry then forget(ARGV[6], id, job) end
  end
end
return {#ids, deleted, dead_lettered, skipped}
"""

# Dead letters due by the dead-letter set; the job record goes with its dead letter.
_EXPIRE_DEAD_LETTERS = _FORGET + """
-- KEYS: dead letters, active index
-- ARGV: cutoff, limit, offset, now (unused), dry run ('1'), key prefix
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', ARGV[3], ARGV[2])
local dry = ARGV[5] == '1'
local deleted, skipped = 0, 0
for _, id in ipairs(ids) do
  local raw = redis.call('GET', ARGV[6] .. ':job:' .. id)
  local ok, job = false, nil
  if raw then ok, job = pcall(cjson.decode, raw) end
  if redis.call('ZSCORE', KEYS[2], id) or (ok and type(job) == 'table' and not finished(job)) then
    -- Running again (a replay leaves this set in the same step; this is a stale entry): the
    -- entry goes, the job stays.
    skipped = skipped + 1
  else
    deleted = deleted + 1
    if not dry and raw then
      if not (ok and type(job) == 'table') then
        -- An unreadable (quarantined) record: its organisation as far as it can be read.
        job = {org_id = string.match(raw, '"org_id"%s*:%s*"([^"]*)"'),
               number = string.match(raw, '"number"%s*:%s*"([^"]*)"')}
      end
      forget(ARGV[6], id, job)
    elseif not dry then
      redis.call('HDEL', ARGV[6] .. ':unreadable', id)
    end
  end
  if not dry then redis.call('ZREM', KEYS[1], id) end
end
return {#ids, deleted, 0, skipped}
"""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind is kept, in seconds (0: forever)."""

    jobs_seconds: float = 30 * DAY
    dead_letters_seconds: float = 90 * DAY
    results_seconds: float = 7 * DAY

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(jobs_seconds=settings.retain_jobs_days * DAY,
                   dead_letters_seconds=settings.retain_dead_letters_days * DAY,
                   results_seconds=settings.retain_results_days * DAY)

    @staticmethod
    def cutoff(now: float, seconds: float) -> float | None:
        return now - seconds if seconds > 0 else None


@dataclass
class RetentionReport:
    """What one run deleted (or, dry, would delete), by kind."""

    dry_run: bool
    deleted: dict[str, int] = field(
        default_factory=lambda: {"jobs": 0, "dead_letters": 0, "results": 0})
    # Finished jobs past their time but kept, because they are dead-lettered.
    kept_dead_lettered: int = 0
    # Indexed as finished but running again (replayed), gone, or unreadable: left alone.
    skipped: int = 0
    backfilled: int = 0
    # False when the run stopped at its time budget; the next run goes on.
    complete: bool = True
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KindStatus:
    kept: int
    due: int
    due_is_lower_bound: bool = False
    oldest_at: float | None = None


@dataclass(frozen=True)
class RetentionStatus:
    policy: RetentionPolicy
    idempotency_ttl_seconds: int
    finished_jobs: KindStatus
    dead_letters: KindStatus
    results: KindStatus
    active_jobs: int
    backfill_done: bool
    used_memory_bytes: int | None
    # MEMORY USAGE of a sample of finished job records, their mean; None when not available.
    job_record_bytes: float | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[str, int], None]


@dataclass
class _Run:
    """One apply(): its clock reading, report, start, time budget and progress callback."""

    now: float
    report: RetentionReport
    started: float
    budget_seconds: float | None
    progress: Progress | None

    def spent(self) -> bool:
        return (self.budget_seconds is not None
                and time.monotonic() - self.started >= self.budget_seconds)

    def advance(self, kind: str, count: int) -> None:
        if self.progress is not None and count:
            self.progress(kind, count)


class Retention:
    """Applies a RetentionPolicy to one store, in batches of at most `batch` records."""

    def __init__(self, store: JobStore, policy: RetentionPolicy, *,
                 batch: int = DEFAULT_BATCH, clock: Callable[[], float] = time.time) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.store = store
        self.redis = store.redis
        self.keys = store.keys
        self.policy = policy
        self.batch = batch
        self.clock = clock
        self._expire_jobs = self.redis.register_script(_EXPIRE_JOBS)
        self._expire_dead_letters = self.redis.register_script(_EXPIRE_DEAD_LETTERS)

    @property
    def backfill_key(self) -> str:
        return f"{self.keys.prefix}:retention:backfill"

    # --- applying -----------------------------------------------------------------------

    def apply(self, *, dry_run: bool = False, budget_seconds: float | None = None,
              progress: Progress | None = None) -> RetentionReport:
        """Delete what is due (dry_run: count it). With a budget, stop between batches once
        it is spent (`complete` False); the next run continues where this one stopped."""
        run = _Run(self.clock(), RetentionReport(dry_run=dry_run), time.monotonic(),
                   budget_seconds, progress)
        if not dry_run:
            run.report.backfilled = self._backfill(run)
        for phase in (self._dead_letters, self._jobs, self._results):
            if run.spent() or not phase(run):
                run.report.complete = False
                break
        if not dry_run and not self.backfill_done():
            run.report.complete = False
        run.report.seconds = round(time.monotonic() - run.started, 3)
        return run.report

    def _dead_letters(self, run: _Run) -> bool:
        return self._expire(run, "dead_letters", self._expire_dead_letters,
                            [self.keys.dead_letters, self.keys.active],
                            self.policy.dead_letters_seconds)

    def _jobs(self, run: _Run) -> bool:
        return self._expire(run, "jobs", self._expire_jobs,
                            [self.keys.terminal, self.keys.dead_letters, self.keys.active],
                            self.policy.jobs_seconds)

    def _expire(self, run: _Run, kind: str, script: Script, keys: list[str],
                seconds: float) -> bool:
        """Run one of the expiry scripts batch after batch; False if the budget ran out."""
        cutoff = RetentionPolicy.cutoff(run.now, seconds)
        if cutoff is None:
            return True
        report, offset = run.report, 0
        while True:
            seen, deleted, dead_lettered, skipped = (int(v) for v in cast(list[Any], script(
                keys=keys, args=[cutoff, self.batch, offset, run.now,
                                 "1" if report.dry_run else "0", self.keys.prefix])))
            report.deleted[kind] += deleted
            report.kept_dead_lettered += dead_lettered
            report.skipped += skipped
            run.advance(kind, seen)
            if report.dry_run:
                offset += seen
            if seen < self.batch:
                return True
            if run.spent():
                return False

    def _results(self, run: _Run) -> bool:
        cutoff = RetentionPolicy.cutoff(run.now, self.policy.results_seconds)
        if cutoff is None:
            return True
        min_id = f"{int(cutoff * 1000)}-0"
        if run.report.dry_run:
            due, _ = self._count_results_before(min_id, cap=None)
            run.report.deleted["results"] += due
            return True
        # Approximate trimming removes whole stream nodes only (up to 100 entries each, like
        # the XADD's MAXLEN ~); LIMIT keeps each call short.
        while True:
            trimmed = int(self.redis.xtrim(self.keys.results, minid=min_id, approximate=True,
                                           limit=self.batch * 10))
            run.report.deleted["results"] += trimmed
            run.advance("results", trimmed)
            if trimmed == 0:
                return True
            if run.spent():
                return False

    def _count_results_before(self, min_id: str, cap: int | None) -> tuple[int, bool]:
        """Entries older than min_id (exclusive), counted a page at a time; (count, capped)."""
        count, start = 0, "-"
        while cap is None or count < cap:
            page = cast(list[tuple[bytes, Any]], self.redis.xrange(
                self.keys.results, min=start, max=f"({min_id}", count=1000))
            count += len(page)
            if len(page) < 1000:
                return count, False
            start = f"({page[-1][0].decode()}"
        return count, True

    # --- the one-off backfill ---------------------------------------------------------

    def backfill_done(self) -> bool:
        return self.redis.hget(self.backfill_key, "done") is not None

    def _backfill(self, run: _Run) -> int:
        """Index jobs that finished before the finish script wrote `jobs:terminal`.

        A resumable SCAN of the job keys, once per deployment: its cursor is kept in Redis
        after each step, and `done` is set when the SCAN comes back to 0. A job replayed
        between the read and the ZADD is indexed anyway; the delete script checks its state.
        """
        if self.backfill_done():
            return 0
        cursor = int(self.redis.hget(self.backfill_key, "cursor") or 0)
        indexed = 0
        pattern = self.keys.job("*")
        prefix_length = len(self.keys.job(""))
        while True:
            cursor, names = cast(tuple[int, list[bytes]], self.redis.scan(
                cursor=cursor, match=pattern, count=BACKFILL_SCAN_COUNT))
            finished: dict[str, float] = {}
            raws = cast(list[bytes | None], self.redis.mget(names)) if names else []
            for name, raw in zip(names, raws, strict=True):
                at = _finished_at(raw)
                if at is not None:
                    finished[name.decode()[prefix_length:]] = at
            if finished:
                indexed += int(cast(int, self.redis.zadd(self.keys.terminal, finished, nx=True)))
            run.advance("backfill", len(names))
            if cursor == 0:
                self.redis.hset(self.backfill_key, mapping={"cursor": 0, "done": self.clock()})
                return indexed
            self.redis.hset(self.backfill_key, "cursor", cursor)
            if run.spent():
                return indexed

    # --- what is kept -------------------------------------------------------------------

    def status(self) -> RetentionStatus:
        now = self.clock()
        jobs_cutoff = RetentionPolicy.cutoff(now, self.policy.jobs_seconds)
        letters_cutoff = RetentionPolicy.cutoff(now, self.policy.dead_letters_seconds)
        results_cutoff = RetentionPolicy.cutoff(now, self.policy.results_seconds)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.terminal)
        pipe.zcount(self.keys.terminal, "-inf", jobs_cutoff if jobs_cutoff is not None else -1)
        pipe.zrange(self.keys.terminal, 0, 0, withscores=True)
        pipe.zcard(self.keys.dead_letters)
        pipe.zcount(self.keys.dead_letters, "-inf",
                    letters_cutoff if letters_cutoff is not None else -1)
        pipe.zrange(self.keys.dead_letters, 0, 0, withscores=True)
        pipe.xlen(self.keys.results)
        pipe.xrange(self.keys.results, count=1)
        pipe.zcard(self.keys.active)
        (jobs, jobs_due, jobs_first, letters, letters_due, letters_first, results,
         results_first, active) = pipe.execute()
        if results_cutoff is not None:
            results_due, capped = self._count_results_before(
                f"{int(results_cutoff * 1000)}-0", cap=RESULTS_COUNT_CAP)
        else:
            results_due, capped = 0, False
        return RetentionStatus(
            policy=self.policy,
            idempotency_ttl_seconds=self.store.idempotency_ttl,
            finished_jobs=KindStatus(int(jobs), int(jobs_due), oldest_at=_first_score(jobs_first)),
            dead_letters=KindStatus(int(letters), int(letters_due),
                                    oldest_at=_first_score(letters_first)),
            results=KindStatus(int(results), results_due, capped,
                               oldest_at=_stream_time(results_first)),
            active_jobs=int(active),
            backfill_done=self.backfill_done(),
            used_memory_bytes=self.used_memory(),
            job_record_bytes=self._job_record_bytes(),
        )

    def used_memory(self) -> int | None:
        try:
            info = self.redis.info("memory")
        except ResponseError:
            return None
        value = info.get("used_memory")
        return int(value) if value is not None else None

    def _job_record_bytes(self, sample: int = 20) -> float | None:
        try:
            ids = cast(list[bytes], self.redis.zrandmember(self.keys.terminal, sample)) or []
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.memory_usage(self.keys.job(job_id.decode()))
            sizes = pipe.execute()
        except ResponseError:  # MEMORY USAGE is missing on some Redis-compatible servers
            return None
        known = [int(s) for s in sizes if s is not None]
        return round(sum(known) / len(known), 1) if known else None


def apply_and_observe(store: JobStore, settings: Settings, *,
                      budget_seconds: float | None = None) -> RetentionReport:
    """The beat task's work: apply the settings' retention, then update the metrics."""
    retention = Retention(store, RetentionPolicy.from_settings(settings))
    report = retention.apply(budget_seconds=budget_seconds)
    observe(retention, report)
    return report


def observe(retention: Retention, report: RetentionReport) -> None:
    if report.dry_run:
        return
    for kind, count in report.deleted.items():
        RETENTION_DELETED.labels(kind).inc(count)
    RETENTION_LAST_RUN.set(retention.clock())
    pipe = retention.redis.pipeline(transaction=False)
    pipe.zcard(retention.keys.terminal)
    pipe.zcard(retention.keys.dead_letters)
    pipe.xlen(retention.keys.results)
    jobs, letters, results = pipe.execute()
    for kind, value in (("jobs", jobs), ("dead_letters", letters), ("results", results)):
        RETENTION_KEPT.labels(kind).set(int(value))
    used = retention.used_memory()
    if used is not None:
        REDIS_USED_MEMORY.set(used)


def _finished_at(raw: bytes | None) -> float | None:
    """When a stored job finished, if it did (its finished_at, else its last update)."""
    if raw is None:
        return None
    try:
        job = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(job, dict) or job.get("state") not in ("succeeded", "failed"):
        return None
    for name in ("finished_at", "updated_at", "created_at"):
        text = job.get(name)
        if isinstance(text, str):
            try:
                return datetime.fromisoformat(text).timestamp()
            except ValueError:
                continue
    return None


def _first_score(rows: list[tuple[bytes, float]]) -> float | None:
    return float(rows[0][1]) if rows else None


def _stream_time(entries: list[tuple[bytes, Any]]) -> float | None:
    if not entries:
        return None
    return int(entries[0][0].decode().split("-")[0]) / 1000
