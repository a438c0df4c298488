"""What one side of a measurement used: setups, seconds, CPU by party, Redis commands and
Redis replies; and the figures derived from two sides (ours = pipeline minus LiveKit's share).

Redis is read with one `INFO stats commandstats` per snapshot:

- commandstats counts every command the server ran, those a Lua script ran included (an
  EVALSHA that runs five SETs counts 1 evalsha + 5 set). `total_commands_processed` is the
  same sum, so it cannot tell a client's commands from a script's.
- `total_writes_processed` counts the replies the server wrote to clients: one per round trip
  (a pipeline, MULTI/EXEC or script is one; a reply larger than one write would count more).
  That is what a client pays in waits and context switches, so it is reported beside the
  command count as `redis_client_commands_per_job_ours` (round trips).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Commands the benchmark itself sends while a side is measured (reading events, snapshots);
# they are neither LiveKit's nor the pipeline's, so they are left out of "ours".
BENCH_COMMANDS = frozenset({"info", "xread", "xrevrange"})


@dataclass(frozen=True)
class RedisSnapshot:
    commands: dict[str, int]
    replies: int | None  # None: the server does not report total_writes_processed (< 6.0)


def redis_snapshot(info: dict[str, Any]) -> RedisSnapshot:
    """From the answer to `INFO stats commandstats`."""
    commands = {name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in info.items()
                if name.startswith("cmdstat_") and isinstance(value, dict)}
    replies = info.get("total_writes_processed")
    return RedisSnapshot(commands, None if replies is None else int(replies))


@dataclass
class Tally:
    """The sum over one side's batches."""

    jobs: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    replies: int | None = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def add(self, jobs: int, seconds: float, cpu: dict[str, float], before: RedisSnapshot,
            after: RedisSnapshot) -> None:
        self.jobs += jobs
        self.seconds += seconds
        for name, value in cpu.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + value
        for name, count in after.commands.items():
            made = count - before.commands.get(name, 0)
            if made:
                self.commands[name] = self.commands.get(name, 0) + made
        if self.replies is None or after.replies is None or before.replies is None:
            self.replies = None
        else:
            self.replies += after.replies - before.replies
        self.rounds.append({"jobs": jobs, "seconds": round(seconds, 3),
                            "jobs_per_second": round(jobs / seconds, 2)})

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds

    def cpu_ms(self, party: str) -> float | None:
        """CPU milliseconds per setup of one party (None when it was not measured)."""
        if party not in self.cpu:
            return None
        return self.cpu[party] * 1000 / self.jobs

    def commands_per_setup(self) -> float:
        """Every command the server ran (LiveKit's own included), per setup."""
        return sum(self.commands.values()) / self.jobs

    def bench_commands_per_setup(self) -> float:
        return sum(n for name, n in self.commands.items() if name in BENCH_COMMANDS) / self.jobs

    def replies_per_setup(self) -> float | None:
        return None if self.replies is None else self.replies / self.jobs

    def summary(self) -> dict[str, Any]:
        cpu = {name: round(value * 1000 / self.jobs, 3) for name, value in self.cpu.items()}
        cpu["all"] = round(sum(self.cpu.values()) * 1000 / self.jobs, 3)
        by_name = {name: round(n / self.jobs, 2)
                   for name, n in sorted(self.commands.items(), key=lambda kv: -kv[1])}
        return {
            "jobs": self.jobs, "seconds": self.seconds, "rounds": self.rounds,
            "jobs_per_second": self.jobs_per_second,
            "cpu_ms_per_setup": cpu,
            "redis_commands_per_setup": {"all": round(self.commands_per_setup(), 2), **by_name},
            "redis_replies_per_setup": (None if self.replies is None
                                        else round(self.replies / self.jobs, 2)),
            "bench_commands_per_setup": round(self.bench_commands_per_setup(), 2),
        }


def commands_ours(pipeline: Tally, direct: Tally) -> float:
    """Redis commands per job that are the pipeline's: all, minus the benchmark's own reads,
    minus LiveKit's own (the direct side's, without the benchmark's reads there)."""
    livekit = direct.commands_per_setup() - direct.bench_commands_per_setup()
    return pipeline.commands_per_setup() - pipeline.bench_commands_per_setup() - livekit


def round_trips_ours(pipeline: Tally, direct: Tally) -> float | None:
    """Redis round trips (replies written) per job that are the pipeline's; each of the
    benchmark's own commands is one round trip of its own. None if the server cannot say."""
    pipeline_replies, direct_replies = pipeline.replies_per_setup(), direct.replies_per_setup()
    if pipeline_replies is None or direct_replies is None:
        return None
    livekit = direct_replies - direct.bench_commands_per_setup()
    return pipeline_replies - pipeline.bench_commands_per_setup() - livekit


def cpu_ours_ms(pipeline: Tally, direct: Tally) -> float:
    """CPU ms per job of our processes: the benchmark process as producer (submit, reading
    events), the workers, and our share of redis-server (pipeline's minus the direct side's,
    which is LiveKit's); without the redis term when redis-server's pid is unknown."""
    ours = (pipeline.cpu_ms("bench") or 0.0) + (pipeline.cpu_ms("workers") or 0.0)
    redis_pipeline, redis_direct = pipeline.cpu_ms("redis"), direct.cpu_ms("redis")
    if redis_pipeline is not None and redis_direct is not None:
        ours += redis_pipeline - redis_direct
    return ours


def cpu_ratio(pipeline: Tally, direct: Tally) -> float:
    """cpu_ours_ms / the direct side's benchmark-process CPU per setup (a plain Python client
    making the same LiveKit calls)."""
    return cpu_ours_ms(pipeline, direct) / (direct.cpu_ms("bench") or float("nan"))
