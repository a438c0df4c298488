"""Unit-test wiring for the HTTP producer: fakeredis, an in-memory Celery broker, httpx's
ASGITransport (no sockets), and a fake worker that finishes jobs the moment they are sent:
either with a made-up outcome, or (`outcome="run"`) by running the real JobRunner and sagas
against the in-memory fake LiveKit of the worker tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fakeredis
import httpx
import pytest
from celery import Celery
from fastapi import FastAPI

from producers.api import ApiSettings, create_api
from producers.client import ProvisioningClient
from producers.keys import ApiKeys, CreatedKey
from tests.worker.fake_livekit import FakeLiveKit
from worker.config import Settings
from worker.lifecycle import ReleaseSaga, UpdateSaga
from worker.records import Job, JobError, JobKind, JobResult, JobState
from worker.runner import JobRunner
from worker.saga import ProvisioningSaga
from worker.store import JobStore
from worker.vault import Vault

SEED_BODY: dict[str, Any] = {
    "name": "Main Office SIP Trunk",
    "number": "+15551234567",
    "outboundPstn": "sip.gateway.com",
    "authUserName": "sip_user",
    "authPassword": "sip_password",
}
CANARY = "canary-Api-Pw-51d0e8"
CREATE = "/api/sio/createSipTrunkDispatch"


def seed(**changes: Any) -> dict[str, Any]:
    return {**SEED_BODY, **changes}


class FakeWorkerClient(ProvisioningClient):
    """Finishes each new job at once, as `outcome` says: success, a failure code, nothing
    (`None`: the job stays queued), or `"run"`: the real runner on the fake LiveKit."""

    outcome: str | None = "succeeded"
    submits: int = 0
    runner: JobRunner | None = None

    def submit(self, **kwargs: Any) -> str:
        type(self).submits += 1
        return super().submit(**kwargs)

    def _store_and_enqueue(self, job: Job, idempotency_key: str | None) -> str:
        job_id = super()._store_and_enqueue(job, idempotency_key)
        stored = self.get(job_id)
        if self.outcome is None or stored.state.terminal:
            return job_id
        if self.outcome == "run":
            assert self.runner is not None
            for _ in range(10):  # retries (a locked number, a transient fault) run at once
                self.runner.run(job_id)
                if self.get(job_id).state.terminal:
                    break
            return job_id
        self._finish(stored)
        return job_id

    def _finish(self, job: Job) -> None:
        """A made-up terminal state, written as the core's finish would (out of in-flight)."""
        job_id = job.job_id
        if self.outcome == "succeeded":
            job.state = JobState.SUCCEEDED
            job.result = JobResult(number=job.number,
                                   inbound_trunk_id="ST_" + job_id[-12:],
                                   outbound_trunk_id="ST_out" + job_id[-9:],
                                   dispatch_rule_id="SDR_" + job_id[-12:],
                                   phone_number_id="pn_" + job_id[-12:])
        else:
            job.state = JobState.FAILED
            job.error = JobError(code=str(self.outcome), message=f"failed: {self.outcome}",
                                 retryable=False, field="number")
        job.finished_at = datetime.now(UTC)
        self.redis.set(self.store.keys.job(job_id), job.model_dump_json())
        self.redis.zrem(self.store.keys.in_flight(job.number), job_id)


@dataclass
class Response:
    status: int
    headers: httpx.Headers
    body: dict[str, Any]
    text: str


