"""Which Redis commands a job's clients send, and which its Lua scripts run, by name.

INFO cannot tell the two apart (commandstats and total_commands_processed count a script's
commands like a client's; see bench.tally). MONITOR can: it names a script's commands' client
`lua`. MONITOR makes the server copy every command to the watcher, so it watches only a few
extra jobs, run one at a time after the timed batches, never a timed one.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import redis

from bench.tally import BENCH_COMMANDS

_END = "trunkline-bench-monitor-end"


class CommandWatch(threading.Thread):
    """Counts the commands run in one database, by name and by source (client or script),
    leaving out the benchmark's own reads and any command that names one of `ignore`."""

    def __init__(self, client: redis.Redis, db: int, ignore: tuple[str, ...] = ()) -> None:
        super().__init__(name="bench-monitor", daemon=True)
        self.redis = client  # its own: MONITOR takes the connection over
        self.db = db
        self.ignore = ignore
        self.client: Counter[str] = Counter()
        self.script: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        try:
            with self.redis.monitor() as monitor:  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                self._ready.set()
                for event in monitor.listen():
                    if not self._count(event):
                        return
        except BaseException as exc:  # handed to finish()
            self.error = exc
            self._ready.set()

    def _count(self, event: dict[str, Any]) -> bool:
        """False at the end marker."""
        command = str(event.get("command", ""))
        name = command.split(" ", 1)[0].lower()
        if name == "echo" and _END in command:
            return False
        if (event.get("db") != self.db or not name or name == "echo" or name in BENCH_COMMANDS
                or any(key in command for key in self.ignore)):
            return True
        (self.script if event.get("client_type") == "lua" else self.client)[name] += 1
        return True

    def begin(self, timeout: float = 10.0) -> None:
        """Start watching; raises what MONITOR raised (e.g. refused by the server's ACL)."""
        self.start()
        self._ready.wait(timeout)
        if self.error is not None:
            raise self.error

    def finish(self, timeout: float = 10.0) -> None:
        try:
            self.redis.echo(_END)
            self.join(timeout)
        finally:
            self.redis.close()
        if self.error is not None:
            raise self.error


def per_job(counts: Counter[str], jobs: int) -> dict[str, float]:
    by_name = {name: round(n / jobs, 2) for name, n in counts.most_common()}
    return {"all": round(sum(counts.values()) / jobs, 2), **by_name}
