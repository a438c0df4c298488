"""Admission of a validated create request: idempotent replay, 409 checks, then the one submit.

Everything it reads about jobs comes from the core's own indexes, so jobs submitted by any
producer (this API, `ProvisioningClient`, the CLI, a replay) count, not only the API's:

1. With an idempotency key, the job the core's idempotency record names
   (`JobStore.find_idempotent`) is the answer: same request → that job; different request →
   IdempotencyConflict. A replay is never refused as "in flight" by its own job.
2. Otherwise, under a short per-number admission lock, the number must be neither in flight
   (`JobStore.jobs_in_flight`: a create, update or release for it stored and not finished)
   nor provisioned (a phone-number record).
3. Then `ProvisioningClient.submit` stores and enqueues the job; the core's create script puts
   it in the number's in-flight index in the same atomic step, and its finish takes it out.

Why the admission lock is still needed: the core stores a job unconditionally, so "nothing in
flight and no record" (step 2) and "store the job" (step 3) are two steps. Without the lock,
two API processes admitting creates for one number at once could both pass step 2 and make
two jobs (the worker would then fail the second with `number_already_provisioned`, but a
request the API must refuse with 409 would have made a job). The lock only has to serialise
creates with creates: an update needs the record, which step 2 refuses, and a release that
slips in between steps 2 and 3 is ordered by the worker's number lock exactly as if it had
come just after. It would be unnecessary if the core's create refused a create job for a
number with a record or a job in flight, in its create script.

Concurrent duplicates with one key queue on the admission lock; the first submits, the rest
find the key at step 1. The core's submit is idempotent per key anyway, so even a lock that
expired mid-submit cannot make two jobs for one key.

The only key of its own is `trunkline:api:admit:<number>` (the lock, 10 s at most).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from producers.client import ProvisioningClient
from worker.contract import ProvisionRequest
from worker.records import Job, JobKind
from worker.store import IdempotencyConflict, UnreadableRecord

ADMIT_LOCK_MS = 10_000

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_WHAT = {JobKind.CREATE: "a setup", JobKind.UPDATE: "an update", JobKind.RELEASE: "a release"}


class NumberUnavailable(Exception):
    """The number is provisioned already, or a job for it is in flight (HTTP 409)."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        self.code = code
        self.message = message
        self.retryable = retryable
        super().__init__(message)


@dataclass(frozen=True)
class Admitted:
    job_id: str
    created: bool  # False: an idempotent replay of an earlier job


class Admission:
    def __init__(self, client: ProvisioningClient, *, prefix: str = "trunkline:api") -> None:
        self.client = client
        self.prefix = prefix
        self._release = client.redis.register_script(_RELEASE)

    def _admit_key(self, number: str) -> str:
        return f"{self.prefix}:admit:{number}"

    def fingerprint(self, request: ProvisionRequest) -> str:
        return self.client.vault.fingerprint(request.fingerprint_material())

    def existing(self, org_id: str, key: str | None, fingerprint: str) -> str | None:
        """The job an idempotency key already names, or None; IdempotencyConflict on misuse."""
        if key is None:
            return None
        seen = self.client.store.find_idempotent(org_id, key)
        if seen is None:
            return None
        job_id, seen_fingerprint = seen
        if seen_fingerprint != fingerprint:
            raise IdempotencyConflict(job_id)
        return job_id

    def try_lock(self, number: str) -> str | None:
        token = secrets.token_hex(16)
        ok = self.client.redis.set(self._admit_key(number), token, nx=True, px=ADMIT_LOCK_MS)
        return token if ok else None

    def unlock(self, number: str, token: str) -> None:
        self._release(keys=[self._admit_key(number)], args=[token])

    def in_flight(self, number: str) -> list[Job]:
        """The unfinished jobs for a number, oldest first (from the core's in-flight index).

        The index is maintained atomically by the core; the state is still checked, so that
        an id whose job is gone or already terminal can never block a number.
        """
        store = self.client.store
        jobs: list[Job] = []
        for job_id in store.jobs_in_flight(number):
            try:
                job = store.get(job_id)
            except UnreadableRecord:
                # It can never run (the worker dead-letters it unread): it blocks nothing.
                continue
            if job is not None and not job.state.terminal:
                jobs.append(job)
        return jobs

    def check_number(self, org_id: str, number: str) -> None:
        """Raise NumberUnavailable when the number is taken or has a job in flight.

        The in-flight index is read before the record: a job writes its record before its
        finish takes it out of the index, so a create finishing between the two reads is seen
        by one of them.
        """
        in_flight = self.in_flight(number)
        record = self.client.store.get_number(number)
        releases = [job for job in in_flight if job.kind is JobKind.RELEASE]
        if record is not None and not releases:
            if record.org_id == org_id:
                raise NumberUnavailable(
                    "number_already_provisioned",
                    f"{number} is already provisioned for this organisation "
                    f"({record.phone_number_id}); release it first to set it up again",
                    retryable=False)
            raise NumberUnavailable("number_owned_by_other_org",
                                    f"{number} is provisioned by another organisation",
                                    retryable=False)
        if in_flight:
            # While a release runs, the number is about to be free: say so, retryably.
            raise self._in_flight(number, releases[0] if releases else in_flight[0], org_id)

    @staticmethod
    def _in_flight(number: str, job: Job, org_id: str) -> NumberUnavailable:
        whose = f"job {job.job_id}" if job.org_id == org_id else "another organisation's job"
        return NumberUnavailable(
            "setup_in_flight",
            f"{_WHAT[job.kind]} of {number} is already in flight ({whose}); retry when it "
            "has finished",
            retryable=True)

    def admit(self, org_id: str, request: ProvisionRequest, key: str | None,
              fingerprint: str, source: str) -> Admitted | None:
        """The whole admission in one call (one thread hop for the API): the job an
        idempotency key names, else steps 1-3 under the number's admission lock; None when
        another request holds that lock (the caller waits and tries again)."""
        existing = self.existing(org_id, key, fingerprint)
        if existing is not None:
            return Admitted(existing, created=False)
        token = self.try_lock(request.number)
        if token is None:
            return None
        try:
            return self.submit_locked(org_id, request, key, fingerprint, source)
        finally:
            self.unlock(request.number, token)

    def submit_locked(self, org_id: str, request: ProvisionRequest, key: str | None,
                      fingerprint: str, source: str) -> Admitted:
        """Steps 1-3 while holding the number's admission lock."""
        existing = self.existing(org_id, key, fingerprint)
        if existing is not None:
            return Admitted(existing, created=False)
        self.check_number(org_id, request.number)
        job_id = self.client.submit(org_id=org_id, request=request, idempotency_key=key,
                                    source=source)
        return Admitted(job_id, created=True)
