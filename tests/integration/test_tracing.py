"""One trace per job on the real stack: a real API and a real worker export OTLP/HTTP to a
small receiver in this test (protobuf decoded with opentelemetry-proto), configured only by
the SDK's OTEL_* variables, so the production configuration path is what is tested.

Each job's spans must form one trace, in order: the request (or the client's submit) ->
enqueue -> the worker's run -> every LiveKit call -> the event; the job id and organisation
ride on our spans, and no secret appears in any span of any process.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from producers import ProvisioningClient
from producers.keys import ApiKeys
from producers.webhooks import sign
from tests.integration.apiserver import ApiServer, job_keys, start_api
from tests.integration.conftest import (
    CANARY_PASSWORD,
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    wait_for,
)
from tests.support.otel import in_memory_spans
from worker import tracing
from worker.store import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

CREATE = "/api/sio/createSipTrunkDispatch"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
LIVEKIT_CREATES = {"livekit.SIP/CreateSIPInboundTrunk", "livekit.SIP/CreateSIPOutboundTrunk",
                   "livekit.SIP/CreateSIPDispatchRule"}
SPAN_WAIT_SECONDS = 60


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    attributes: dict[str, Any]
    event_attributes: list[dict[str, Any]]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    return getattr(value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint on loopback that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver.keep(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def keep(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        service=str(resource.get("service.name")), name=span.name,
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        start_ns=span.start_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        event_attributes=[{a.key: _value(a.value) for a in event.attributes}
                                          for event in span.events]))
        with self._lock:
            self.requests += 1
            self.spans.extend(received)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return sorted((s for s in self.spans if s.trace_id == trace_id),
                          key=lambda s: s.start_ns)

    def of_job(self, job_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.attributes.get(tracing.JOB_ID) == job_id]

    def everything(self) -> str:
        """Every span's name, attributes and event attributes, keys and values, as text."""
        with self._lock:
            return "\n".join(
                f"{span.name} {span.attributes!r} {span.event_attributes!r}"
                for span in self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    """Tracing as an operator turns it on, asking for every header to be recorded too (the
    secret ones must come out redacted); batches leave every 100 ms."""
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": ".*",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST": ".*"}


@pytest.fixture(scope="module")
def api(stack: Stack, receiver: OtlpReceiver,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    sources = {"crm": {"secret": WEBHOOK_SECRET, "org_id": "org_crm", "default_region": "US"}}
    server = start_api(stack, tmp_path_factory.mktemp("api") / "api.log",
                       TRUNKLINE_WEBHOOK_SOURCES=json.dumps(sources), **otel_env(receiver))
    yield server
    server.stop()


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=60) as client:
        yield client


def wait_for_job_trace(receiver: OtlpReceiver, job_id: str, server_span: str | None,
                       ) -> list[ReceivedSpan]:
    """The spans of the job's trace, once its event, its LiveKit calls and (from the API)
    the request have all arrived."""
    found: list[ReceivedSpan] = []

    def complete() -> bool:
        ours = receiver.of_job(job_id)
        if not ours:
            return False
        found[:] = receiver.of_trace(ours[0].trace_id)
        names = {span.name for span in found}
        wanted = {tracing.RUN, tracing.EVENT, *LIVEKIT_CREATES}
        if server_span is not None:
            wanted |= {server_span, tracing.ENQUEUE}
        return wanted <= names

    wait_for(complete, SPAN_WAIT_SECONDS, f"the spans of {job_id} at the OTLP receiver")
    return found


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    named = [span for span in spans if span.name == name]
    assert len(named) == 1, [span.name for span in spans]
    return named[0]


def assert_one_trace_in_order(spans: list[ReceivedSpan], job_id: str, org_id: str,
                              receiver: OtlpReceiver, parent_of_enqueue: str | None) -> None:
    """enqueue -> run -> the three LiveKit creates -> event, in one trace, each named span
    naming the job and its organisation; the worker's spans come from the worker."""
    assert len({span.trace_id for span in receiver.of_job(job_id)}) == 1
    run, event = only(spans, tracing.RUN), only(spans, tracing.EVENT)
    calls = [span for span in spans if span.name in LIVEKIT_CREATES]
    assert sorted(span.name for span in calls) == sorted(LIVEKIT_CREATES)
    assert {run.service, event.service, *(call.service for call in calls)} == {
        "trunkline-worker"}
    assert {call.parent_span_id for call in calls} == {run.span_id}
    assert event.parent_span_id == run.span_id
    assert max(call.start_ns for call in calls) < event.start_ns
    assert run.start_ns < min(call.start_ns for call in calls)
    if parent_of_enqueue is not None:
        enqueue = only(spans, tracing.ENQUEUE)
        assert enqueue.parent_span_id == parent_of_enqueue
        assert run.parent_span_id == enqueue.span_id
        assert enqueue.start_ns < run.start_ns
    for span in (run, event):
        assert span.attributes[tracing.JOB_ID] == job_id
        assert span.attributes[tracing.ORG_ID] == org_id
        assert span.attributes[tracing.NUMBER] == SEED_REQUEST["number"]
    assert run.attributes[tracing.OUTCOME] == "finished"
    assert event.attributes[tracing.STATE] == "succeeded"


def assert_no_secret(receiver: OtlpReceiver, *secrets_: str) -> None:
    text = receiver.everything()
    assert "[REDACTED]" in text  # the headers were recorded, and the secret ones redacted
    for secret in (CANARY_PASSWORD, "Bearer ", *secrets_):
        assert secret not in text


def stored_ciphertext(store: JobStore, job_id: str) -> str:
    job = store.get(job_id)
    assert job is not None and job.trace_context is not None
    return job.create_request.auth_password_ciphertext


