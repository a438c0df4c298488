"""Re-enqueues jobs whose message was lost or whose worker died.

Redis' Celery transport can lose a message (BRPOP, then a separate step records it as
unacked: a worker dying in between loses it), and a killed worker's message only comes back
after the visibility timeout. The job store knows better: every job that is not terminal
sits in an index scored by the time by which something must have happened to it. Jobs past
that deadline are sent again; running them twice is harmless (per-number lock, idempotent
steps).

Every worker runs a sweeper thread; a short Redis lock lets one of them sweep per interval.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from worker.config import Settings
from worker.observability import REQUEUED
from worker.store import JobStore, UnreadableRecord

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, store: JobStore, enqueue: Callable[[str], None], settings: Settings,
                 *, clock: Callable[[], float] = time.time, batch: int = 200) -> None:
        self.store = store
        self.enqueue = enqueue
        self.settings = settings
        self.clock = clock
        self.batch = batch
        self.identity = uuid.uuid4().hex

    def sweep_once(self) -> list[str]:
        """Re-send every overdue job; returns their ids."""
        redis = self.store.redis
        lock_ms = int(self.settings.sweep_interval * 900)
        if not redis.set(self.store.keys.sweeper_lock, self.identity, nx=True, px=lock_ms):
            return []
        now = self.clock()
        resent: list[str] = []
        for job_id in self.store.due(now, self.batch):
            try:
                job = self.store.get(job_id)
            except UnreadableRecord as unreadable:
                # Out of the index for good, so it cannot stall every later pass.
                self.store.quarantine(job_id, unreadable.reason)
                log.error("sweeper: %s; dead-lettered as unreadable_record", unreadable)
                continue
            if job is None or job.state.terminal:
                self.store.forget_active(job_id)
                continue
            holder, remaining = self.store.number_lock_holder(job.number)
            if holder and holder.split(":")[0] == job_id:
                # A run of this job is alive and holds its lease: look again when it ends.
                self.store.set_deadline(job_id, now + remaining + 1)
                continue
            self.store.set_deadline(job_id, now + self.settings.visibility_timeout)
            self.enqueue(job_id)
            resent.append(job_id)
        if resent:
            REQUEUED.inc(len(resent))
            log.warning("sweeper re-enqueued %d overdue job(s): %s", len(resent),
                        ", ".join(resent[:10]))
        return resent


class SweeperThread(threading.Thread):
    def __init__(self, make_sweeper: Callable[[], Sweeper], interval: float) -> None:
        super().__init__(name="trunkline-sweeper", daemon=True)
        self.make_sweeper = make_sweeper
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        sweeper: Sweeper | None = None
        while not self.stopping.wait(self.interval):
            try:
                sweeper = sweeper or self.make_sweeper()
                sweeper.sweep_once()
            except Exception:  # keep sweeping: Redis may be back next interval
                log.exception("sweep failed")

    def stop(self) -> None:
        self.stopping.set()
