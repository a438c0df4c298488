"""Celery tasks: thin adapters from a message (a job id) to the plain job runner."""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.runtime import RuntimeHolder

PROVISION_TASK = "trunkline.provision"


def register_tasks(app: Celery, runtime: RuntimeHolder) -> None:
    # max_retries=None: the attempt limit is the job record's, not Celery's message counter.
    @app.task(name=PROVISION_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True, max_retries=None)
    def provision(self: Any, job_id: str) -> str:
        outcome = runtime.get().runner.run(job_id)
        if outcome.kind == "retry":
            raise self.retry(countdown=outcome.delay)
        return outcome.detail
