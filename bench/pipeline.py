"""Jobs through the whole pipeline: ProvisioningClient.submit → Redis → worker → LiveKit → event.

A job's end is the arrival of its terminal event on the results stream (XREAD BLOCK, so no
polling delay is added to a measurement).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Self, cast

import redis

from producers import ProvisioningClient


@dataclass(frozen=True)
class Event:
    job_id: str
    status: str
    payload: dict[str, Any]
    at: float  # time.perf_counter() when the benchmark read it


class ResultsReader:
    """Reads the results stream from the entry after the newest one at construction."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.redis = client  # its own: XREAD BLOCK holds a connection
        self.stream = stream
        newest = cast(list[Any], self.redis.xrevrange(stream, count=1))
        self.last_id: bytes | str = newest[0][0] if newest else "0-0"

    def read(self, block_ms: int = 1000, count: int = 1000) -> list[Event]:
        answer = cast(list[Any] | None, self.redis.xread({self.stream: self.last_id},
                                                          count=count, block=block_ms))
        now = time.perf_counter()
        events: list[Event] = []
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                decoded = {k.decode(): v.decode() for k, v in fields.items()}
                events.append(Event(decoded["job_id"], decoded["status"],
                                    json.loads(decoded.get("payload") or "{}"), now))
        return events

    def wait_for(self, job_id: str, timeout: float) -> Event:
        """Block until `job_id`'s event arrives (other events are dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.read(block_ms=1000, count=100):
                if event.job_id == job_id:
                    return event
        raise TimeoutError(f"no event for {job_id} after {timeout:.0f}s")

    def close(self) -> None:
        self.redis.close()


class Collector(threading.Thread):
    """Reads events in the background and hands them out in arrival order (next())."""

    def __init__(self, reader: ResultsReader) -> None:
        super().__init__(name="bench-results", daemon=True)
        self.reader = reader
        self.queue: queue.Queue[Event | BaseException] = queue.Queue()
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                for event in self.reader.read(block_ms=200):
                    self.queue.put(event)
        except BaseException as exc:  # handed to the reader of the queue
            self.queue.put(exc)

    def next(self, timeout: float) -> Event | None:
        """The next event, or None when none arrived within `timeout` seconds."""
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise RuntimeError("reading the results stream failed") from item
        return item

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)
        self.reader.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def submit(client: ProvisioningClient, org_id: str, request: dict[str, Any]) -> str:
    return client.submit(org_id=org_id, request=request, source="bench")
