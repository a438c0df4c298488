"""The worker app with a timer around every LiveKit call, for the overhead phase only.

`celery -A bench.probe worker` runs exactly the app `celery -A worker worker` runs (same
factory, settings and tasks); the only addition is a wrapper around LiveKitSIP's one HTTP
method that notes when each call of a job started and ended. After each task, the union of
those intervals (the inbound ‖ outbound pair overlaps) is the job's time in LiveKit; it is
written to the hash PROBE_KEY in the benchmark's Redis database, so the benchmark can
subtract it from the job's end-to-end time: what is left is Trunkline's own part.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import structlog
from celery import signals

from bench.keys import PROBE_KEY
from worker.app import create_app
from worker.config import Settings
from worker.livekit.client import LiveKitSIP
from worker.runtime import redis_client

_settings = Settings.from_env()
app = create_app(_settings)

_lock = threading.Lock()
_intervals: dict[str, list[tuple[float, float]]] = {}
_original_call = LiveKitSIP._call


def _timed_call(self: LiveKitSIP, method: str, body: dict[str, Any], *,
                subject_id: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        return _original_call(self, method, body, subject_id=subject_id)
    finally:
        ended = time.perf_counter()
        job_id = structlog.contextvars.get_contextvars().get("job_id")
        if isinstance(job_id, str):
            with _lock:
                _intervals.setdefault(job_id, []).append((started, ended))


setattr(LiveKitSIP, "_call", _timed_call)  # noqa: B010  # mypy refuses a method assignment


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


class _Sink:
    def __init__(self) -> None:
        self._redis: Any = None
        self._pid = 0

    def write(self, job_id: str, ms: float) -> None:
        # One connection per process: a prefork child must not share its parent's.
        if self._redis is None or self._pid != os.getpid():
            self._redis = redis_client(_settings)
            self._pid = os.getpid()
        self._redis.hset(PROBE_KEY, job_id, f"{ms:.4f}")


_sink = _Sink()


@signals.task_postrun.connect(weak=False, dispatch_uid="trunkline-bench-probe")
def _after_task(args: Any = None, **_: Any) -> None:
    if not args:
        return
    job_id = str(args[0])
    with _lock:
        intervals = _intervals.pop(job_id, [])
    _sink.write(job_id, union_seconds(intervals) * 1000)
