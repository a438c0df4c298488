"""The benchmark's options and its error type (light imports: `--help` stays fast)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PHASES = ("overhead", "noop", "throughput", "single", "http", "rss")


@dataclass(frozen=True)
class Options:
    jobs: int = 1000
    concurrency: int = 4
    json_path: Path | None = None
    workers: int = 1
    worker_concurrency: int | None = None  # default: ceil(concurrency / workers)
    pool: str = "prefork"
    redis_db: int = 3
    single_jobs: int = 200
    overhead_jobs: int = 200
    rounds: int = 2
    seed_numbers: int = 10_000
    rss_jobs: int = 10_000
    rss_warmup: int | None = None  # default: min(500, max(1, rss_jobs // 10))
    cleanup_batch: int = 500
    worker_loglevel: str = "INFO"
    worker_env: tuple[tuple[str, str], ...] = ()
    phases: tuple[str, ...] = PHASES
    log_dir: Path | None = None
    keep_data: bool = False
    cleanup_stale: bool = False
    py_spy: str | None = None
    monitor_jobs: int = 20

    @property
    def effective_worker_concurrency(self) -> int:
        if self.pool == "solo":
            return 1
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        return max(1, -(-self.concurrency // self.workers))

    @property
    def effective_rss_warmup(self) -> int:
        if self.rss_warmup is not None:
            return self.rss_warmup
        return min(500, max(1, self.rss_jobs // 10))


class BenchError(RuntimeError):
    pass


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than `minimum`."""
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse
