"""Celery tasks: thin adapters from a message (a job id) to the plain job runner."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from worker import tracing
from worker.reconcile import scheduled_reconcile
from worker.retention import apply_and_observe
from worker.runtime import RuntimeHolder

log = logging.getLogger(__name__)

PROVISION_TASK = "trunkline.provision"
RECONCILE_TASK = "trunkline.reconcile"
RETENTION_TASK = "trunkline.retention"


def _flush_traces(**_: Any) -> None:
    tracing.flush()


def register_tasks(app: Celery, runtime: RuntimeHolder) -> None:
    # A prefork child leaves with os._exit, past the tracing SDK's atexit hook.
    signals.worker_process_shutdown.connect(_flush_traces, weak=False,
                                            dispatch_uid="trunkline-traces")

    # max_retries=None: the attempt limit is the job record's, not Celery's message counter.
    @app.task(name=PROVISION_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True, max_retries=None)
    def provision(self: Any, job_id: str) -> str:
        outcome = runtime.get().runner.run(job_id)
        if outcome.kind == "retry":
            raise self.retry(countdown=outcome.delay)
        return outcome.detail

    # Report only: deleting orphans stays an operator's decision (`trunkline reconcile --delete`).
    @app.task(name=RECONCILE_TASK, ignore_result=True, acks_late=False)
    def reconcile() -> dict[str, int]:
        rt = runtime.get()
        counts = scheduled_reconcile(rt.livekit, rt.store, rt.vault)
        log.info("reconcile: %s", counts)
        return counts

    @app.task(name=RETENTION_TASK, ignore_result=True, acks_late=False)
    def retention() -> dict[str, int]:
        rt = runtime.get()
        # Half the soft limit: a long first run (the backfill, a backlog) stops between
        # batches and the next scheduled run carries on.
        report = apply_and_observe(rt.store, rt.settings,
                                   budget_seconds=rt.settings.task_soft_time_limit / 2)
        log.info("retention: deleted %s (complete: %s)", report.deleted, report.complete)
        return report.deleted