def test_an_api_request_is_one_trace_through_the_queue_to_livekit_and_the_event(
    http: httpx.Client, receiver: OtlpReceiver, stack: Stack, worker_factory: WorkerFactory,
    redis_db: redis.Redis,
) -> None:
    """The seed's request, answered once the job ends: the API's server span is the root of
    the job's trace, and the worker's spans continue it from the job record."""
    worker_factory(**otel_env(receiver))
    key = ApiKeys(redis_db).create("org_trace")
    answer = http.post(CREATE, json={**SEED_REQUEST, "authPassword": CANARY_PASSWORD},
                       headers={"X-API-KEY": key.api_key, "X-API-SECRET": key.api_secret})
    assert answer.status_code == 200, answer.text
    [job_key] = job_keys(redis_db)
    job_id = job_key.decode().rsplit(":", 1)[1]

    spans = wait_for_job_trace(receiver, job_id, f"POST {CREATE}")
    request = only(spans, f"POST {CREATE}")
    assert (request.service, request.parent_span_id) == ("trunkline-api", "")
    assert spans[0] == request
    enqueue = only(spans, tracing.ENQUEUE)
    assert enqueue.service == "trunkline-api"
    assert enqueue.attributes[tracing.ORG_ID] == "org_trace"
    assert_one_trace_in_order(spans, job_id, "org_trace", receiver, request.span_id)
    view = http.get(f"/api/jobs/{job_id}", headers={"X-API-KEY": key.api_key,
                                                    "X-API-SECRET": key.api_secret})
    traceparent = view.json()["data"]["trace_context"]["traceparent"]
    assert traceparent.startswith(f"00-{request.trace_id}-{enqueue.span_id}-")
    assert_no_secret(receiver, key.api_secret,
                     stored_ciphertext(JobStore(redis_db), job_id))


def test_a_crm_webhook_is_one_trace_through_the_queue_to_livekit_and_the_event(
    http: httpx.Client, receiver: OtlpReceiver, worker_factory: WorkerFactory,
    redis_db: redis.Redis,
) -> None:
    """A signed CRM signup: the webhook's server span roots the job's trace; its signature
    header is recorded only redacted."""
    worker_factory(**otel_env(receiver))
    body = json.dumps({"type": "signup.created", "data": {
        **SEED_REQUEST, "authPassword": CANARY_PASSWORD}}).encode()
    stamp = int(time.time())
    signature = sign(WEBHOOK_SECRET, "msg_trace_1", stamp, body)
    answer = http.post("/webhooks/crm/crm", content=body, headers={
        "webhook-id": "msg_trace_1", "webhook-timestamp": str(stamp),
        "webhook-signature": signature, "Content-Type": "application/json"})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["data"]["job_id"]

    spans = wait_for_job_trace(receiver, job_id, "POST /webhooks/crm/{source}")
    request = only(spans, "POST /webhooks/crm/{source}")
    assert request.parent_span_id == ""
    assert only(spans, tracing.ENQUEUE).attributes[tracing.SOURCE] == "webhook:crm"
    assert_one_trace_in_order(spans, job_id, "org_crm", receiver, request.span_id)
    assert_no_secret(receiver, signature.split(",", 1)[1], WEBHOOK_SECRET,
                     stored_ciphertext(JobStore(redis_db), job_id))


@pytest.fixture
def in_process_spans() -> Iterator[InMemorySpanExporter]:
    """This process as an application that installed its own tracer provider (in memory)."""
    with in_memory_spans() as exporter:
        yield exporter


def test_a_python_client_submit_is_continued_by_the_worker(
    client: ProvisioningClient, receiver: OtlpReceiver, worker_factory: WorkerFactory,
    in_process_spans: InMemorySpanExporter, tmp_path: Path,
) -> None:
    """The client in an application with its own provider: its enqueue span (in memory here)
    is the parent of the worker's run (at the receiver), through the job record alone."""
    worker_factory(**otel_env(receiver))
    job_id = client.submit(org_id="org_py", request={**SEED_REQUEST,
                                                     "authPassword": CANARY_PASSWORD})
    [enqueue] = in_process_spans.get_finished_spans()
    assert enqueue.name == tracing.ENQUEUE and enqueue.context is not None
    assert (enqueue.attributes or {})[tracing.JOB_ID] == job_id
    assert client.wait(job_id, timeout=SPAN_WAIT_SECONDS).state.value == "succeeded"

    spans = wait_for_job_trace(receiver, job_id, None)
    assert {span.trace_id for span in spans} == {f"{enqueue.context.trace_id:032x}"}
    assert only(spans, tracing.RUN).parent_span_id == f"{enqueue.context.span_id:016x}"
    assert_one_trace_in_order(spans, job_id, "org_py", receiver, None)
    assert_no_secret(receiver, stored_ciphertext(client.store, job_id))


def test_a_stopping_worker_exports_the_spans_it_still_holds(
    client: ProvisioningClient, receiver: OtlpReceiver, worker_factory: WorkerFactory,
) -> None:
    """A prefork child leaves with os._exit, past the SDK's atexit hook: the worker's
    process-shutdown hook exports what its batch still holds."""
    worker = worker_factory(**{**otel_env(receiver), "OTEL_BSP_SCHEDULE_DELAY": "600000"})
    job_id = client.submit(org_id="org_stop", request=SEED_REQUEST)
    assert client.wait(job_id, timeout=SPAN_WAIT_SECONDS).state.value == "succeeded"
    assert receiver.of_job(job_id) == []  # held in the batch: the next export is 10 min away
    worker.stop()
    spans = wait_for_job_trace(receiver, job_id, None)
    assert_one_trace_in_order(spans, job_id, "org_stop", receiver, None)
