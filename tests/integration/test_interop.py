"""Interop with the reference implementations and with the README's own instructions, on the
real stack (#15 item 5):

- CRM webhooks signed by the Standard Webhooks reference library (PyPI `standardwebhooks`)
  are accepted by the real API; tampered ones (body, timestamp, signature) are refused and
  make no job.
- The results stream is read exactly as the README tells downstream consumers to: jobs
  produced with `ProvisioningClient` ("Producing jobs from Python"), read by the Python
  reference consumer (`ops.results.ResultsConsumer`) and by `trunkline results tail`
  ("The reference results consumer"), with the guarantees the README states.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from ops.results import ResultEvent, ResultsConsumer
from producers.client import ProvisioningClient
from producers.keys import ApiKeys
from tests.integration.apiserver import ApiServer, job_keys, start_api
from tests.integration.conftest import (
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    everything_on_livekit,
    wait_for,
)
from worker.livekit import InboundTrunk, LiveKitSIP
from worker.records import JobState
from worker.store import RESULTS_STREAM

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

TRUNKLINE = Path(sys.executable).with_name("trunkline")
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
CRM_ORG = "org_crm_interop"


# --------------------------------------------------------------------------- webhooks


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    sources = {"crm": {"secret": WEBHOOK_SECRET, "org_id": CRM_ORG}}
    server = start_api(stack, tmp_path_factory.mktemp("api") / "api.log",
                       TRUNKLINE_WEBHOOK_SOURCES=json.dumps(sources))
    yield server
    server.stop()


def reference_headers(data: str, msg_id: str, *, secret: str = WEBHOOK_SECRET,
                      at: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers exactly as the reference library signs `data`."""
    timestamp = at or datetime.now(UTC)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, timestamp, data),
            "Content-Type": "application/json"}


def flip_one_signature_byte(header: str) -> str:
    version, _, encoded = header.partition(",")
    mac = bytearray(base64.b64decode(encoded))
    mac[0] ^= 0x01
    return f"{version},{base64.b64encode(bytes(mac)).decode()}"


def test_reference_signed_webhooks_are_accepted_and_tampered_ones_refused(
    api: ApiServer, redis_db: redis.Redis,
) -> None:
    """A signup signed by `standardwebhooks` (non-ASCII body, a rotated key listed first) is
    stored and enqueued as sent; the same delivery tampered in its body, its timestamp or
    its signature, signed with another key, or too old or too new, is a 401 and no job."""
    data = json.dumps({"type": "contact.created", "data": {
        **SEED_REQUEST, "name": "Bureau Zürich ☎", "number": "+15551230077"}},
        ensure_ascii=False)
    body = data.encode()
    now = datetime.now(UTC)
    signed = reference_headers(data, "msg_interop_1")
    later = int(signed["webhook-timestamp"]) + 1
    stale = now - timedelta(minutes=10)
    refused = {
        "body": (signed, body.replace("Zürich".encode(), b"Zurich")),
        "timestamp": ({**signed, "webhook-timestamp": str(later)}, body),
        "signature": ({**signed, "webhook-signature": flip_one_signature_byte(
            signed["webhook-signature"])}, body),
        "other key": (reference_headers(data, "msg_interop_1", secret=OTHER_SECRET), body),
        "too old": (reference_headers(data, "msg_interop_1", at=stale), body),
        "too new": (reference_headers(data, "msg_interop_1", at=now + timedelta(minutes=10)),
                    body),
    }
    with httpx.Client(base_url=api.url, timeout=30) as http:
        for what, (headers, content) in refused.items():
            answer = http.post("/webhooks/crm/crm", content=content, headers=headers)
            assert answer.status_code == 401, (what, answer.text)
            assert answer.json()["error"]["code"] in ("invalid_signature", "stale_webhook")
        assert job_keys(redis_db) == []

        # A sender rotating keys lists the old and the new signature (the spec's space-
        # separated list); the reference library signs each.
        rotated = reference_headers(data, "msg_interop_1", secret=OTHER_SECRET)
        both = {**signed, "webhook-signature": f"{rotated['webhook-signature']} "
                                               f"{signed['webhook-signature']}"}
        first = http.post("/webhooks/crm/crm", content=body, headers=both)
        assert first.status_code == 202, first.text
        job_id = first.json()["data"]["job_id"]
        again = http.post("/webhooks/crm/crm", content=body, headers=signed)
        assert again.status_code == 200, again.text
        assert (again.json()["data"]["job_id"], again.json()["data"]["duplicate"]) == (
            job_id, True)

        key = ApiKeys(redis_db).create(CRM_ORG)
        view = http.get(f"/api/jobs/{job_id}", headers={"X-API-KEY": key.api_key,
                                                         "X-API-SECRET": key.api_secret})
    assert view.status_code == 200, view.text
    job = view.json()["data"]
    assert (job["org_id"], job["source"]) == (CRM_ORG, "webhook:crm")
    assert (job["request"]["name"], job["request"]["number"]) == ("Bureau Zürich ☎",
                                                                  "+15551230077")
    assert len(job_keys(redis_db)) == 1


