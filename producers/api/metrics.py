"""Prometheus metrics of the HTTP API: requests by route and status, latency, queue depth.

Routes are labelled by their template (`/api/jobs/{job_id}`), never the raw path, so that
labels stay few and no identifier ends up in a metric.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.observability import GaugeFromCallable
from worker.store import JobStore

REQUESTS = Counter("trunkline_api_requests_total", "HTTP requests answered",
                   ["method", "route", "status"])
LATENCY = Histogram("trunkline_api_request_duration_seconds", "HTTP request latency",
                    ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)


def metrics_endpoint(store: JobStore) -> Any:
    """GET /metrics: the process's (or, with PROMETHEUS_MULTIPROC_DIR, all processes') metrics
    plus the live dead-letter and queue-depth gauges read from Redis."""
    live = CollectorRegistry()
    live.register(GaugeFromCallable(
        "trunkline_dead_letter_depth", "Jobs in the dead-letter store",
        lambda: float(store.redis.zcard(store.keys.dead_letters))))
    live.register(GaugeFromCallable(
        "trunkline_jobs_active", "Jobs stored and not yet finished",
        lambda: float(store.redis.zcard(store.keys.active))))

    async def metrics(request: Request) -> Response:
        registry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
        body = generate_latest(registry) + generate_latest(live)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics
