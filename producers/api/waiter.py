"""Wakes requests that wait for a job as soon as its event lands on the results stream.

One thread per API process reads the results stream (XREAD BLOCK) and resolves the futures of
the requests waiting for the jobs it sees, so a waiting request answers within one read of the
event, not on a polling tick. A request still re-reads its job every `recheck` seconds: a
reader that lost Redis, or an event trimmed before it was read, costs latency, never an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, cast

import redis

log = logging.getLogger(__name__)


class ResultWaiter:
    def __init__(self, client: redis.Redis, stream: str, *, block_ms: int = 1000,
                 recheck: float = 0.5) -> None:
        self.redis = client
        self.stream = stream
        self.block_ms = block_ms
        self.recheck = recheck
        self._lock = threading.Lock()
        self._waiting: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Future[None]]:
        """A future that is done once `job_id`'s event has been read. Enter it before
        reading the job's state, so an event between the two is not missed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            self._start()
            self._waiting.setdefault(job_id, []).append(entry)
        try:
            yield future
        finally:
            with self._lock:
                entries = self._waiting.get(job_id, [])
                if entry in entries:
                    entries.remove(entry)
                if not entries:
                    self._waiting.pop(job_id, None)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.block_ms / 1000 + 2)

    def _start(self) -> None:
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(target=self._read, name="trunkline-results-waiter",
                                            daemon=True)
            self._thread.start()

    def _read(self) -> None:
        last: bytes | str | None = None
        while not self._stopping.is_set():
            try:
                if last is None:
                    newest = cast(list[Any], self.redis.xrevrange(self.stream, count=1))
                    last = newest[0][0] if newest else "0-0"
                answer = cast(list[Any] | None, self.redis.xread(
                    {self.stream: last}, count=500, block=self.block_ms))
            except redis.RedisError as exc:
                # Waiting requests fall back to re-reading their jobs meanwhile.
                log.warning("reading %s for waiting requests failed: %s", self.stream, exc)
                self._stopping.wait(1.0)
                continue
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    last = entry_id
                    raw = fields.get(b"job_id")
                    if raw is not None:
                        self._wake(raw.decode())

    def _wake(self, job_id: str) -> None:
        with self._lock:
            entries = list(self._waiting.get(job_id, ()))
        for loop, future in entries:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