# --------------------------------------------------------------------------- results stream


def tail(stack: Stack, *args: str) -> list[dict[str, Any]]:
    """`trunkline results tail ARGS --json`, run as a downstream operator would; its lines."""
    done = subprocess.run([str(TRUNKLINE), "results", "tail", *args, "--json"],
                          env=stack.env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def pending_idle_ms(db: redis.Redis, group: str) -> list[int]:
    entries: Any = db.xpending_range(RESULTS_STREAM, group, min="-", max="+", count=100)
    return [int(entry["time_since_delivered"]) for entry in entries]


class Crash(Exception):
    """The downstream handler dies before it acknowledges."""


SUCCEEDED_PAYLOAD = {"type", "number", "inbound_trunk_id", "outbound_trunk_id",
                     "dispatch_rule_id", "phone_number_id", "attempts", "run", "created_at",
                     "finished_at"}
FAILED_PAYLOAD = {"type", "number", "error_code", "error_message", "retryable", "attempts",
                  "run", "created_at", "finished_at"}
FAILED_OPTIONAL = {"error_field", "leftovers"}


def test_results_stream_read_as_the_readme_tells_downstream_consumers(
    stack: Stack, worker_factory: WorkerFactory, livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """One group per service, one consumer name per process: an entry is acknowledged only
    after it was handled, so a crash redelivers it to the same consumer on restart, a dead
    consumer's entry is claimed by another after --claim-idle, a new group starts at the
    oldest entry (`--start-id '$'`: new ones only), and (job_id, payload.run) tells a
    redelivery from a replayed job's second outcome."""
    worker_factory()
    client = ProvisioningClient.from_env(stack.env())
    try:
        ok_number, taken_number, late_number = "+15551230081", "+15551230082", "+15551230083"
        foreign = livekit.create_inbound_trunk(InboundTrunk(name="not ours",
                                                            numbers=[taken_number]))
        ok_id = client.submit(org_id="org_42", request={**SEED_REQUEST, "number": ok_number},
                              idempotency_key="signup-interop-1")
        taken_id = client.submit(org_id="org_42",
                                 request={**SEED_REQUEST, "number": taken_number})
        ok_job, taken_job = client.wait(ok_id, timeout=60), client.wait(taken_id, timeout=60)
        assert ok_job.state is JobState.SUCCEEDED and ok_job.result is not None
        assert taken_job.state is JobState.FAILED and taken_job.error is not None

        # The billing service's process billing-1 dies while handling its first entry.
        handled: list[ResultEvent] = []

        def crash_once(event: ResultEvent) -> None:
            if not handled:
                handled.append(event)
                raise Crash
            handled.append(event)

        with pytest.raises(Crash):
            ResultsConsumer(redis_db, group="billing", consumer="billing-1").run(
                crash_once, idle_timeout=5)
        assert len(pending_idle_ms(redis_db, "billing")) == 2  # read, never acknowledged
        # Restarted under the same name, it re-reads its own unacknowledged entries first.
        restarted = ResultsConsumer(redis_db, group="billing", consumer="billing-1")
        assert restarted.run(handled.append, limit=2, idle_timeout=5) == 2
        assert [e.source for e in handled] == ["new", "pending", "pending"]
        assert handled[0].entry_id == handled[1].entry_id  # at least once: delivered twice
        assert pending_idle_ms(redis_db, "billing") == []

        by_job = {e.job_id: e for e in handled}
        assert set(by_job) == {ok_id, taken_id}
        created, failed = by_job[ok_id], by_job[taken_id]
        assert (created.org_id, created.status, failed.status) == ("org_42", "succeeded",
                                                                   "failed")
        assert set(created.payload) == SUCCEEDED_PAYLOAD
        assert created.payload["type"] == "created"
        assert {created.payload[name] for name in ("inbound_trunk_id", "outbound_trunk_id",
                                                   "dispatch_rule_id")} <= {
            object_id for ids in everything_on_livekit(livekit).values() for object_id in ids}
        assert created.payload["phone_number_id"] == ok_job.result.phone_number_id
        assert FAILED_PAYLOAD <= set(failed.payload) <= FAILED_PAYLOAD | FAILED_OPTIONAL
        assert (failed.payload["type"], failed.payload["error_code"], failed.payload["run"]) == (
            "created", "number_conflict", 1)

        # The failed number is freed and the dead letter replayed: the same job ends again,
        # in a new run. billing-2 receives that entry and dies before acknowledging it.
        livekit.delete_trunk(foreign.sip_trunk_id)
        client.replay(taken_id)
        replayed = client.wait(taken_id, timeout=60)
        assert replayed.state is JobState.SUCCEEDED
        dead = ResultsConsumer(redis_db, group="billing", consumer="billing-2")
        assert [e.job_id for e in dead.read_new(10, block_ms=5000)] == [taken_id]
        wait_for(lambda: min(pending_idle_ms(redis_db, "billing"), default=0) >= 1500, 10,
                 "billing-2's entry idle for 1.5 s")

        # The CLI, as a third process of the service, claims it (idle longer than 1 s).
        claimed = tail(stack, "--group", "billing", "--consumer", "billing-cli",
                       "--claim-idle", "1", "--count", "1", "--timeout", "10")
        assert [(e["job_id"], e["status"], e["source"], e["payload"]["run"])
                for e in claimed] == [(taken_id, "succeeded", "claimed", 2)]
        assert pending_idle_ms(redis_db, "billing") == []

        # Deduplicating on job_id alone would drop the replay's outcome; (job_id, run) keeps
        # each outcome once and folds the redelivery.
        outcomes = [(e.job_id, e.payload["run"], e.status) for e in handled] + [
            (e["job_id"], e["payload"]["run"], e["status"]) for e in claimed]
        assert len(outcomes) == 4
        assert sorted(set(outcomes)) == sorted({(ok_id, 1, "succeeded"),
                                                (taken_id, 1, "failed"),
                                                (taken_id, 2, "succeeded")})

        # A new group starts at the oldest entry still kept ...
        audit = tail(stack, "--group", "audit", "--count", "3", "--timeout", "10")
        runs = [(e["job_id"], e["payload"]["run"]) for e in audit]
        # The first two jobs ran side by side, so either may have ended first.
        assert sorted(runs[:2]) == sorted([(ok_id, 1), (taken_id, 1)])
        assert runs[2:] == [(taken_id, 2)]
        # ... and with --start-id '$' at the entries added after it was created.
        assert tail(stack, "--group", "latecomer", "--start-id", "$", "--timeout", "1") == []
        late_id = client.submit(org_id="org_42",
                                request={**SEED_REQUEST, "number": late_number})
        assert client.wait(late_id, timeout=60).state is JobState.SUCCEEDED
        late = tail(stack, "--group", "latecomer", "--count", "1", "--timeout", "10")
        assert [(e["job_id"], e["source"]) for e in late] == [(late_id, "new")]
    finally:
        client.close()