@dataclass
class Harness:
    app: FastAPI
    redis: fakeredis.FakeRedis
    client: FakeWorkerClient
    keys: ApiKeys
    clock: list[float]
    fake: FakeLiveKit
    made_keys: dict[str, CreatedKey] = field(default_factory=dict)

    def key(self, org: str = "org_a") -> CreatedKey:
        if org not in self.made_keys:
            self.made_keys[org] = self.keys.create(org)
        return self.made_keys[org]

    def auth(self, org: str = "org_a") -> dict[str, str]:
        created = self.key(org)
        return {"X-API-KEY": created.api_key, "X-API-SECRET": created.api_secret}

    async def arequest(self, method: str, path: str, *, json_body: Any = None,
                       content: bytes | None = None,
                       headers: Mapping[str, str | bytes] | None = None,
                       org: str | None = "org_a",
                       client: tuple[str, int] = ("127.0.0.1", 50000)) -> Response:
        # bytes values reach the app as sent (httpx encodes str values as ASCII only).
        sent: dict[str, str | bytes] = dict(self.auth(org) if org else {})
        sent.update(headers or {})
        if json_body is not None:
            content = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        transport = httpx.ASGITransport(app=self.app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            raw = [(name.encode(), value if isinstance(value, bytes) else value.encode())
                   for name, value in sent.items()]
            answer = await http.request(method, path, content=content, headers=raw)
        try:
            body = answer.json()
        except ValueError:
            body = {}
        return Response(answer.status_code, answer.headers, body, answer.text)

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        answer: Response = run(self.arequest(method, path, **kwargs))
        return answer

    def create(self, body: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", CREATE, json_body=seed() if body is None else body,
                            **kwargs)

    def job(self, job_id: str) -> Job:
        return self.client.get(job_id)

    def jobs(self, org: str = "org_a") -> list[Job]:
        return [self.job(job_id) for job_id in self.job_ids(org)]

    def job_ids(self, org: str = "org_a") -> list[str]:
        redis: Any = self.redis
        members = redis.zrange(self.client.store.keys.jobs_by_org(org), 0, -1)
        return [m.decode() for m in members]

    def all_job_keys(self) -> list[bytes]:
        return list(self.redis.scan_iter(match="trunkline:job:*"))


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def make_harness() -> Iterator[HarnessFactory]:
    made: list[Harness] = []
    closers: list[Callable[[], None]] = []

    def make(outcome: str | None = "succeeded", *, server: fakeredis.FakeServer | None = None,
             settings: Settings | None = None, **api: Any) -> Harness:
        key = Vault.generate_key()
        redis = fakeredis.FakeRedis(server=server or fakeredis.FakeServer())
        settings = settings or Settings(secret_keys=(key,))
        broker = Celery("unit", broker="memory://", set_as_current=False)
        store = JobStore(redis)
        vault = Vault(settings.secret_keys)
        fake = FakeLiveKit()
        livekit, http = fake.client()
        saga = ProvisioningSaga(livekit, store, vault)
        closers.extend((saga.close, http.close))
        runner = JobRunner(store, saga, settings, rand=lambda: 0.0, lifecycle={
            JobKind.UPDATE: UpdateSaga(livekit, store, vault),
            JobKind.RELEASE: ReleaseSaga(livekit, store)})
        client_class = type("Client", (FakeWorkerClient,),
                            {"outcome": outcome, "submits": 0, "runner": runner})
        client = client_class(store, vault, broker, settings)
        clock = [1_700_000_000.0]
        api_settings = ApiSettings(**{"wait_seconds": 0.3, "rate_limit": 1000, **api})
        def ping() -> None:
            redis.ping()

        app = create_api(settings, api_settings, client=client, probes={"redis": ping},
                         clock=lambda: clock[0])
        harness = Harness(app, redis, client, ApiKeys(redis, iterations=1000), clock, fake)
        made.append(harness)
        return harness

    yield make
    for close in closers:
        close()
    for harness in made:
        harness.redis.close()


@pytest.fixture
def harness(make_harness: HarnessFactory) -> Harness:
    return make_harness()


def redis_bytes(db: Any) -> bytes:
    """Every key and string/zset/hash value in the fake Redis, for plaintext scans."""
    redis: Any = db  # redis-py's return types are unions of every RESP shape
    chunks: list[bytes] = []
    for key in redis.scan_iter():
        chunks.append(key)
        kind = redis.type(key)
        if kind == b"string":
            chunks.append(redis.get(key) or b"")
        elif kind == b"zset":
            chunks += [m for m, _ in redis.zrange(key, 0, -1, withscores=True)]
        elif kind == b"hash":
            for k, v in redis.hgetall(key).items():
                chunks += [k, v]
        elif kind == b"list":
            chunks += redis.lrange(key, 0, -1)
    return b"\n".join(chunks)
