"""OpenTelemetry: one trace per job, from the request through the queue to every LiveKit call.

Off unless configured, with the SDK's own variables: tracing is on when `OTEL_TRACES_EXPORTER`
names an exporter other than `none`, or an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and `OTEL_SDK_DISABLED`
is not `true`. Sampling, resource, batching and the exporter's own settings are read by the SDK
itself (`OTEL_TRACES_SAMPLER`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`,
`OTEL_EXPORTER_OTLP_*`).

The worker and the API are applications: `configure_tracing()` installs the global tracer
provider those variables describe (unless one is installed already, e.g. by
`opentelemetry-instrument`). The Python client is a library: it only makes spans with whatever
provider the application that embeds it installed. With no provider installed, every helper
here returns at once: no span objects, no context in the job record.

The broker message carries only the job id, so the W3C context (`traceparent`, `tracestate`)
travels in the job record (`Job.trace_context`); every delivery's run span continues it, so
retries, sweeper re-sends and compensation land in the submit's trace.

Instrumentation, and what it may record:
* httpx, in the worker (LiveKit's Twirp calls, one span each, named after the method): URL,
  method, status. No bodies (they carry SIP passwords); headers only if an operator opts in
  with `OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST`, and `SECRET_HEADERS` are
  then always redacted (the LiveKit JWT is an `Authorization` header).
* FastAPI (`instrument_api`): route, method, status, client address; no bodies; the same
  redaction for `OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST` (API secrets,
  webhook signatures). The ASGI `receive`/`send` sub-spans are left out: two per request, and
  they say nothing about a job; so are the probes and `/metrics` (`PROBE_URLS`).
* Celery: not used. Our producer writes the message in a Redis script, so its headers carry no
  context, and the instrumentation's per-delivery span starts before the job record (which
  does carry it) is read: every delivery would be a trace of its own. The run span here is
  the delivery's span instead.
* Redis: not used. redis-py's instrumentation is process-wide, so kombu's polling of the
  queue (a command every second per worker) and the sweeper's scans would each be a trace of
  their own; it records command arguments, i.e. whole job records with the password's
  ciphertext, and API key hashes; and it would cost a span per command on the hot path. The
  spans that matter (enqueue: record and message in one script; event: the terminal write and
  the event in one script) are ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import ValidationError

from worker.records import Job, JobState, TraceContext

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

SERVICE_WORKER: Final = "trunkline-worker"
SERVICE_API: Final = "trunkline-api"
INSTRUMENTATION_NAME: Final = "trunkline"

# Span names: request (FastAPI's) -> ENQUEUE -> RUN (one per delivery) -> LiveKit calls -> EVENT.
ENQUEUE: Final = "trunkline.enqueue"
RUN: Final = "trunkline.run"
EVENT: Final = "trunkline.event"

# Attribute names. The phone number is on every span: it is not a secret, the logs and the
# results stream carry it already, and "why did this number fail?" starts from it.
JOB_ID: Final = "trunkline.job_id"
ORG_ID: Final = "trunkline.org_id"
NUMBER: Final = "trunkline.number"
KIND: Final = "trunkline.job_kind"
SOURCE: Final = "trunkline.source"
ATTEMPT: Final = "trunkline.attempt"
RUN_NUMBER: Final = "trunkline.run_number"
OUTCOME: Final = "trunkline.outcome"
OUTCOME_DETAIL: Final = "trunkline.outcome_detail"
ERROR_CODE: Final = "trunkline.error_code"
STATE: Final = "trunkline.state"
EVENT_ID: Final = "trunkline.event_id"
PUBLISHED: Final = "trunkline.published"
REPLAYED: Final = "trunkline.idempotent_replay"

# Redacted whenever an operator asks the HTTP instrumentations to record headers (patterns,
# case-insensitive, as the instrumentations match them).
SECRET_HEADERS: Final = ("authorization", "proxy-authorization", "cookie", "set-cookie",
                         "x-api-key", "x-api-secret", "webhook-signature")
SANITIZE_ENV: Final = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"

# Probes and scrapes come every few seconds and belong to no job: untraced unless the operator
# sets OTEL_PYTHON_FASTAPI_EXCLUDED_URLS or OTEL_PYTHON_EXCLUDED_URLS (regexes, comma-separated).
PROBE_URLS: Final = "/healthz$,/readyz$,/metrics$"
LIVEKIT_SIP_PATH: Final = "/twirp/livekit.SIP/"
_EXPORTER_GROUP: Final = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL: Final = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}

_W3C = TraceContextTextMapPropagator()
_NO_SPAN: Final[AbstractContextManager[None]] = contextlib.nullcontext()
_lock = threading.Lock()
# The provider is held, not its id: a provider that is gone could pass its id to the next.
_tracer_of: dict[str, tuple[trace.TracerProvider, trace.Tracer]] = {}


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this installation cannot do; says which."""


