"""Admission of a validated request: idempotent replay, 409 checks, then the one submit.

Order matters:

1. With an idempotency key, the job the key already points at (the core's record, keyed by
   organisation and key) is the answer: same request → that job; different request →
   IdempotencyConflict. A replay is never refused as "in flight" by its own job.
2. Otherwise, under a short per-number admission lock (so two requests for one number cannot
   both pass the checks), the number must be neither provisioned (a phone-number record) nor
   in flight (a live job this API admitted for it, or a worker holding the core's number lock).
3. Then `ProvisioningClient.submit` stores and enqueues the job, and the number is marked in
   flight with its job id. The mark is checked lazily: a finished or missing job frees it.

Concurrent duplicates with one key queue on the admission lock; the first submits, the rest
find the key at step 1. The core's submit is idempotent per key anyway, so even a lock that
expired mid-submit cannot make two jobs for one key.

Keys under `trunkline:api:`: `admit:<number>` (lock), `inflight:<number>` (job id).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, cast

from producers.client import ProvisioningClient
from worker.contract import ProvisionRequest
from worker.records import Job
from worker.store import IdempotencyConflict

ADMIT_LOCK_MS = 10_000
INFLIGHT_TTL_SECONDS = 24 * 3600

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class NumberUnavailable(Exception):
    """The number is provisioned already, or a setup for it is in flight (HTTP 409)."""

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

    def _inflight_key(self, number: str) -> str:
        return f"{self.prefix}:inflight:{number}"

    def fingerprint(self, request: ProvisionRequest) -> str:
        return self.client.vault.fingerprint(request.fingerprint_material())

    def existing(self, org_id: str, key: str | None, fingerprint: str) -> str | None:
        """The job an idempotency key already names, or None; IdempotencyConflict on misuse."""
        if key is None:
            return None
        raw = self.client.redis.get(self.client.store.keys.idempotency(org_id, key))
        if raw is None:
            return None
        seen: dict[str, Any] = json.loads(cast(bytes, raw))
        job_id = str(seen["job_id"])
        if seen.get("fingerprint") != fingerprint:
            raise IdempotencyConflict(job_id)
        return job_id

    def try_lock(self, number: str) -> str | None:
        token = secrets.token_hex(16)
        ok = self.client.redis.set(self._admit_key(number), token, nx=True, px=ADMIT_LOCK_MS)
        return token if ok else None

    def unlock(self, number: str, token: str) -> None:
        self._release(keys=[self._admit_key(number)], args=[token])

    def check_number(self, org_id: str, number: str) -> None:
        """Raise NumberUnavailable when the number is taken or has a setup in flight."""
        store = self.client.store
        record = store.get_number(number)
        if record is not None:
            if record.org_id == org_id:
                raise NumberUnavailable(
                    "number_already_provisioned",
                    f"{number} is already provisioned for this organisation "
                    f"({record.phone_number_id}); release it first to set it up again",
                    retryable=False)
            raise NumberUnavailable("number_owned_by_other_org",
                                    f"{number} is provisioned by another organisation",
                                    retryable=False)
        raw = self.client.redis.get(self._inflight_key(number))
        if raw is not None:
            job = store.get(cast(bytes, raw).decode())
            if job is not None and not job.state.terminal:
                raise self._in_flight(number, job, org_id)
        holder, _ = store.number_lock_holder(number)
        if holder is not None:
            raise NumberUnavailable(
                "setup_in_flight",
                f"a setup for {number} is running; retry when it has finished",
                retryable=True)

    @staticmethod
    def _in_flight(number: str, job: Job, org_id: str) -> NumberUnavailable:
        whose = f"job {job.job_id}" if job.org_id == org_id else "another organisation's job"
        return NumberUnavailable(
            "setup_in_flight",
            f"a setup for {number} is already in flight ({whose}); retry when it has finished",
            retryable=True)

    def submit_locked(self, org_id: str, request: ProvisionRequest, key: str | None,
                      fingerprint: str, source: str) -> Admitted:
        """Steps 1-3 while holding the number's admission lock."""
        existing = self.existing(org_id, key, fingerprint)
        if existing is not None:
            return Admitted(existing, created=False)
        self.check_number(org_id, request.number)
        job_id = self.client.submit(org_id=org_id, request=request, idempotency_key=key,
                                    source=source)
        self.client.redis.set(self._inflight_key(request.number), job_id,
                              ex=INFLIGHT_TTL_SECONDS)
        return Admitted(job_id, created=True)
