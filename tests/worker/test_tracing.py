"""Unit tests for worker.tracing: off unless configured, and one trace per job.

No sockets: fakeredis, the fake LiveKit behind httpx.MockTransport, and the SDK's in-memory
exporter installed as the process's tracer provider for the test (and removed after it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from pydantic import ValidationError

from producers.client import ProvisioningClient
from tests.support.otel import forget_global_provider, in_memory_spans
from tests.worker.fake_livekit import API_SECRET, NUMBER, ORG, PASSWORD, Fault, Harness
from worker import tracing
from worker.app import create_app
from worker.records import Job, TraceContext

OTEL_VARIABLES = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                  "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME",
                  "OTEL_RESOURCE_ATTRIBUTES", tracing.SANITIZE_ENV,
                  "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
                  "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        # Set first, so that whatever the test (or the code) writes is undone afterwards.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter behind the process's tracer provider, for this test only."""
    with in_memory_spans() as exporter:
        yield exporter


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


@pytest.fixture
def traced_livekit(h: Harness, spans: InMemorySpanExporter,
                   monkeypatch: pytest.MonkeyPatch) -> Harness:
    """The harness with its LiveKit client traced, every request header asked for."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    tracing.instrument_httpx(h.livekit._http)
    return h


def client_for(h: Harness) -> ProvisioningClient:
    return ProvisioningClient(h.store, h.vault, create_app(h.settings), h.settings)


def request() -> dict[str, Any]:
    return {"name": "Acme main line", "number": NUMBER, "outboundPstn": "sip.provider.example",
            "authUserName": "acme-user", "authPassword": PASSWORD}


def by_name(finished: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def one(finished: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(finished, name)
    assert len(found) == 1, [span.name for span in finished]
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def every_attribute_value(finished: Sequence[ReadableSpan]) -> str:
    """Every attribute of every span and span event, and every span name, as one text."""
    values: list[str] = []
    for span in finished:
        values.append(span.name)
        mappings: list[Mapping[str, Any]] = [span.attributes or {}]
        mappings += [event.attributes or {} for event in span.events]
        for attributes in mappings:
            for key, value in attributes.items():
                values.append(f"{key}={value!r}")
    return "\n".join(values)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("env", "wanted"), [
    ({}, False),
    ({"OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
     False),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
])
def test_tracing_is_off_unless_the_sdk_variables_ask_for_it(env: dict[str, str],
                                                            wanted: bool) -> None:
    """Only an exporter or an OTLP endpoint turns tracing on; OTEL_SDK_DISABLED wins."""
    assert tracing.tracing_wanted(env) is wanted


def test_unconfigured_process_installs_nothing_and_stores_no_context(h: Harness) -> None:
    """With no OTEL_* variable: no provider, no span objects, no context in the record."""
    assert tracing.configure_tracing(tracing.SERVICE_WORKER) is False
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    job = h.submit()
    assert tracing.enqueue_span(job) is tracing.run_span(job, 0) is tracing.event_span(job)
    with tracing.enqueue_span(job) as span:
        assert span is None
        assert tracing.trace_context_of(span) is None
    stored = h.store.get(client_for(h).submit(org_id=ORG, request=request()))
    assert stored is not None
    assert stored.trace_context is None
    assert h.runner().run(stored.job_id).detail == "succeeded"


@pytest.mark.parametrize(("env", "exporter_type"), [
    ({"OTEL_TRACES_EXPORTER": "otlp"}, OTLPSpanExporter),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     OTLPSpanExporter),
    ({"OTEL_TRACES_EXPORTER": "otlp_proto_http"}, OTLPSpanExporter),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, OTLPSpanExporter),
    ({"OTEL_TRACES_EXPORTER": "console"}, ConsoleSpanExporter),
])
def test_exporters_are_found_by_the_names_the_sdk_uses(
        env: dict[str, str], exporter_type: type[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`otlp` means OTLP over HTTP/protobuf unless the protocol variable says otherwise."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporters = tracing.span_exporters_from_env()
    assert [type(exporter) for exporter in exporters] == [exporter_type]
    for exporter in exporters:
        exporter.shutdown()


@pytest.mark.parametrize(("env", "named"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin_json"}, "'zipkin_json'"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "'http/json'"),
])
def test_an_exporter_nobody_installed_leaves_tracing_off_with_an_error(
        env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A misconfiguration names what it asked for, and provisioning goes on untraced."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(tracing.TracingConfigError, match=named):
        tracing.span_exporters_from_env()
    with caplog.at_level(logging.ERROR, logger="worker.tracing"):
        assert tracing.configure_tracing(tracing.SERVICE_WORKER) is False
    assert named in caplog.text
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_service_name_defaults_per_process_and_yields_to_otel_service_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = tracing.provider_from_env(tracing.SERVICE_API)
    assert provider.resource.attributes["service.name"] == "trunkline-api"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "provisioning-eu")
    provider = tracing.provider_from_env(tracing.SERVICE_API)
    assert provider.resource.attributes["service.name"] == "provisioning-eu"
    provider.shutdown()


def test_configure_tracing_installs_the_provider_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first call installs the provider the variables describe; later calls keep it."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    forget_global_provider()
    try:
        assert tracing.configure_tracing(tracing.SERVICE_WORKER) is True
        installed = trace.get_tracer_provider()
        assert isinstance(installed, TracerProvider)
        assert installed.resource.attributes["service.name"] == "trunkline-worker"
        assert tracing.configure_tracing(tracing.SERVICE_API) is True
        assert trace.get_tracer_provider() is installed
    finally:
        tracing.uninstrument_httpx()
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):
            provider.shutdown()
        forget_global_provider()


def test_secret_headers_are_always_redacted_on_top_of_the_operators_list(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracing.SANITIZE_ENV, "x-session, Authorization")
    fields = tracing.sanitized_headers()
    assert fields[:2] == ["x-session", "Authorization"]
    assert {"x-api-secret", "x-api-key", "webhook-signature", "cookie"} <= set(fields)


# --------------------------------------------------------------------------- the record


@pytest.mark.parametrize("tracestate", [
    None, "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7, congo=t61", "tenant@vendor=x",
    " a=1 ,, b=2 "])
def test_a_w3c_trace_context_is_kept_in_the_job_record(h: Harness, tracestate: str | None) -> None:
    """The context goes through the store's write-and-read-back check unchanged."""
    job = h.submit()
    job.trace_context = TraceContext(traceparent=TRACEPARENT, tracestate=tracestate)
    h.store.save(job, h.lock(job))
    assert h.reload(job).trace_context == TraceContext(traceparent=TRACEPARENT,
                                                       tracestate=tracestate)