def tracing_wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables turn tracing on (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if names:
        return names != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def configure_tracing(service_name: str, *, livekit_calls: bool = True) -> bool:
    """Install the tracer provider the OTEL_* variables describe, once per process (a no-op
    afterwards), and with `livekit_calls` trace httpx requests. Returns whether spans are
    recorded.

    A configuration this installation cannot honour (an exporter nobody installed) is logged
    and leaves tracing off: traces must never stop a job.
    """
    with _lock:
        if _installed_provider() is None:
            if not tracing_wanted():
                return False
            try:
                trace.set_tracer_provider(provider_from_env(service_name))
            except TracingConfigError as exc:
                log.error("tracing stays off: %s", exc)
                return False
        if livekit_calls:
            instrument_httpx()
        return True


def provider_from_env(service_name: str) -> TracerProvider:
    """An SDK tracer provider as the OTEL_* variables describe it, exporting in batches.

    `service_name` is used when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names
    the service.
    """
    # Loaded only when tracing is on: the SDK and the instrumentations take ~0.5 s to import.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    exporters = span_exporters_from_env()
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def span_exporters_from_env(env: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (default `otlp`), found by their entry points.

    `otlp` follows OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL with
    `http/protobuf` as the default (the OTLP specification's default, and the exporter
    Trunkline installs; the gRPC one needs `opentelemetry-exporter-otlp-proto-grpc`).
    """
    env = os.environ if env is None else env
    exporters: list[SpanExporter] = []
    for name in _exporter_names(env):
        found = entry_points(group=_EXPORTER_GROUP, name=name)
        if not found:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER asks for {name!r}, which no installed package provides")
        exporter_class = next(iter(found)).load()
        exporters.append(exporter_class())
    return exporters


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    names = []
    for raw in env.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = raw.strip().lower()
        if name in ("", "none"):
            continue
        if name == "otlp":
            protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
            if protocol not in _OTLP_BY_PROTOCOL:
                raise TracingConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL is {protocol!r}; use http/protobuf or grpc")
            name = _OTLP_BY_PROTOCOL[protocol]
        names.append(name)
    return names


def _installed_provider() -> trace.TracerProvider | None:
    """The application's tracer provider, or None while nobody installed one."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def _tracer() -> trace.Tracer | None:
    provider = _installed_provider()
    if provider is None:
        return None
    cached = _tracer_of.get("current")
    if cached is None or cached[0] is not provider:  # a test may install another provider
        cached = _tracer_of["current"] = (provider, provider.get_tracer(INSTRUMENTATION_NAME))
    return cached[1]


def flush(timeout_seconds: float = 5.0) -> None:
    """Export what is buffered (a prefork child leaves with os._exit: no atexit hook runs)."""
    provider = _installed_provider()
    force_flush = getattr(provider, "force_flush", None)
    if callable(force_flush):
        force_flush(int(timeout_seconds * 1000))


# --- instrumentation -------------------------------------------------------------------


def sanitized_headers(env: Mapping[str, str] | None = None) -> list[str]:
    """The operator's OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS plus ours."""
    env = os.environ if env is None else env
    theirs = [name.strip() for name in env.get(SANITIZE_ENV, "").split(",") if name.strip()]
    return theirs + [name for name in SECRET_HEADERS if name not in theirs]


def instrument_httpx(client: httpx.Client | None = None) -> None:
    """Trace httpx requests (LiveKit's calls): every client of the process, once, or only
    `client` (one built with a transport of its own, which the process-wide patch misses)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

    # httpx's instrumentation reads its redaction list from the environment only.
    os.environ[SANITIZE_ENV] = ",".join(sanitized_headers())
    if client is not None:
        HTTPXClientInstrumentor.instrument_client(client, request_hook=name_livekit_call)
        return
    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(request_hook=name_livekit_call)


def uninstrument_httpx() -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

    HTTPXClientInstrumentor().uninstrument()


def name_livekit_call(span: trace.Span, request: Any) -> None:
    """Name a LiveKit Twirp call's span after its method (`livekit.SIP/CreateSIPInboundTrunk`)
    instead of the bare `POST` every call would share."""
    url = request.url
    path = url.path if hasattr(url, "path") else bytes(url[3]).decode("ascii", "replace")
    if not path.startswith(LIVEKIT_SIP_PATH) or not span.is_recording():
        return
    method = path[len(LIVEKIT_SIP_PATH):]
    span.update_name(f"livekit.SIP/{method}")
    span.set_attributes({"rpc.system": "twirp", "rpc.service": "livekit.SIP",
                         "rpc.method": method})


def instrument_api(app: FastAPI) -> None:
    """Trace the API's requests when tracing is configured (the app factory's one call).

    The API's only LiveKit calls are /readyz's, which belong to no job: every probe would be
    a trace of its own, so its httpx client is left alone.
    """
    if not configure_tracing(SERVICE_API, livekit_calls=False):
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415

    operators_exclusions = any(os.environ.get(name) for name in (
        "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"))
    FastAPIInstrumentor.instrument_app(
        app, exclude_spans=["receive", "send"],
        excluded_urls=None if operators_exclusions else PROBE_URLS,
        http_capture_headers_sanitize_fields=sanitized_headers())


# --- the job's trace -------------------------------------------------------------------


def job_attributes(job: Job) -> dict[str, str | int]:
    return {JOB_ID: job.job_id, ORG_ID: job.org_id, NUMBER: job.number,
            KIND: job.kind.value, SOURCE: job.source, RUN_NUMBER: job.run}


def enqueue_span(job: Job) -> AbstractContextManager[trace.Span | None]:
    """The producer's span around storing and enqueueing `job`; None when tracing is off."""
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(ENQUEUE, kind=SpanKind.PRODUCER,
                                        attributes=job_attributes(job))


def trace_context_of(span: trace.Span | None) -> TraceContext | None:
    """The W3C context naming `span` as the parent, for the job record (None without one)."""
    if span is None:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    if "traceparent" not in carrier:  # an invalid span context (a no-op provider's)
        return None
    try:
        return TraceContext(traceparent=carrier["traceparent"],
                            tracestate=carrier.get("tracestate") or None)
    except ValidationError:
        # A caller's tracestate the record will not hold (longer than W3C's 512 characters,
        # which OpenTelemetry itself does not enforce): the trace goes on without it, the
        # submit must not fail for it.
        return TraceContext(traceparent=carrier["traceparent"])


def run_span(job: Job, start_time_ns: int) -> AbstractContextManager[trace.Span | None]:
    """One delivery's span, a child of the context stored with the job (a root without one).

    It starts at `start_time_ns`, before the claim that read the job record.
    """
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    parent = None
    if job.trace_context is not None:
        carrier = {"traceparent": job.trace_context.traceparent}
        if job.trace_context.tracestate:
            carrier["tracestate"] = job.trace_context.tracestate
        parent = _W3C.extract(carrier)
    return tracer.start_as_current_span(
        RUN, context=parent, kind=SpanKind.CONSUMER, start_time=start_time_ns,
        attributes={**job_attributes(job), ATTEMPT: job.attempts + 1})


def event_span(job: Job) -> AbstractContextManager[trace.Span | None]:
    """The span around the job's end (its terminal write and its one event), inside the run's."""
    # The run's span tells, for less than a look-up of the provider would cost.
    if not trace.get_current_span().get_span_context().is_valid:
        return _NO_SPAN
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(
        EVENT, kind=SpanKind.PRODUCER, attributes={**job_attributes(job), STATE: job.state.value})


def note_enqueued(span: trace.Span | None, job_id: str, created: bool) -> None:
    if span is not None:
        span.set_attributes({JOB_ID: job_id, REPLAYED: not created})


def note_event(span: trace.Span | None, event_id: str, published: bool) -> None:
    if span is not None:
        span.set_attributes({EVENT_ID: event_id, PUBLISHED: published})


def note_outcome(span: trace.Span | None, job: Job, kind: str, detail: str) -> None:
    """What a delivery ended with; a failed job or a failed attempt marks the span an error."""
    if span is None:
        return
    span.set_attributes({OUTCOME: kind, OUTCOME_DETAIL: detail, STATE: job.state.value})
    failed_attempt = kind == "retry" and job.error is not None and detail == job.error.code
    failed_job = kind == "finished" and job.state is JobState.FAILED
    if failed_attempt or failed_job:
        code = job.error.code if job.error is not None else detail
        span.set_attribute(ERROR_CODE, code)
        span.set_status(Status(StatusCode.ERROR, code))

