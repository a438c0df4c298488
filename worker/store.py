"""The job store in Redis: job records, phone-number records, locks, dead letters, results.

The job record is the source of truth; a broker message only carries its id. Every write a
worker makes while running a job is fenced by the per-number lock token it holds, so a run
that lost its lock (it overran, or another delivery took over) cannot overwrite newer state.
Multi-key changes that must not be seen half-done are Lua scripts (atomic in Redis).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import WatchError

from worker.config import IDEMPOTENCY_TTL_SECONDS, Settings
from worker.records import Job, JobState, PhoneNumberRecord

if TYPE_CHECKING:  # the message module imports the tasks, which import the store
    from worker.messages import QueuedMessage

log = logging.getLogger(__name__)

RESULTS_STREAM = "trunkline:results"


class StoreError(Exception):
    """Base for store conflicts that the caller must act on."""


class LeaseLost(StoreError):
    """This run no longer holds its number lock; it must stop writing."""


class IdempotencyConflict(StoreError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"this Idempotency-Key was already used for job {job_id} with a different request; "
            "use a new key for a different request"
        )


class UnreadableRecord(StoreError):
    """A stored record that does not load (corrupt, an older schema, edited by hand).

    Whoever meets one skips it with this error instead of failing whole: the worker and the
    sweeper quarantine an unreadable job (`JobStore.quarantine`), the API and the `trunkline`
    commands name it and go on with everything else.
    """

    def __init__(self, kind: str, ident: str, reason: str) -> None:
        self.kind, self.ident, self.reason = kind, ident, reason
        super().__init__(f"the stored {kind} record {ident} cannot be read ({reason})")


class UnstorableRecord(StoreError, ValueError):
    """A record that would not load back once written; nothing was stored."""


class NotReplicated(StoreError):
    """A write reached the primary but not the replicas it must reach before it is
    acknowledged: a failover now could lose it. The write itself stands."""

    def __init__(self, what: str, acked: int, wanted: int, timeout_ms: int) -> None:
        self.acked, self.wanted = acked, wanted
        super().__init__(
            f"{what} is stored on the Redis primary, but {acked} of the {wanted} replica(s) "
            f"TRUNKLINE_REDIS_MIN_REPLICAS asks for confirmed it within {timeout_ms} ms; "
            "check the replicas' link to the primary (INFO replication)")


class NumberTaken(StoreError):
    def __init__(self, record: PhoneNumberRecord) -> None:
        self.record = record
        super().__init__(f"{record.number} is already provisioned ({record.phone_number_id})")


@dataclass(frozen=True)
class Keys:
    prefix: str = "trunkline"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def published(self, job_id: str, run: int) -> str:
        return f"{self.prefix}:published:{job_id}:{run}"

    @property
    def active(self) -> str:
        return f"{self.prefix}:jobs:active"

    @property
    def terminal(self) -> str:
        """Finished jobs scored by when they finished: what retention walks, oldest first."""
        return f"{self.prefix}:jobs:terminal"

    def jobs_by_org(self, org_id: str) -> str:
        return f"{self.prefix}:jobs:org:{org_id}"

    def idempotency(self, org_id: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}:idem:{org_id}:{digest}"

    def number_lock(self, number: str) -> str:
        return f"{self.prefix}:lock:number:{number}"

    def number(self, number: str) -> str:
        return f"{self.prefix}:number:{number}"

    def numbers_by_org(self, org_id: str) -> str:
        return f"{self.prefix}:numbers:org:{org_id}"

    def in_flight(self, number: str) -> str:
        return f"{self.prefix}:inflight:{number}"

    @property
    def unreadable(self) -> str:
        return f"{self.prefix}:unreadable"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dlq"

    @property
    def results(self) -> str:
        return RESULTS_STREAM if self.prefix == "trunkline" else f"{self.prefix}:results"

    @property
    def sweeper_lock(self) -> str:
        return f"{self.prefix}:lock:sweeper"


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"  # the lock is ours; the job is not finished
    LOCKED = "locked"  # another run holds the number (holder, remaining)
    FINISHED = "finished"  # the job is terminal; no lock taken
    MISSING = "missing"  # no such job
    UNPARSED = "unparsed"  # Redis could not read the record's number; no lock taken


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    job_raw: bytes = b""
    number_raw: bytes | None = None
    holder: str | None = None
    remaining: float = 0.0

    def job(self, job_id: str) -> Job:
        return load_job(job_id, self.job_raw)

    def number_record(self) -> PhoneNumberRecord | None:
        """The number's record as read under the lock (CLAIMED only)."""
        if self.number_raw is None:
            return None
        return parse_number(self.number_raw)