def test_a_record_from_before_tracing_loads_without_a_context(h: Harness) -> None:
    job = h.submit()
    raw = job.model_dump(mode="json")
    del raw["trace_context"]
    assert Job.model_validate(raw).trace_context is None


@pytest.mark.parametrize(("field", "value"), [
    ("traceparent", ""),
    ("traceparent", TRACEPARENT.upper()),
    ("traceparent", "01" + TRACEPARENT[2:]),
    ("traceparent", "ff" + TRACEPARENT[2:]),
    ("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01"),
    ("traceparent", TRACEPARENT + "-"),
    ("traceparent", TRACEPARENT[:-1]),
    ("traceparent", TRACEPARENT + "\n"),
    ("tracestate", ""),
    ("tracestate", "Upper=1"),
    ("tracestate", "novalue"),
    ("tracestate", "k=v\r\nx-injected: 1"),
    ("tracestate", ",".join(f"k{n}=v" for n in range(33))),
    ("tracestate", "k=" + "v" * 600),
])
def test_a_malformed_trace_context_is_refused(field: str, value: str) -> None:
    fields = {"traceparent": TRACEPARENT, field: value}
    with pytest.raises(ValidationError, match=field):
        TraceContext(**fields)


# --------------------------------------------------------------------------- one trace per job


