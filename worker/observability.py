"""Structured logs and Prometheus metrics, shared by the worker and the API.

Logs: every record (ours, Celery's, httpx's) goes through structlog's ProcessorFormatter and
comes out as one JSON object per line, with the job's `job_id` and `org_id` bound for the
duration of the job (contextvars). Nothing here ever logs a request body.

Metrics: module-level collectors (prometheus-client's convention). A prefork worker's pool
children count in multiprocess mode: set PROMETHEUS_MULTIPROC_DIR to an empty directory before
the worker starts, and TRUNKLINE_METRICS_PORT to serve /metrics from the worker's main process.
Names and label values are the machine reason slugs used in job errors and logs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

JOBS = Counter("trunkline_jobs_total", "Jobs finished, by kind, outcome and error code",
               ["kind", "outcome", "code"])
RETRIES = Counter("trunkline_job_retries_total", "Job attempts rescheduled, by error code",
                  ["kind", "code"])
STEP_SECONDS = Histogram("trunkline_step_duration_seconds", "Saga step latency",
                         ["step"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LIVEKIT_ERRORS = Counter("trunkline_livekit_errors_total", "Failed LiveKit calls",
                         ["method", "code"])
REQUEUED = Counter("trunkline_sweeper_requeued_total", "Jobs the sweeper sent again")
RECONCILE_FINDINGS = Gauge("trunkline_reconcile_findings",
                           "Findings of the last scheduled reconcile, by kind", ["kind"],
                           multiprocess_mode="mostrecent")
RETENTION_DELETED = Counter("trunkline_retention_deleted_total",
                            "Records retention deleted, by kind (jobs, dead_letters, results)",
                            ["kind"])
RETENTION_LAST_RUN = Gauge("trunkline_retention_last_run_timestamp_seconds",
                           "When retention last ran (Unix time)",
                           multiprocess_mode="mostrecent")
RETENTION_KEPT = Gauge("trunkline_retention_kept",
                       "Records kept after the last retention run, by kind", ["kind"],
                       multiprocess_mode="mostrecent")
REDIS_USED_MEMORY = Gauge("trunkline_redis_used_memory_bytes",
                          "Redis used_memory after the last retention run",
                          multiprocess_mode="mostrecent")


CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def configure_logging(env: Mapping[str, str] | None = None) -> None:
    """JSON (default) or console logs on stderr, level from TRUNKLINE_LOG_LEVEL."""
    env = os.environ if env is None else env
    level = env.get("TRUNKLINE_LOG_LEVEL", "INFO").upper()
    console = env.get("TRUNKLINE_LOG_FORMAT", "json").lower() == "console"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # Tracebacks as Python prints them, never with the frames' local variables (a secret can
    # sit in one): JSON gets an `exception` text field (format_exc_info), the console plain
    # text (ConsoleRenderer would pick Rich, which prints locals, when it is installed).
    rendering: list[structlog.types.Processor] = (
        [structlog.dev.ConsoleRenderer(colors=False,
                                       exception_formatter=structlog.dev.plain_traceback)]
        if console
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_color_message],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # httpx logs every request line at INFO; our client logs what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Celery's "Task ... received" / "... succeeded" lines: two JSON lines per delivery, about
    # a tenth of a job's worker CPU; our own line per job end says more. Errors still show.
    celery_level = env.get("TRUNKLINE_CELERY_LOG_LEVEL", "WARNING").upper()
    for name in CELERY_TASK_LOGGERS:
        logging.getLogger(name).setLevel(celery_level)


def _drop_color_message(
    logger: Any, method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    # uvicorn adds an ANSI-coloured copy of each message; JSON readers want one.
    event.pop("color_message", None)
    return event


bound_job = structlog.contextvars.bound_contextvars


class GaugeFromCallable(Collector):
    """A gauge read at scrape time (e.g. the dead-letter depth from Redis)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name = name
        self.documentation = documentation
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            value = float(self.read())
        except Exception:  # a scrape must not fail because Redis is briefly away
            return []
        return [GaugeMetricFamily(self.name, self.documentation, value=value)]


def serve_metrics(port: int, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """Serve /metrics on 0.0.0.0:port from this process (multiprocess-aware)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Pool children write their samples to files; the server process merges them.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    for collector in extra:
        registry.register(collector)
    start_http_server(port, registry=registry)
    return registry