_CREATE_JOB = """
-- KEYS: idempotency key ('' for none), job, active index, org index, number's in-flight set,
--       broker queue ('' for none)
-- ARGV: job id, job json, fingerprint, deadline, created score, idempotency ttl, message
if KEYS[1] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then
    local seen = cjson.decode(existing)
    return {seen['job_id'], seen['fingerprint'], 0}
  end
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX') == false then
  return redis.error_reply('job id already exists')
end
if KEYS[1] ~= '' then
  redis.call('SET', KEYS[1], cjson.encode({job_id = ARGV[1], fingerprint = ARGV[3]}),
             'EX', tonumber(ARGV[6]))
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
if KEYS[6] ~= '' then redis.call('LPUSH', KEYS[6], ARGV[7]) end
return {ARGV[1], ARGV[3], 1}
"""

_SAVE_FENCED = """
-- KEYS: lock, job, active index.  ARGV: token, job json, job id, deadline ('' keeps it)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3]) end
return 1
"""

_PUT_NUMBER = """
-- KEYS: lock, number record, org index.  ARGV: token, record json, job id, score, number
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, ''} end
local existing = redis.call('GET', KEYS[2])
if existing then
  local record = cjson.decode(existing)
  if record['job_id'] ~= ARGV[3] then return {2, existing} end
  return {1, existing}
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return {1, ARGV[2]}
"""

_REPLACE_NUMBER = """
-- KEYS: lock, number record.  ARGV: token, record json, phone number id
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local existing = redis.call('GET', KEYS[2])
if not existing or cjson.decode(existing)['phone_number_id'] ~= ARGV[3] then return 2 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

_DELETE_NUMBER = """
-- KEYS: lock, number record, org index.  ARGV: token, job id, number
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local existing = redis.call('GET', KEYS[2])
if existing and cjson.decode(existing)['job_id'] == ARGV[2] then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
return 1
"""

# "Already published?" and XADD are one atomic step, together with the terminal job write:
# a retried finish can neither publish twice nor leave a terminal job without its event.
# A create's phone-number record is written in the same step (so no run can be seen with the
# record but without its terminal job), and a run's last write releases its lock here too:
# the happy path's final write is one round trip.
_FINISH = """
-- KEYS: lock, job, active index, published marker, results stream, dead letters, in-flight,
--       number record ('' for none), org's number index ('' for none), terminal index
-- ARGV: token, job json, job id, org id, status, payload, maxlen, dead-letter flag, now,
--       record json ('' for none), record score, number, release the lock ('1' or '0')
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, ''} end
if ARGV[10] ~= '' then
  local existing = redis.call('GET', KEYS[8])
  if existing then
    if cjson.decode(existing)['job_id'] ~= ARGV[3] then return {2, existing} end
  else
    redis.call('SET', KEYS[8], ARGV[10])
    redis.call('ZADD', KEYS[9], ARGV[11], ARGV[12])
  end
end
local already = redis.call('GET', KEYS[4])
if already then
  if ARGV[13] == '1' then redis.call('DEL', KEYS[1]) end
  return {0, already}
end
local id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*',
  'job_id', ARGV[3], 'org_id', ARGV[4], 'status', ARGV[5], 'payload', ARGV[6])