def test_one_trace_from_the_request_through_the_queue_to_every_livekit_call_and_the_event(
        traced_livekit: Harness, spans: InMemorySpanExporter) -> None:
    """request -> enqueue -> run -> the three LiveKit creates -> event, in one trace, each
    naming the job, its organisation and number; no secret in any span."""
    h = traced_livekit
    api_span = trace.get_tracer("test").start_as_current_span("POST /api/sio/create",
                                                              kind=SpanKind.SERVER)
    with api_span:
        job_id = client_for(h).submit(org_id=ORG, request=request())
    stored = h.store.get(job_id)
    assert stored is not None and stored.trace_context is not None
    assert h.runner().run(job_id).detail == "succeeded"

    finished = spans.get_finished_spans()
    root, enqueue = one(finished, "POST /api/sio/create"), one(finished, tracing.ENQUEUE)
    run, event = one(finished, tracing.RUN), one(finished, tracing.EVENT)
    calls = [span for span in finished if span.name.startswith("livekit.SIP/")]
    assert sorted(span.name for span in calls) == [
        "livekit.SIP/CreateSIPDispatchRule", "livekit.SIP/CreateSIPInboundTrunk",
        "livekit.SIP/CreateSIPOutboundTrunk"]
    assert {trace_id(span) for span in finished} == {trace_id(root)}
    assert stored.trace_context.traceparent.startswith(
        f"00-{trace_id(root):032x}-{span_id(enqueue):016x}-")

    assert parent_id(enqueue) == span_id(root)
    assert parent_id(run) == span_id(enqueue)
    assert {parent_id(span) for span in [*calls, event]} == {span_id(run)}
    # Two trunks are created concurrently; the rule needs the inbound trunk's id.
    assert (root.start_time or 0) < (enqueue.start_time or 0) < (run.start_time or 0)
    assert max(span.start_time or 0 for span in calls) < (event.start_time or 0)
    rule = one(calls, "livekit.SIP/CreateSIPDispatchRule")
    assert all((span.end_time or 0) <= (rule.start_time or 0)
               for span in calls if span is not rule)

    assert (enqueue.kind, run.kind, event.kind) == (
        SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.PRODUCER)
    for span in (enqueue, run, event):
        attributes = span.attributes or {}
        assert attributes[tracing.JOB_ID] == job_id
        assert attributes[tracing.ORG_ID] == ORG
        assert attributes[tracing.NUMBER] == NUMBER
    assert (run.attributes or {})[tracing.ATTEMPT] == 1
    assert (run.attributes or {})[tracing.OUTCOME] == "finished"
    assert (event.attributes or {})[tracing.STATE] == "succeeded"
    assert (event.attributes or {})[tracing.PUBLISHED] is True
    assert (rule.attributes or {})["rpc.method"] == "CreateSIPDispatchRule"

    text = every_attribute_value(finished)
    assert "http.request.header.authorization=('[REDACTED]',)" in text  # headers were asked for
    for secret in (PASSWORD, API_SECRET, "Bearer", stored.create_request.auth_password_ciphertext,
                   stored.request_fingerprint):
        assert secret not in text


def test_retries_and_their_livekit_calls_stay_in_the_jobs_trace(
        traced_livekit: Harness, spans: InMemorySpanExporter) -> None:
    """A delivery that fails transiently and the one that succeeds are two run spans under
    the same enqueue span; the failed one is an error naming its code."""
    h = traced_livekit
    h.fake.inject("CreateSIPOutboundTrunk", Fault.http(503))
    job_id = client_for(h).submit(org_id=ORG, request=request())
    runner = h.runner()
    assert runner.run(job_id).kind == "retry"
    assert runner.run(job_id).detail == "succeeded"

    finished = spans.get_finished_spans()
    enqueue = one(finished, tracing.ENQUEUE)
    first, second = sorted(by_name(finished, tracing.RUN), key=lambda s: s.start_time or 0)
    assert {trace_id(span) for span in finished} == {trace_id(enqueue)}
    assert parent_id(first) == parent_id(second) == span_id(enqueue)
    assert first.status.status_code is StatusCode.ERROR
    assert (first.attributes or {})[tracing.ERROR_CODE] == "livekit_server_error"
    assert (first.attributes or {})[tracing.OUTCOME] == "retry"
    assert second.status.status_code is StatusCode.UNSET
    assert ((first.attributes or {})[tracing.ATTEMPT],
            (second.attributes or {})[tracing.ATTEMPT]) == (1, 2)
    outbound = by_name(finished, "livekit.SIP/CreateSIPOutboundTrunk")
    assert sorted(parent_id(span) or 0 for span in outbound) == sorted(
        [span_id(first), span_id(second)])
    assert parent_id(one(finished, tracing.EVENT)) == span_id(second)


