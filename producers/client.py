"""The Python producer client for other microservices.

    from producers import ProvisioningClient
    client = ProvisioningClient.from_env()
    job_id = client.submit(org_id="org_1", request={...}, idempotency_key="signup-42")
    job = client.wait(job_id, timeout=30)

A request is validated before anything is stored; the job record is written before the
message is sent, and the message carries only the job id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery

from worker.app import create_app, enqueue
from worker.config import Settings
from worker.contract import ProvisionRequest, parse_request
from worker.records import Job, StoredRequest, new_job_id
from worker.runtime import redis_client
from worker.store import JobStore
from worker.vault import Vault

__all__ = ["JobNotFound", "ProvisioningClient", "WaitTimeout"]


class JobNotFound(LookupError):
    pass


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProvisioningClient:
        settings = Settings.from_env(env)
        settings.require_secret_keys()
        return cls(
            JobStore(redis_client(settings), results_maxlen=settings.results_maxlen),
            Vault(settings.secret_keys),
            create_app(settings),
            settings,
        )

    @property
    def redis(self) -> redis.Redis:
        return self.store.redis

    def validate(self, request: Mapping[str, Any]) -> ProvisionRequest:
        """Raise worker.contract.InvalidRequest naming every bad field."""
        return parse_request(dict(request), strict_numbers=self.settings.strict_numbers)

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
            request=StoredRequest.seal(parsed, self.vault),
            request_fingerprint=self.vault.fingerprint(parsed.fingerprint_material()),
            idempotency_key=idempotency_key,
            source=source,
        )
        now = time.time()
        job_id, created = self.store.create(
            job, deadline=now + self.settings.submit_grace, idempotency_key=idempotency_key
        )
        if created:
            enqueue(self.app, self.settings, job_id)
            # Sent: from now on only a lost message or a dead worker can stall it.
            self.store.set_deadline(job_id, now + self.settings.visibility_timeout)
        return job_id

    def replay(self, job_id: str) -> Job:
        """Re-run a dead-lettered job under the same id: attempts reset, objects adopted."""
        now = time.time()
        job = self.store.replay(job_id, deadline=now + self.settings.submit_grace)
        enqueue(self.app, self.settings, job_id)
        self.store.set_deadline(job_id, now + self.settings.visibility_timeout)
        return job

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