redis.call('SET', KEYS[4], id)
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[7], ARGV[3])
redis.call('ZADD', KEYS[10], ARGV[9], ARGV[3])
if ARGV[8] == '1' then redis.call('ZADD', KEYS[6], ARGV[9], ARGV[3]) end
if ARGV[13] == '1' then redis.call('DEL', KEYS[1]) end
return {1, id}
"""

# A delivery's first step, in one round trip: read the job, and unless it is finished take its
# number's lock and read the number's record. The lock and record keys derive from the stored
# job's number, which only the script can see: it reads keys it is not given, so it suits one
# Redis (or a Sentinel-managed primary), not Redis Cluster.
_CLAIM = """
-- KEYS: job, active index.  ARGV: token, lock ttl ms, lock key prefix, number key prefix,
--       sweep deadline (the lease's end), job id
local raw = redis.call('GET', KEYS[1])
if not raw then return {0} end
local ok, job = pcall(cjson.decode, raw)
if not ok or type(job) ~= 'table' or type(job['number']) ~= 'string' then return {3, raw} end
if job['state'] == 'succeeded' or job['state'] == 'failed' then return {4, raw} end
local lock = ARGV[3] .. job['number']
if redis.call('SET', lock, ARGV[1], 'NX', 'PX', ARGV[2]) then
  -- A run that dies from here on is re-sent by the sweeper when its lease ends.
  redis.call('ZADD', KEYS[2], 'XX', ARGV[5], ARGV[6])
  return {1, raw, redis.call('GET', ARGV[4] .. job['number']) or ''}
end
return {2, raw, redis.call('GET', lock) or '', redis.call('PTTL', lock)}
"""

# An unreadable job cannot be finished by _FINISH (that needs the job); it still ends in one
# failed event and a dead letter, once, and leaves the sweep and in-flight indexes.
_QUARANTINE = """
-- KEYS: active, published marker, results, dead letters, unreadable hash, in-flight ('' none)
-- ARGV: job id, org id, payload, maxlen, now, reason
redis.call('ZREM', KEYS[1], ARGV[1])
if KEYS[6] ~= '' then redis.call('ZREM', KEYS[6], ARGV[1]) end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[6])
if redis.call('ZSCORE', KEYS[4], ARGV[1]) == false then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
end
if redis.call('GET', KEYS[2]) then return 0 end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'job_id', ARGV[1], 'org_id', ARGV[2], 'status', 'failed', 'payload', ARGV[3])
redis.call('SET', KEYS[2], id)
return 1
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class JobStore:
    def __init__(self, redis: Redis, *, keys: Keys | None = None, results_maxlen: int = 100_000,
                 min_replicas: int = 0, replica_timeout_ms: int = 1000,
                 idempotency_ttl: int = IDEMPOTENCY_TTL_SECONDS) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.results_maxlen = results_maxlen
        # Writes acknowledged to someone else (a created job, a replay, a job's end) wait for
        # this many replicas (Redis WAIT): replication is asynchronous, and a failover loses
        # what the old primary had not yet sent.
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        self.idempotency_ttl = idempotency_ttl
        self._create_job = redis.register_script(_CREATE_JOB)
        self._save = redis.register_script(_SAVE_FENCED)
        self._put_number = redis.register_script(_PUT_NUMBER)
        self._delete_number = redis.register_script(_DELETE_NUMBER)
        self._replace_number = redis.register_script(_REPLACE_NUMBER)
        self._finish = redis.register_script(_FINISH)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE_LOCK)
        self._quarantine = redis.register_script(_QUARANTINE)

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> JobStore:
        return cls(redis, results_maxlen=settings.results_maxlen,
                   min_replicas=settings.redis_min_replicas,
                   replica_timeout_ms=settings.redis_replica_timeout_ms,
                   idempotency_ttl=settings.idempotency_ttl_seconds)

    # --- jobs -------------------------------------------------------------------------

    def create(
        self,
        job: Job,
        *,
        deadline: float,
        idempotency_key: str | None = None,
        message: QueuedMessage | None = None,
    ) -> tuple[str, bool]:
        """Store a new job, or return the job an idempotency key already points at.

        With `message`, the job's broker message is pushed in the same atomic step, only
        when the job is created. Returns (job_id, created). Raises IdempotencyConflict when
        the key was used for a request with another fingerprint.
        """
        idem = self.keys.idempotency(job.org_id, idempotency_key) if idempotency_key else ""
        try:  # the store never writes what it cannot read back
            payload = job.model_dump_json()
            Job.model_validate_json(payload)
        except (ValueError, PydanticSerializationError) as exc:
            raise UnstorableRecord(f"job {job.job_id} would not load back once stored "
                                   f"({_reason(exc)}); nothing was stored") from None
        raw = cast(list[Any], self._durably(
            f"job {job.job_id}", self._create_job,
            keys=[idem, self.keys.job(job.job_id), self.keys.active,
                  self.keys.jobs_by_org(job.org_id), self.keys.in_flight(job.number),
                  message.queue_key if message else ""],
            args=[job.job_id, payload, job.request_fingerprint, deadline,
                  job.created_at.timestamp(), self.idempotency_ttl,
                  message.payload if message else ""],
        ))
        job_id, fingerprint, created = _text(raw[0]), _text(raw[1]), int(raw[2])
        if not created and fingerprint != job.request_fingerprint:
            raise IdempotencyConflict(job_id)
        return job_id, bool(created)

    def _durably(self, what: str, script: Script, *, keys: list[str], args: list[Any],
                 strict: bool = True) -> Any:
        """Run a script whose effect is acknowledged to someone; with min_replicas, WAIT for
        the replicas on the same connection (one pipeline). Too few confirmations raise
        NotReplicated, or with strict=False (a write that cannot be taken back) are logged."""
        if not self.min_replicas:
            return script(keys=keys, args=args)
        pipe = self.redis.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.wait(self.min_replicas, self.replica_timeout_ms)
        result, acked = pipe.execute()
        if int(acked) < self.min_replicas:
            short = NotReplicated(what, int(acked), self.min_replicas, self.replica_timeout_ms)
            if strict:
                raise short
            log.warning("%s", short)
        return result

    def wait_for_replicas(self, pipe: Pipeline) -> None:
        """Add WAIT to a pipeline about to run (its last reply), for acknowledged writes."""
        if self.min_replicas:
            pipe.wait(self.min_replicas, self.replica_timeout_ms)

    def check_replicated(self, replies: list[Any], what: str) -> None:
        if self.min_replicas and int(replies[-1]) < self.min_replicas:
            raise NotReplicated(what, int(replies[-1]), self.min_replicas,
                                self.replica_timeout_ms)

    def find_idempotent(self, org_id: str, idempotency_key: str) -> tuple[str, str] | None:
        """(job id, request fingerprint) an organisation's idempotency key names, if any."""
        raw = self.redis.get(self.keys.idempotency(org_id, idempotency_key))
        if raw is None:
            return None
        seen = json.loads(cast(bytes, raw))
        return str(seen["job_id"]), str(seen["fingerprint"])

    def jobs_in_flight(self, number: str) -> list[str]:
        """Jobs for a number that are stored and not yet finished, oldest first."""
        ids = self.redis.zrange(self.keys.in_flight(number), 0, -1)
        return [_text(i) for i in cast(list[bytes], ids)]

    def get(self, job_id: str) -> Job | None:
        """The job, None if there is none; UnreadableRecord if it is stored but will not load."""
        raw = self.redis.get(self.keys.job(job_id))
        return None if raw is None else load_job(job_id, cast(bytes, raw))

    def quarantine(self, job_id: str, reason: str) -> bool:
        """End an unreadable job: out of the sweep and in-flight indexes, dead-lettered with
        its reason, and one `failed` event (code `unreadable_record`). Idempotent; returns
        whether the event was published by this call."""
        raw = cast(bytes | None, self.redis.get(self.keys.job(job_id))) or b""
        org_id, number = raw_field(raw, "org_id"), raw_field(raw, "number")
        payload = {"type": "failed", "number": number, "error_code": "unreadable_record",
                   "error_message": f"the stored job record cannot be read ({reason}); it was "
                                    "dead-lettered without running",
                   "retryable": False}
        published = self._quarantine(
            keys=[self.keys.active, self.keys.published(job_id, 0), self.keys.results,
                  self.keys.dead_letters, self.keys.unreadable,
                  self.keys.in_flight(number) if number else ""],
            args=[job_id, org_id or "unknown", json.dumps(payload, separators=(",", ":")),
                  self.results_maxlen, time.time(), reason],
        )
        return bool(published)

    def unreadable_reason(self, job_id: str) -> str | None:
        """Why a quarantined job could not be read, if it was quarantined."""
        raw = self.redis.hget(self.keys.unreadable, job_id)
        return None if raw is None else _text(raw)

    def set_deadline(self, job_id: str, deadline: float) -> None:
        """Move a job's sweep deadline; only for jobs still in the active index."""
        self.redis.zadd(self.keys.active, {job_id: deadline}, xx=True)

    def due(self, now: float, limit: int = 100) -> list[str]:
        ids = self.redis.zrangebyscore(self.keys.active, "-inf", now, start=0, num=limit)
        return [_text(i) for i in cast(list[bytes], ids)]

    def forget_active(self, job_id: str) -> None:
        self.redis.zrem(self.keys.active, job_id)

    def save(self, job: Job, token: str, *, deadline: float | None = None) -> None:
        ok = self._save(
            keys=[self.keys.number_lock(job.number), self.keys.job(job.job_id),
                  self.keys.active],
            args=[token, job.model_dump_json(), job.job_id, "" if deadline is None else deadline],
        )
        if not ok:
            raise LeaseLost(f"job {job.job_id} lost its lock on {job.number}")

    def finish(
        self, job: Job, token: str, *, payload: dict[str, Any], dead_letter: bool,
        record: PhoneNumberRecord | None = None, release: bool = False,
    ) -> tuple[bool, str]:
        """Write the terminal job and publish its one event. Returns (published_now, event id).

        With `record`, the phone-number record is written in the same atomic step unless this
        job's record is already there (NumberTaken if another job's is, and nothing is
        written). With `release`, the number lock is released in that step too.
        """
        if not job.state.terminal:
            raise ValueError("finish() needs a terminal job state")
        with_record = record is not None
        raw = cast(
            list[Any],
            self._durably(
                # The end is written and its event out: a failover that loses it before the
                # replicas have it makes the sweeper run the job again (README, Sentinel).
                f"the end of job {job.job_id}", self._finish, strict=False,
                keys=[self.keys.number_lock(job.number), self.keys.job(job.job_id),
                      self.keys.active, self.keys.published(job.job_id, job.run),
                      self.keys.results, self.keys.dead_letters,
                      self.keys.in_flight(job.number),
                      self.keys.number(job.number) if with_record else "",
                      self.keys.numbers_by_org(job.org_id) if with_record else "",
                      self.keys.terminal],
                args=[token, job.model_dump_json(), job.job_id, job.org_id, job.state.value,
                      json.dumps(payload, separators=(",", ":"), default=str),
                      self.results_maxlen, "1" if dead_letter else "0", time.time(),
                      record.model_dump_json() if record is not None else "",
                      record.created_at.timestamp() if record is not None else 0,
                      job.number, "1" if release else "0"],
            ),
        )
        status = int(raw[0])
        if status == -1:
            raise LeaseLost(f"job {job.job_id} lost its lock before finishing")
        if status == 2:
            raise NumberTaken(PhoneNumberRecord.model_validate_json(raw[1]))
        return status == 1, _text(raw[1])

    def claim(self, job_id: str, token: str, ttl_seconds: float, *,
              deadline: float | None = None) -> Claim:
        """Start a delivery in one round trip: the job, its number's lock, the number's record.

        The lock is taken only for a stored job that is not finished and names a number; when
        it is, the job's sweep deadline moves to `deadline` (default: the lock's end).
        """
        raw = cast(list[Any], self._claim(
            keys=[self.keys.job(job_id), self.keys.active],
            args=[token, max(1, int(ttl_seconds * 1000)), self.keys.number_lock(""),
                  self.keys.number(""),
                  time.time() + ttl_seconds if deadline is None else deadline, job_id],
        ))
        status = int(raw[0])
        if status == 0:
            return Claim(ClaimStatus.MISSING)
        job_raw = cast(bytes, raw[1])
        if status == 1:
            return Claim(ClaimStatus.CLAIMED, job_raw, cast(bytes, raw[2]) or None)
        if status == 2:
            return Claim(ClaimStatus.LOCKED, job_raw, holder=_text(raw[2]) or None,
                         remaining=max(0.0, int(raw[3]) / 1000))
        return Claim(ClaimStatus.FINISHED if status == 4 else ClaimStatus.UNPARSED, job_raw)

    # --- per-number lock --------------------------------------------------------------

    def acquire_number_lock(self, number: str, token: str, ttl_seconds: float) -> bool:
        return bool(
            self.redis.set(self.keys.number_lock(number), token, nx=True,
                           px=max(1, int(ttl_seconds * 1000)))
        )

    def number_lock_holder(self, number: str) -> tuple[str | None, float]:
        """The token holding a number's lock and the seconds it has left."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.number_lock(number))
        pipe.pttl(self.keys.number_lock(number))
        holder, pttl = pipe.execute()
        return (None if holder is None else _text(holder)), max(0.0, int(pttl) / 1000)

    def release_number_lock(self, number: str, token: str) -> None:
        self._release(keys=[self.keys.number_lock(number)], args=[token])

    # --- phone-number records ---------------------------------------------------------

    def get_number(self, number: str) -> PhoneNumberRecord | None:
        raw = self.redis.get(self.keys.number(number))
        return None if raw is None else parse_number(cast(bytes, raw), number)

    def put_number(self, record: PhoneNumberRecord, token: str) -> PhoneNumberRecord:
        """Write the record unless the number belongs to another job (NumberTaken)."""
        raw = cast(
            list[Any],
            self._put_number(
                keys=[self.keys.number_lock(record.number), self.keys.number(record.number),
                      self.keys.numbers_by_org(record.org_id)],
                args=[token, record.model_dump_json(), record.job_id,
                      record.created_at.timestamp(), record.number],
            ),
        )
        status = int(raw[0])
        if status == 0:
            raise LeaseLost(f"lost the lock on {record.number} before writing its record")
        stored = PhoneNumberRecord.model_validate_json(raw[1])
        if status == 2:
            raise NumberTaken(stored)
        return stored

    def replace_number(self, record: PhoneNumberRecord, token: str) -> None:
        """Overwrite an existing record (an update); fenced by the number lock."""
        status = self._replace_number(
            keys=[self.keys.number_lock(record.number), self.keys.number(record.number)],
            args=[token, record.model_dump_json(), record.phone_number_id],
        )
        if status == 0:
            raise LeaseLost(f"lost the lock on {record.number} before updating its record")
        if status == 2:
            raise StoreError(f"the record of {record.number} changed while it was being updated")

    def delete_number_if_owned(self, number: str, org_id: str, job_id: str, token: str) -> None:
        ok = self._delete_number(
            keys=[self.keys.number_lock(number), self.keys.number(number),
                  self.keys.numbers_by_org(org_id)],
            args=[token, job_id, number],
        )
        if not ok:
            raise LeaseLost(f"lost the lock on {number} before deleting its record")

    def numbers_of_org(self, org_id: str) -> Iterator[str]:
        for member in self.redis.zscan_iter(self.keys.numbers_by_org(org_id)):
            yield _text(member[0])

    # --- dead letters -----------------------------------------------------------------

    def replay(self, job_id: str, deadline: float,
               message: QueuedMessage | None = None) -> Job:
        """Turn a dead-lettered job into a new queued run, pushing `message` with it (without
        one, the caller enqueues it).

        Raises LookupError for an unknown job, ValueError for one that is not failed, and
        UnreadableRecord for one that does not load (replay cannot repair a record).
        """
        key = self.keys.job(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    raw = pipe.get(key)
                    if raw is None:
                        raise LookupError(f"no job {job_id}")
                    job = load_job(job_id, cast(bytes, raw))
                    if job.state is not JobState.FAILED:
                        raise ValueError(
                            f"job {job_id} is {job.state.value}; only failed jobs can be replayed"
                        )
                    fresh = job.for_replay()
                    pipe.multi()
                    pipe.set(key, fresh.model_dump_json())
                    pipe.zrem(self.keys.dead_letters, job_id)
                    pipe.zadd(self.keys.active, {job_id: deadline})
                    pipe.zadd(self.keys.in_flight(job.number), {job_id: deadline})
                    if message is not None:
                        pipe.lpush(message.queue_key, message.payload)
                    self.wait_for_replicas(pipe)
                    replies = pipe.execute()
                    self.check_replicated(replies, f"the replay of job {job_id}")
                    return fresh
                except WatchError:
                    continue

    def dead_letter_ids(self, limit: int = 100) -> list[str]:
        ids = self.redis.zrevrange(self.keys.dead_letters, 0, limit - 1)
        return [_text(i) for i in cast(list[bytes], ids)]


def load_job(job_id: str, raw: bytes) -> Job:
    """A stored job record's bytes as a Job; UnreadableRecord if they do not load."""
    try:
        return Job.model_validate_json(raw)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UnreadableRecord("job", job_id, _reason(exc)) from None


def parse_number(raw: bytes, number: str | None = None) -> PhoneNumberRecord:
    """A stored phone-number record's bytes; UnreadableRecord if they do not load."""
    try:
        return PhoneNumberRecord.model_validate_json(raw)
    except ValueError as exc:
        raise UnreadableRecord("phone-number", number or raw_field(raw, "number") or "?",
                               _reason(exc)) from None


def _reason(exc: ValueError | PydanticSerializationError) -> str:
    """What made a record unreadable, without its values (a record may hold a ciphertext)."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        return f"{where}: {first['type']}"
    return type(exc).__name__


_RAW_FIELD = {name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*"((?:[^"\\]|\\.){1,200})"')
              for name in ("org_id", "number")}


def raw_field(raw: bytes, name: str) -> str | None:
    """A top-level string field (`org_id`, `number`) of a record that does not load whole."""
    match = _RAW_FIELD[name].search(raw)
    if match is None:
        return None
    try:
        value = json.loads(b'"' + match.group(1) + b'"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