def test_a_failed_job_ends_in_an_error_span_and_a_failed_event(
        h: Harness, spans: InMemorySpanExporter) -> None:
    h.fake.inject("CreateSIPOutboundTrunk", Fault.http(400))
    job_id = client_for(h).submit(org_id=ORG, request=request())
    assert h.runner().run(job_id).detail == "failed"
    finished = spans.get_finished_spans()
    run, event = one(finished, tracing.RUN), one(finished, tracing.EVENT)
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "livekit_rejected"
    assert (event.attributes or {})[tracing.STATE] == "failed"
    assert parent_id(event) == span_id(run)


def test_a_job_stored_without_a_context_gets_a_trace_of_its_own(
        h: Harness, spans: InMemorySpanExporter) -> None:
    """A job submitted while tracing was off (or by an older producer): the run is a root."""
    job = h.submit()
    assert job.trace_context is None
    assert h.runner().run(job.job_id).detail == "succeeded"
    run = one(spans.get_finished_spans(), tracing.RUN)
    assert run.parent is None
    assert (run.attributes or {})[tracing.JOB_ID] == job.job_id


def test_an_idempotent_replay_names_the_first_job_and_keeps_its_context(
        h: Harness, spans: InMemorySpanExporter) -> None:
    client = client_for(h)
    first = client.submit(org_id=ORG, request=request(), idempotency_key="signup-1")
    stored = h.store.get(first)
    assert stored is not None
    again = client.submit(org_id=ORG, request=request(), idempotency_key="signup-1")
    assert again == first
    replay = by_name(spans.get_finished_spans(), tracing.ENQUEUE)[1]
    assert (replay.attributes or {})[tracing.JOB_ID] == first
    assert (replay.attributes or {})[tracing.REPLAYED] is True
    assert h.reload(stored).trace_context == stored.trace_context


def test_the_api_traces_requests_without_their_credentials(
        spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    """instrument_api: a server span per request but the probes, no httpx spans (the API's
    LiveKit calls are probes too); asked for every header, the API secret and key are
    redacted."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    app = FastAPI()

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, str]:
        return {"job_id": job_id}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    try:
        tracing.instrument_api(app)
        assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry  # /readyz's calls
        with TestClient(app) as http:
            assert http.get("/healthz").status_code == 200
            answer = http.get("/api/jobs/job_1", headers={"X-API-KEY": "sk_key-canary",
                                                          "X-API-SECRET": "s3cr3t_canary"})
        assert answer.status_code == 200
    finally:
        tracing.uninstrument_httpx()
    finished = spans.get_finished_spans()
    server = one(finished, "GET /api/jobs/{job_id}")
    assert server.kind is SpanKind.SERVER
    # Neither the probe nor the ASGI send/receive sub-spans.
    assert [span.name for span in finished] == ["GET /api/jobs/{job_id}"]
    text = every_attribute_value(finished)
    assert "http.request.header.x_api_secret=('[REDACTED]',)" in text
    assert "canary" not in text


def test_a_tracestate_the_record_will_not_hold_is_left_out_not_fatal() -> None:
    """A caller's valid but long tracestate (OpenTelemetry allows 32 members of 256
    characters; W3C caps the header at 512) must not fail the submit: the trace goes on."""
    long_state = TraceState([(f"vendor{i}", "v" * 200) for i in range(3)])
    span = NonRecordingSpan(SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id=0x00F067AA0BA902B7,
        is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=long_state))
    context = tracing.trace_context_of(span)
    assert context == TraceContext(traceparent=TRACEPARENT)
