"""CPU time spent by each party of a measurement: the benchmark itself, the workers, and
(on the local stack) livekit-server and redis-server.

On a small machine throughput is bound by CPU, so CPU milliseconds per setup and party say
what the pipeline costs on top of the LiveKit calls themselves.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping

from bench.stack import run_stack

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            raw = stat.read()
    except OSError:
        return 0.0
    fields = raw[raw.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def stack_pids(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """The local stack's livekit-server and redis-server pids (empty if unknown)."""
    status = run_stack(dict(os.environ if env is None else env), "status", "--json")
    try:
        services = json.loads(status.stdout)["services"]
        return {name: int(services[name]["pid"]) for name in ("livekit", "redis")
                if services[name].get("pid")}
    except (ValueError, KeyError, TypeError):
        return {}


class CpuMeter:
    """Snapshots of CPU seconds per party; `delta` gives what each used in between."""

    def __init__(self, parties: Mapping[str, Callable[[], Iterable[int]]]) -> None:
        self.parties = dict(parties)

    def snapshot(self) -> dict[str, float]:
        found = {"bench": time.process_time()}
        for name, pids in self.parties.items():
            found[name] = sum(process_cpu_seconds(pid) for pid in pids())
        return found

    @staticmethod
    def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: after[name] - before.get(name, 0.0) for name in after}
