"""The Celery app factory. Nothing connects or reads secrets at import time.

`create_app()` builds and configures an app and registers its tasks explicitly; the worker's
collaborators are built on first use in each process (see worker.runtime).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, bootsteps, signals
from celery.exceptions import SoftTimeLimitExceeded

from worker.broker import use_failover_safe_sentinel_transport
from worker.config import Settings
from worker.observability import GaugeFromCallable, configure_logging, serve_metrics
from worker.runtime import (
    RuntimeHolder,
    broker_transport_options,
    broker_url,
    redis_client,
)
from worker.store import JobStore
from worker.sweeper import Sweeper, SweeperThread
from worker.tasks import PROVISION_TASK, RECONCILE_TASK, RETENTION_TASK, register_tasks

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, env: Mapping[str, str] | None = None) -> Celery:
    settings = settings or Settings.from_env(env)
    if settings.uses_sentinel:
        use_failover_safe_sentinel_transport()  # kombu's sentinel:// gets our crash fix
    app = Celery("trunkline", broker=broker_url(settings), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],  # never pickle
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_default_queue=settings.queue,
        # visibility_timeout, and with Sentinel the master name (kombu's Sentinel transport).
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=False,
        enable_utc=True,
        # `celery -A worker beat` runs the reconcile report and retention on these schedules.
        beat_schedule=_beat_schedule(settings),
    )
    # Our JSON logging instead of Celery's own (connected here, not at import time).
    signals.setup_logging.connect(_setup_logging, weak=False, dispatch_uid="trunkline-logging")
    holder = RuntimeHolder(settings, interruptions=(SoftTimeLimitExceeded,))
    register_tasks(app, holder)
    app.steps["worker"].add(_sweeper_step(app, settings))
    return app


def _beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each periodic task whose interval is set (0: never)."""
    periodic = (("reconcile", RECONCILE_TASK, settings.reconcile_interval),
                ("retention", RETENTION_TASK, settings.retention_interval))
    return {name: {"task": task, "schedule": float(interval),
                   "options": {"queue": settings.queue}}
            for name, task, interval in periodic if interval}


def enqueue(app: Celery, settings: Settings, job_id: str) -> None:
    """Send a job's message: the job id and nothing else."""
    app.send_task(PROVISION_TASK, args=[job_id], queue=settings.queue)


def _setup_logging(**_: Any) -> None:
    configure_logging()


def _sweeper_step(app: Celery, settings: Settings) -> type[bootsteps.StartStopStep]:
    class SweeperStep(bootsteps.StartStopStep):
        """Runs the sweeper inside every worker, so a worker alone is safe."""

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.thread: SweeperThread | None = None

        def start(self, parent: Any) -> None:
            settings.require_secret_keys()
            settings.require_livekit()

            store = JobStore.for_settings(redis_client(settings), settings)

            def make() -> Sweeper:
                return Sweeper(store, lambda job_id: enqueue(app, settings, job_id), settings)

            if settings.metrics_port:
                depth = GaugeFromCallable(
                    "trunkline_dead_letter_depth", "Jobs in the dead-letter store",
                    lambda: float(store.redis.zcard(store.keys.dead_letters)))
                serve_metrics(settings.metrics_port, extra=[depth])
                log.info("metrics on :%d/metrics", settings.metrics_port)

            self.thread = SweeperThread(make, settings.sweep_interval)
            self.thread.start()
            log.info("sweeper started: every %.1fs", settings.sweep_interval)

        def stop(self, parent: Any) -> None:
            if self.thread is not None:
                self.thread.stop()

    return SweeperStep
