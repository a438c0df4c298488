"""The process's OpenTelemetry tracer provider, swapped for an in-memory one during a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


def forget_global_provider() -> None:
    """Let the process install a tracer provider again (OpenTelemetry allows it once; its own
    test utilities reset the same two globals)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@contextmanager
def in_memory_spans() -> Iterator[InMemorySpanExporter]:
    """The process as an application that installed its own provider, exporting to memory
    as each span ends; none is installed afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    forget_global_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        forget_global_provider()
