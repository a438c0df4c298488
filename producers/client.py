"""The Python producer client for other microservices.

    from producers import ProvisioningClient
    client = ProvisioningClient.from_env()
    job_id = client.submit(org_id="org_1", request={...}, idempotency_key="signup-42")
    job = client.wait(job_id, timeout=30)

A request is validated before anything is stored; the job record is written before the
message is sent, and the message carries only the job id.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any, cast

import redis
from celery import Celery

from worker import tracing
from worker.app import create_app
from worker.config import Settings
from worker.contract import (
    FieldError,
    InvalidRequest,
    ProvisionRequest,
    canonical_number,
    parse_change,
    parse_request,
)
from worker.messages import TaskMessages
from worker.records import (
    Job,
    JobKind,
    PhoneNumberRecord,
    StoredChange,
    StoredRequest,
    new_job_id,
)
from worker.runtime import redis_client
from worker.store import IdempotencyConflict, JobStore, UnreadableRecord
from worker.vault import Vault

log = logging.getLogger(__name__)

__all__ = ["JobNotFound", "NumberNotFound", "ProvisioningClient", "WaitTimeout"]


class JobNotFound(LookupError):
    pass


class NumberNotFound(LookupError):
    def __init__(self, number: str) -> None:
        self.number = number
        super().__init__(f"{number} is not provisioned for this organisation")


def _encode_cursor(score: float, number: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r} {number}".encode()).decode().rstrip("=")


_CURSOR_NUMBER = re.compile(r"\+[1-9][0-9]{1,14}")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    """(creation score, number) of a cursor `_encode_cursor` made; ValueError for any other.

    A forged cursor reaches Redis as a ZRANGEBYSCORE bound, so only a finite score and an
    E.164 number pass (Redis refuses `nan`).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        text, number = raw.split(" ", 1)
        score = float(text)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not a cursor this API returned") from None
    if not math.isfinite(score) or not _CURSOR_NUMBER.fullmatch(number):
        raise ValueError("not a cursor this API returned")
    return score, number


_ALIAS_TO_NAME = {
    (info.alias or name): name for name, info in ProvisionRequest.model_fields.items()
}


class WaitTimeout(TimeoutError):
    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.job_id} is still {job.state.value} after the wait")


