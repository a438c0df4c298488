"""`python -m bench --jobs N --concurrency C --json PATH` (run from the repository root)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from rich.console import Console

from bench.options import PHASES, BenchError, Options, at_least
from bench.report import KEYS, print_report, write_json
from bench.stack import StackError
from bench.workers import POOLS, WorkerError

_positive = at_least(1)
_not_negative = at_least(0)


def _env_pair(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {raw!r}")
    return name, value


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Trunkline's pipeline against the same LiveKit calls made directly. "
                    "Uses REDIS_URL/LIVEKIT_URL/LIVEKIT_API_KEY/LIVEKIT_API_SECRET, or the "
                    "local stack (ops/stack.sh) when none of them is set. The retention soak "
                    "(Redis memory over 100,000 jobs) is `python -m bench.soak`.")
    parser.add_argument("--jobs", type=_positive, default=1000,
                        help="setups per side in the throughput phase, and no-op tasks in the "
                             "noop phase (default 1000)")
    parser.add_argument("--concurrency", type=_positive, default=4,
                        help="direct threads, and job slots of the workers (default 4)")
    parser.add_argument("--rounds", type=_positive, default=2,
                        help="throughput rounds, alternating which side goes first; the noop "
                             "phase runs as many (default 2)")
    parser.add_argument("--json", dest="json_path", type=Path, default=None,
                        help="write the results here")
    parser.add_argument("--workers", type=_positive, default=1,
                        help="celery worker processes to start (default 1)")
    parser.add_argument("--worker-concurrency", type=_positive, default=None,
                        help="--concurrency of each worker (default: concurrency / workers)")
    parser.add_argument("--pool", choices=POOLS, default="prefork",
                        help="celery pool (default prefork: the only one with hard time limits)")
    parser.add_argument("--redis-db", type=int, default=3,
                        help="the benchmark's own Redis database, flushed (default 3)")
    parser.add_argument("--single-jobs", type=_positive, default=200,
                        help="samples of each kind in the one-at-a-time phases: single, noop, "
                             "http (default 200)")
    parser.add_argument("--overhead-jobs", type=_positive, default=200,
                        help="jobs at 0 and again at --seed-numbers numbers (default 200)")
    parser.add_argument("--seed-numbers", type=_positive, default=10_000,
                        help="existing numbers seeded for the overhead phase (default 10000)")
    parser.add_argument("--rss-jobs", type=_positive, default=10_000,
                        help="jobs over which worker RSS is measured (default 10000)")
    parser.add_argument("--rss-warmup", type=_positive, default=None,
                        help="jobs before the RSS baseline (default min(500, rss-jobs/10))")
    parser.add_argument("--cleanup-batch", type=_positive, default=500,
                        help="delete LiveKit objects every this many finished jobs (rss)")
    parser.add_argument("--worker-loglevel", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="the workers' TRUNKLINE_LOG_LEVEL (default INFO, as deployed)")
    parser.add_argument("--worker-env", type=_env_pair, action="append", default=[],
                        metavar="NAME=VALUE", help="extra environment for the workers")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (default: all; "
                             "the JSON has every key only with all). noop: a no-op Celery "
                             "task through the same app and broker (the floor); http: the "
                             "real API's createSipTrunkDispatch, one request at a time")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="worker and API logs (default: a new temporary folder)")
    parser.add_argument("--keep-data", action="store_true",
                        help="do not flush the benchmark's Redis database at the end")
    parser.add_argument("--cleanup-stale", action="store_true",
                        help="first delete LiveKit objects left by earlier (crashed) bench runs")
    parser.add_argument("--py-spy", metavar="PATH", default=None,
                        help="py-spy binary: sample the workers during the pipeline batches")
    parser.add_argument("--monitor-jobs", type=_not_negative, default=20,
                        help="after the throughput batches, this many jobs one at a time under "
                             "Redis MONITOR: commands by name, sent by clients or run by Lua "
                             "scripts (default 20; 0: off)")
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        parser.error(f"--phases: unknown {unknown}; choose from {','.join(PHASES)}")
    if args.pool == "solo" and args.worker_concurrency not in (None, 1):
        parser.error("--pool solo runs one job at a time per worker: use --workers instead")
    return Options(
        jobs=args.jobs, concurrency=args.concurrency, rounds=args.rounds, json_path=args.json_path,
        workers=args.workers, worker_concurrency=args.worker_concurrency, pool=args.pool,
        redis_db=args.redis_db, single_jobs=args.single_jobs,
        overhead_jobs=args.overhead_jobs, seed_numbers=args.seed_numbers,
        rss_jobs=args.rss_jobs, rss_warmup=args.rss_warmup, cleanup_batch=args.cleanup_batch,
        worker_loglevel=args.worker_loglevel, worker_env=tuple(args.worker_env),
        phases=tuple(p for p in PHASES if p in phases), log_dir=args.log_dir,
        keep_data=args.keep_data, cleanup_stale=args.cleanup_stale, py_spy=args.py_spy,
        monitor_jobs=args.monitor_jobs,
    )


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    from bench.runner import Bench  # noqa: PLC0415  # after parsing: --help stays fast

    # Stop cleanly (workers stopped, this run's LiveKit objects deleted) on Ctrl-C and on
    # SIGTERM, also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    err = Console(stderr=True)
    bench = Bench(options, console=err)
    try:
        result = bench.run()
    except (BenchError, StackError, WorkerError) as exc:
        err.print(f"[red]benchmark failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]; workers stopped and this run's LiveKit objects deleted")
        return 130
    print_report(result, Console())
    if options.json_path is not None:
        write_json(result, options.json_path)
        err.print(f"wrote {options.json_path}")
    missing = [key for key in KEYS if key not in result]
    if missing and set(options.phases) == set(PHASES):
        err.print(f"[red]missing keys[/]: {missing}")
        return 1
    if result["failures"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
