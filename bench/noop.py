"""The worker app plus a no-op task, for the Celery floor phase (`noop`) only.

`celery -A bench.noop worker` runs the app `celery -A worker worker` runs (same factory,
settings, broker and configuration) with one more task registered: it takes a job id, as our
messages do, and ends with one XADD of that id to NOOP_STREAM, the cheapest equivalent of a
job's one terminal event. What a job costs above this task is Trunkline's own; what this task
costs is Celery's and the broker's.
"""

from __future__ import annotations

import os
from typing import Any

from bench.keys import NOOP_STREAM, NOOP_TASK
from worker.app import create_app
from worker.config import Settings
from worker.runtime import redis_client

_settings = Settings.from_env()
app = create_app(_settings)


class _Stream:
    def __init__(self) -> None:
        self._redis: Any = None
        self._pid = 0

    def add(self, job_id: str) -> None:
        # One connection per process: a prefork child must not share its parent's socket.
        if self._redis is None or self._pid != os.getpid():
            self._redis = redis_client(_settings)
            self._pid = os.getpid()
        self._redis.xadd(NOOP_STREAM, {"job_id": job_id, "status": "succeeded"},
                         maxlen=_settings.results_maxlen, approximate=True)


_stream = _Stream()


# The same delivery options as the provision task, so Celery does the same work per message.
@app.task(name=NOOP_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def noop(job_id: str) -> None:
    _stream.add(job_id)