class ProvisioningClient:
    def __init__(self, store: JobStore, vault: Vault, app: Celery, settings: Settings) -> None:
        self.store = store
        self.vault = vault
        self.app = app
        self.settings = settings
        self.messages = TaskMessages(app, settings.queue)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProvisioningClient:
        settings = Settings.from_env(env)
        settings.require_secret_keys()
        return cls(
            JobStore.for_settings(redis_client(settings), settings),
            Vault(settings.secret_keys),
            create_app(settings),
            settings,
        )

    @property
    def redis(self) -> redis.Redis:
        return self.store.redis

    def validate(self, request: Mapping[str, Any]) -> ProvisionRequest:
        """Raise worker.contract.InvalidRequest naming every bad field."""
        return parse_request(dict(request), strict_numbers=self.settings.strict_numbers,
                             gateway_policy=self.settings.gateway_policy)

    def submit(
        self,
        *,
        org_id: str,
        request: Mapping[str, Any] | ProvisionRequest,
        idempotency_key: str | None = None,
        source: str = "client",
    ) -> str:
        """Store a job and enqueue it; returns its id.

        With an idempotency key, the same key and request return the first job's id, and the
        same key with another request raises worker.store.IdempotencyConflict.
        """
        if not org_id or not org_id.strip():
            raise ValueError("org_id is required")
        parsed = request if isinstance(request, ProvisionRequest) else self.validate(request)
        job = Job(
            job_id=new_job_id(),
            org_id=org_id,
            number=parsed.number,
            request=StoredRequest.seal(parsed, self.vault),
            request_fingerprint=self.vault.fingerprint(parsed.fingerprint_material()),
            idempotency_key=idempotency_key,
            source=source,
        )
        return self._store_and_enqueue(job, idempotency_key)

    def update(
        self,
        *,
        org_id: str,
        number: str,
        changes: Mapping[str, Any],
        idempotency_key: str | None = None,
        source: str = "client",
    ) -> str:
        """Queue an in-place update of a provisioned number (any subset of the request fields).

        Raises InvalidRequest for bad fields and NumberNotFound when the organisation has no
        such number; the ids on LiveKit stay the same.
        """
        canonical = self._canonical(number)
        change = parse_change(dict(changes), strict_numbers=self.settings.strict_numbers,
                             gateway_policy=self.settings.gateway_policy)
        material = {
            "update": canonical,
            "changes": {k: v for k, v in change.values.fingerprint_material().items()
                        if _ALIAS_TO_NAME.get(k, k) in change.fields},
        }
        fingerprint = self.vault.fingerprint(material)
        if (first := self._first_job(org_id, idempotency_key, fingerprint)) is not None:
            return first
        self.get_number(org_id, canonical)
        job = Job(
            job_id=new_job_id(),
            org_id=org_id,
            kind=JobKind.UPDATE,
            number=canonical,
            change=StoredChange.seal(change, self.vault),
            request_fingerprint=fingerprint,
            idempotency_key=idempotency_key,
            source=source,
        )
        return self._store_and_enqueue(job, idempotency_key)

    def release(
        self,
        *,
        org_id: str,
        number: str,
        idempotency_key: str | None = None,
        source: str = "client",
    ) -> str:
        """Queue the deletion of a number's rule, trunks and record.

        Raises NumberNotFound, and stores nothing, when the organisation holds no such number:
        one nobody holds and another organisation's are answered alike, so a caller learns
        nothing about numbers it does not hold and cannot make jobs or events for them. A
        repeated call with the same idempotency key returns its first job, whatever happened
        to the number since.
        """
        canonical = self._canonical(number)
        fingerprint = self.vault.fingerprint({"release": canonical})
        if (first := self._first_job(org_id, idempotency_key, fingerprint)) is not None:
            return first
        self.get_number(org_id, canonical)
        job = Job(
            job_id=new_job_id(),
            org_id=org_id,
            kind=JobKind.RELEASE,
            number=canonical,
            request_fingerprint=fingerprint,
            idempotency_key=idempotency_key,
            source=source,
        )
        return self._store_and_enqueue(job, idempotency_key)

    def _first_job(self, org_id: str, idempotency_key: str | None,
                   fingerprint: str) -> str | None:
        """The job an idempotency key already names (IdempotencyConflict for another request).

        Checked before the number is looked up: a repeated request is answered by its first
        job even if the number changed since (e.g. was released); the key decides.
        """
        if idempotency_key is None:
            return None
        seen = self.store.find_idempotent(org_id, idempotency_key)
        if seen is None:
            return None
        if seen[1] != fingerprint:
            raise IdempotencyConflict(seen[0])
        return seen[0]

    def get_number(self, org_id: str, number: str) -> PhoneNumberRecord:
        """The organisation's record of a number; NumberNotFound for anyone else's."""
        canonical = self._canonical(number)
        record = self.store.get_number(canonical)
        if record is None or record.org_id != org_id:
            raise NumberNotFound(canonical)
        return record

    def list_numbers(
        self, org_id: str, *, agent: str | None = None, cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[PhoneNumberRecord], str | None]:
        """A page of the organisation's numbers, oldest first; returns (page, next cursor).

        The cursor names the last number seen (creation time, number), so numbers released
        or added between two pages neither shift nor repeat the ones after it. Raises
        ValueError for a cursor this method did not make.
        """
        after_score, after_number = _decode_cursor(cursor) if cursor else (float("-inf"), "")
        key = self.store.keys.numbers_by_org(org_id)
        page: list[PhoneNumberRecord] = []
        while True:
            batch = cast(list[tuple[bytes, float]], self.store.redis.zrangebyscore(
                key, after_score, "+inf", start=0, num=limit + 1, withscores=True))
            # Equal scores come back ordered by member: skip up to the last one seen.
            fresh = [(m.decode(), s) for m, s in batch
                     if s > after_score or m.decode() > after_number]
            if not fresh:
                return page, None
            for number, score in fresh:
                if len(page) == limit:
                    return page, _encode_cursor(after_score, after_number)
                after_score, after_number = score, number
                try:
                    record = self.store.get_number(number)
                except UnreadableRecord as unreadable:
                    # One bad record must not hide the organisation's other numbers.
                    log.error("listing skips %s", unreadable)
                    continue
                if record is not None and record.org_id == org_id and (
                        agent is None or record.agent_name == agent):
                    page.append(record)

    def _canonical(self, number: str) -> str:
        try:
            return canonical_number(number, strict=False)
        except ValueError as exc:
            raise InvalidRequest([FieldError(field="number", message=str(exc),
                                             code="value_error")]) from None

    def _store_and_enqueue(self, job: Job, idempotency_key: str | None) -> str:
        # The record and its message are written together: from now on only a lost message
        # or a dead worker can stall the job, which the sweeper sees at the deadline.
        with tracing.enqueue_span(job) as span:
            # The message carries only the job id: the worker finds the trace in the record.
            job.trace_context = tracing.trace_context_of(span)
            job_id, created = self.store.create(
                job, deadline=time.time() + self.settings.visibility_timeout,
                idempotency_key=idempotency_key, message=self.messages.provision(job.job_id),
            )
            tracing.note_enqueued(span, job_id, created)
        return job_id

    def replay(self, job_id: str) -> Job:
        """Re-run a dead-lettered job under the same id: attempts reset, objects adopted."""
        return self.store.replay(job_id, deadline=time.time() + self.settings.visibility_timeout,
                                 message=self.messages.provision(job_id))

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        return job

    def wait(self, job_id: str, timeout: float = 30.0) -> Job:
        """Block until the job is succeeded or failed; raise WaitTimeout with its last state."""
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            job = self.get(job_id)
            if job.state.terminal:
                return job
            if time.monotonic() >= deadline:
                raise WaitTimeout(job)
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 0.25)

    def close(self) -> None:
        self.store.redis.close()
