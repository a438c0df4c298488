"""The benchmark's phases, run in one go against one stack.

overhead    probe workers; one job at a time at 0 existing numbers, then again after seeding
            --seed-numbers numbers; own part = end to end minus time inside LiveKit calls
throughput  N setups directly (C threads) and N jobs through the pipeline (C job slots)
noop        the Celery floor: bench.noop workers (the real app plus a no-op task that ends
            with one XADD); --jobs tasks at once in rounds, then one at a time
single      one at a time, interleaved: three sequential direct calls, the saga's
            concurrent direct calls, one pipeline job
http        one at a time, interleaved: the real API's createSipTrunkDispatch (waiting for
            the answer), three sequential direct calls, the same request answered at once
            (Prefer: respond-async)
rss         fresh workers; warm-up, then --rss-jobs jobs, VmRSS of every worker process
            before and after; LiveKit objects are deleted in batches as the jobs finish
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench import machine
from bench.api import ApiProcess
from bench.cpu import CpuMeter, stack_pids
from bench.direct import (
    BENCH_ORG_PREFIX,
    Created,
    Direct,
    NumberPlan,
    bench_request,
    delete_created,
    delete_many,
    is_any_bench_object,
    is_bench_object,
    sweep,
)
from bench.keys import LIVE_KEY, LIVE_SECONDS, MARKER_KEY, NOOP_STREAM, NOOP_TASK, PROBE_KEY
from bench.monitor import CommandWatch, per_job
from bench.options import BenchError, Options
from bench.pipeline import Collector, Event, ResultsReader, submit
from bench.profile import sampling, summarise
from bench.seed import seed_numbers, unseed
from bench.stack import Endpoints, StackError, local_livekit_version, resolve
from bench.stats import percentile, summary
from bench.tally import (
    RedisSnapshot,
    Tally,
    commands_ours,
    cpu_ours_ms,
    cpu_ratio,
    redis_snapshot,
    round_trips_ours,
)
from bench.workers import WorkerGroup
from producers import ProvisioningClient, WaitTimeout
from producers.keys import ApiKeys
from worker.app import create_app
from worker.config import Settings
from worker.livekit import LiveKitSIP
from worker.records import Job
from worker.runtime import redis_client
from worker.store import JobStore
from worker.vault import Vault

STALL_SECONDS = 120.0
MB = 1024.0  # VmRSS is in KiB


# Passed on to the benchmark's workers (which get no other TRUNKLINE_* from the environment).
SENTINEL_SETTINGS = ("TRUNKLINE_REDIS_SENTINELS", "TRUNKLINE_REDIS_SENTINEL_MASTER",
                     "TRUNKLINE_REDIS_SENTINEL_PASSWORD", "TRUNKLINE_REDIS_PASSWORD")


def _just(pid: int) -> Callable[[], list[int]]:
    return lambda: [pid]


@dataclass
class Failure:
    phase: str
    job_id: str
    code: str


@dataclass
class Bench:
    options: Options
    console: Console = field(default_factory=lambda: Console(stderr=True))

    def __post_init__(self) -> None:
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.org_id = BENCH_ORG_PREFIX + self.run_id
        self.failures: list[Failure] = []
        self.details: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.groups: list[WorkerGroup] = []
        self.api: ApiProcess | None = None
        self.pending_deletes: list[Future[None]] = []
        self.profiles: list[Path] = []
        self.claimed = False
        self._stopping = threading.Event()
        self._heartbeat = threading.Thread(target=self._keep_alive, name="bench-live",
                                           daemon=True)
        self.log_dir = self.options.log_dir or Path(
            tempfile.mkdtemp(prefix=f"trunkline-bench-{self.run_id}-"))
        self.deleter = ThreadPoolExecutor(4, thread_name_prefix="bench-delete")
        self.pair_pool = ThreadPoolExecutor(max(2, self.options.concurrency),
                                            thread_name_prefix="bench-direct-pair")
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description:<34}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console,
        )

    # ------------------------------------------------------------------ setup / teardown

    def setup(self) -> None:
        self.endpoints: Endpoints = resolve()
        self.redis_url = self.endpoints.redis_url_for(self.options.redis_db)
        secret_key = Vault.generate_key()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TRUNKLINE_", "LIVEKIT_", "CELERY_", "PROMETHEUS_"))
               and k != "REDIS_URL"}
        # With TRUNKLINE_REDIS_SENTINELS the benchmark's database is on the Sentinel primary
        # (REDIS_URL is then ignored by every process); LiveKit keeps its own Redis.
        sentinel = {name: os.environ[name] for name in SENTINEL_SETTINGS
                    if os.environ.get(name, "").strip()}
        if sentinel.get("TRUNKLINE_REDIS_SENTINELS"):
            env.update(sentinel, TRUNKLINE_REDIS_DB=str(self.options.redis_db))
        env.update(
            REDIS_URL=self.redis_url,
            LIVEKIT_URL=self.endpoints.livekit_url,
            LIVEKIT_API_KEY=self.endpoints.api_key,
            LIVEKIT_API_SECRET=self.endpoints.api_secret,
            TRUNKLINE_SECRET_KEYS=secret_key,
            TRUNKLINE_LOG_LEVEL=self.options.worker_loglevel.upper(),
            PYTHONUNBUFFERED="1",
        )
        env.update(dict(self.options.worker_env))
        self.worker_env = env
        self.settings = Settings.from_env(env)
        if self.settings.uses_sentinel:
            self.redis_url = (f"sentinel master {self.settings.redis_sentinel_master} "
                              f"db {self.settings.redis_db}")
        self.redis = self._redis()
        self._claim_database()
        self.vault = Vault(self.settings.secret_keys)
        self.livekit = LiveKitSIP(self.endpoints.livekit_url, self.endpoints.api_key,
                                  self.endpoints.api_secret)
        self.direct = Direct(self.livekit, self.vault, self.org_id, self.pair_pool)
        if self.options.cleanup_stale:
            stale = sweep(self.livekit, is_any_bench_object)
            self.console.log(f"deleted {stale} LiveKit objects left by earlier bench runs")
        self.numbers = NumberPlan.avoiding(self.livekit)
        self.client = self._client()
        self.console.log(f"run {self.run_id}: Redis {self.redis_url}, LiveKit "
                         f"{self.endpoints.livekit_url}, worker logs in {self.log_dir}")

    def _claim_database(self) -> None:
        size = int(self.redis.dbsize())
        if size and not self.redis.exists(MARKER_KEY):
            raise StackError(
                f"Redis database {self.options.redis_db} holds {size} keys that are not the "
                "benchmark's; pick an empty one with --redis-db (the benchmark flushes it)")
        if not self.redis.set(LIVE_KEY, self.run_id, nx=True, ex=LIVE_SECONDS):
            other = cast(bytes | None, self.redis.get(LIVE_KEY)) or b"?"
            raise StackError(
                f"another benchmark run ({other.decode()}) is using Redis database "
                f"{self.options.redis_db}; wait for it or pick another --redis-db")
        self.claimed = True
        self._flush()
        self._heartbeat.start()

    def _flush(self) -> None:
        """Empty the benchmark's database (only while none of its workers runs)."""
        self.redis.flushdb()
        self.redis.set(MARKER_KEY, self.run_id)
        self.redis.set(LIVE_KEY, self.run_id, ex=LIVE_SECONDS)

    def _keep_alive(self) -> None:
        while not self._stopping.wait(LIVE_SECONDS / 4):
            with contextlib.suppress(redis.RedisError):
                self.redis.set(LIVE_KEY, self.run_id, ex=LIVE_SECONDS)

    def _redis(self) -> redis.Redis:
        """A client of the benchmark's database, through Sentinel when it is configured."""
        return redis_client(self.settings, socket_timeout=30)

    def _client(self) -> ProvisioningClient:
        return ProvisioningClient(
            JobStore.for_settings(redis_client(self.settings), self.settings),
            self.vault, create_app(self.settings), self.settings)

    def _close_client(self) -> None:
        self.client.close()
        self.client.app.close()

    def teardown(self) -> None:
        self._stopping.set()
        if self.api is not None:
            self.api.stop()
        for group in self.groups:
            group.stop()
        self.groups.clear()
        with contextlib.suppress(Exception):
            self.flush_deletes()
        with contextlib.suppress(Exception):
            removed = sweep(self.livekit, lambda meta: is_bench_object(meta, self.org_id))
            self.details["cleanup_swept_objects"] = removed
        if self.claimed:
            with contextlib.suppress(Exception):
                if self.options.keep_data:
                    self.redis.delete(LIVE_KEY)
                else:
                    self.redis.flushdb()
        with contextlib.suppress(Exception):
            self._close_client()
        self.deleter.shutdown(wait=True)
        self.pair_pool.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.livekit.close()

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def workers(self, app: str, label: str,
                send: Callable[[], str] | None = None,
                stream: str | None = None) -> Iterator[WorkerGroup]:
        """Started workers, warmed up with `send` (default: pipeline jobs) read on `stream`."""
        group = WorkerGroup(app=app, count=self.options.workers,
                            concurrency=self.options.effective_worker_concurrency,
                            pool=self.options.pool, env=self.worker_env, log_dir=self.log_dir,
                            loglevel=self.options.worker_loglevel, label=label)
        self.groups.append(group)
        try:
            group.start()
            # A fresh client: its broker connection declares nothing stale after a flush.
            self._close_client()
            self.client = self._client()
            # Warm-up: every pool process builds its runtime (connections, clients) once.
            with Collector(ResultsReader(self._redis(),
                                         stream or self.client.store.keys.results)) as c:
                self.run_jobs(group, c, max(10, 2 * group.slots), window=group.slots * 2,
                              phase=f"{label} warm-up", delete_as_you_go=send is None,
                              send=send)
            self.flush_deletes()
            yield group
        finally:
            group.stop()
            self.groups.remove(group)

    def _task(self, description: str, total: int) -> TaskID:
        return self.progress.add_task(description, total=total)

    def run_jobs(self, group: WorkerGroup, collector: Collector, count: int, *, window: int,
                 phase: str, delete_as_you_go: bool = False,
                 on_event: Callable[[int, Event], None] = lambda _done, _event: None,
                 send: Callable[[], str] | None = None,
                 ) -> tuple[float, float, list[Event]]:
        """Submit `count` jobs keeping at most `window` in flight; returns (t0, t_end, events).

        `send` sends one message and returns its id (default: a pipeline job via submit()).

        With delete_as_you_go, the LiveKit objects of finished jobs are deleted in batches of
        --cleanup-batch on background threads (wait with self.flush_deletes()).
        """
        task = self._task(phase, count)
        pending: set[str] = set()
        events: list[Event] = []
        batch: list[Created] = []
        submitted = 0
        started = time.perf_counter()
        last_progress = time.monotonic()
        while len(events) < count:
            while submitted < count and len(pending) < window:
                pending.add(send() if send is not None else self._submit_job())
                submitted += 1
            event = collector.next(timeout=1.0)
            if event is None:
                group.check_alive()
                if time.monotonic() - last_progress > STALL_SECONDS:
                    raise BenchError(f"{phase}: no job finished for {STALL_SECONDS:.0f}s "
                                     f"({len(pending)} in flight); worker logs: {self.log_dir}")
                continue
            if event.job_id not in pending:
                continue
            pending.discard(event.job_id)
            events.append(event)
            last_progress = time.monotonic()
            self.progress.advance(task)
            if event.status != "succeeded":
                self.failures.append(Failure(phase, event.job_id,
                                             str(event.payload.get("error_code"))))
            elif delete_as_you_go:
                batch.append(Created.from_payload(event.payload))
                if len(batch) >= self.options.cleanup_batch:
                    self._delete_later(batch)
                    batch = []
            on_event(len(events), event)
        if delete_as_you_go and batch:
            self._delete_later(batch)
        self.progress.remove_task(task)
        return started, max(e.at for e in events), events

    def _submit_job(self) -> str:
        return submit(self.client, self.org_id, bench_request(self.numbers.next()))

    def _send_noop(self) -> str:
        """One message for bench.noop's task: a job id, sent the way jobs are enqueued."""
        job_id = "job_noop" + uuid.uuid4().hex
        self.client.app.send_task(NOOP_TASK, args=[job_id], queue=self.settings.queue)
        return job_id

    def _delete_later(self, sets: Sequence[Created]) -> None:
        self.pending_deletes.extend(
            self.deleter.submit(delete_created, self.livekit, created) for created in sets)

    def flush_deletes(self) -> None:
        """Wait until every background deletion queued so far is done."""
        pending, self.pending_deletes = self.pending_deletes, []
        for future in pending:
            future.result()

    def delete_now(self, sets: Sequence[Created], description: str) -> None:
        if not sets:
            return
        task = self._task(description, len(sets))
        delete_many(self.livekit, sets, self.deleter,
                    lambda n: self.progress.advance(task, n))
        self.progress.remove_task(task)

    # ------------------------------------------------------------------ phases

    def phase_overhead(self) -> None:
        """Own part of one job at 0 and at --seed-numbers existing numbers, in ABBA order.

        Blocks: at 0, (seed), at N, at N, (unseed), at 0. A drift of the machine's load over
        the phase falls on both figures alike.
        """
        half = max(1, self.options.overhead_jobs // 2)
        seeded_n = self.options.seed_numbers
        blocks: dict[str, list[dict[str, float]]] = {"at_0": [], "at_seeded": []}
        sizes: dict[str, list[int]] = {"at_0": [], "at_seeded": []}
        with self.workers("bench.probe", "probe") as group:
            def block(name: str, label: str) -> None:
                sizes[name].append(int(self.redis.dbsize()))
                blocks[name] += self._overhead_samples(group, half, label)

            block("at_0", "own overhead at 0 numbers (1/2)")
            task = self._task(f"seeding {seeded_n} numbers", seeded_n)
            numbers = [self.numbers.next() for _ in range(seeded_n)]
            seeded_at = time.perf_counter()
            seeded = seed_numbers(self.client.store, self.vault, self.org_id, numbers,
                                  advance=lambda n: self.progress.advance(task, n))
            seed_seconds = time.perf_counter() - seeded_at
            self.progress.remove_task(task)
            existing = int(self.redis.zcard(self.client.store.keys.numbers_by_org(self.org_id)))
            block("at_seeded", f"own overhead at {seeded_n} numbers (1/2)")
            block("at_seeded", f"own overhead at {seeded_n} numbers (2/2)")
            unseed(self.client.store, seeded)
            block("at_0", "own overhead at 0 numbers (2/2)")
        # A clean database for the other phases (no worker runs now; new ones bind the queue).
        self._flush()
        at_0 = self._overhead_summary(blocks["at_0"])
        at_n = self._overhead_summary(blocks["at_seeded"])
        self.metrics["own_overhead_ms_at_0"] = at_0["own_ms"]["p50"]
        self.metrics["own_overhead_ms_at_10000"] = at_n["own_ms"]["p50"]
        self.details["overhead"] = {
            "jobs_each": len(blocks["at_0"]), "seeded_numbers": seeded_n,
            "numbers_in_org_index_after_seeding": existing,
            "redis_keys_at_block_start": sizes,
            "seed_seconds": round(seed_seconds, 3), "at_0": at_0, "at_seeded": at_n,
            "method": "per job: end to end (before submit -> event read) minus the union "
                      "of the job's LiveKit call intervals measured inside the worker "
                      "(bench.probe); blocks in ABBA order; p50 reported",
        }

    @staticmethod
    def _overhead_summary(samples: list[dict[str, float]]) -> dict[str, Any]:
        return {name: summary([sample[name] for sample in samples])
                for name in ("own_ms", "end_to_end_ms", "livekit_ms")}

    def _overhead_samples(self, group: WorkerGroup, count: int,
                          description: str) -> list[dict[str, float]]:
        reader = ResultsReader(self._redis(), self.client.store.keys.results)
        task = self._task(description, count)
        e2e: dict[str, float] = {}
        try:
            for _ in range(count):
                started = time.perf_counter()
                job_id = submit(self.client, self.org_id, bench_request(self.numbers.next()))
                event = self._wait_single(reader, group, job_id, "overhead")
                e2e[job_id] = (event.at - started) * 1000
                if event.status == "succeeded":
                    delete_created(self.livekit, Created.from_payload(event.payload))
                self.progress.advance(task)
        finally:
            reader.close()
            self.progress.remove_task(task)
        inside = self._probe_values(list(e2e))
        return [{"own_ms": e2e[job_id] - inside[job_id], "end_to_end_ms": e2e[job_id],
                 "livekit_ms": inside[job_id]} for job_id in e2e]

    def _probe_values(self, job_ids: list[str]) -> dict[str, float]:
        deadline = time.monotonic() + 30
        while True:
            raw = cast(list[bytes | None], self.redis.hmget(PROBE_KEY, job_ids))
            if all(value is not None for value in raw) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        missing = [job_id for job_id, value in zip(job_ids, raw, strict=True) if value is None]
        if missing:
            raise BenchError(f"the probe recorded no LiveKit time for {len(missing)} jobs")
        return {job_id: float(cast(bytes, value))
                for job_id, value in zip(job_ids, raw, strict=True)}

    def _wait_single(self, reader: ResultsReader, group: WorkerGroup, job_id: str,
                     phase: str) -> Event:
        deadline = time.monotonic() + STALL_SECONDS
        while True:
            try:
                event = reader.wait_for(job_id, timeout=5)
                break
            except TimeoutError:
                group.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{phase}: job {job_id} had no event after "
                                     f"{STALL_SECONDS:.0f}s; worker logs: {self.log_dir}"
                                     ) from None
        if event.status != "succeeded":
            self.failures.append(Failure(phase, job_id, str(event.payload.get("error_code"))))
        return event

    def phase_throughput(self, group: WorkerGroup) -> None:
        """N setups per side, in --rounds rounds that alternate which side goes first.

        Rounds spread both sides over the same stretch of time, so load from other work on
        the machine falls on both alike. Each round starts from a LiveKit without this
        run's objects (the previous round's are deleted, untimed).
        """
        sizes = self._round_sizes()
        rounds = len(sizes)
        meter = CpuMeter(self._cpu_parties(group))
        totals = {"direct": Tally(), "pipeline": Tally()}
        load_before = machine.loadavg()
        for index, size in enumerate(sizes):
            order = ("direct", "pipeline") if index % 2 == 0 else ("pipeline", "direct")
            for side in order:
                label = f"round {index + 1}/{rounds}"
                batch = (partial(self._direct_batch, size, label) if side == "direct"
                         else partial(self._pipeline_batch, group, size, label))
                created = self._measured(totals[side], meter, size, batch)
                self.delete_now(created, f"deleting {side} objects")
        direct, pipeline = totals["direct"], totals["pipeline"]
        self.metrics["direct_throughput"] = direct.jobs_per_second
        self.metrics["pipeline_throughput"] = pipeline.jobs_per_second
        self.metrics["throughput_ratio"] = (self.metrics["pipeline_throughput"]
                                            / self.metrics["direct_throughput"])
        self.metrics["redis_commands_per_job_ours"] = commands_ours(pipeline, direct)
        round_trips = round_trips_ours(pipeline, direct)
        if round_trips is not None:
            self.metrics["redis_client_commands_per_job_ours"] = round_trips
        self.metrics["cpu_ratio"] = cpu_ratio(pipeline, direct)
        self.details["throughput"] = {
            "jobs_per_side": self.options.jobs, "rounds": rounds,
            "direct_threads": self.options.concurrency, "pipeline_slots": group.slots,
            "direct": direct.summary(), "pipeline": pipeline.summary(),
            "ours": {
                "cpu_ms_per_job": round(cpu_ours_ms(pipeline, direct), 3),
                "cpu_includes_redis_share": pipeline.cpu_ms("redis") is not None,
                "cpu_formula": "(bench + workers + (redis - direct redis)) per job / direct "
                               "bench per setup",
                "redis_commands_formula": "pipeline all - pipeline bench reads - (direct all "
                                          "- direct bench reads), per job",
                "redis_round_trips_formula": "INFO stats total_writes_processed per job: "
                                             "pipeline - pipeline bench commands - (direct - "
                                             "direct bench commands)",
            },
            "worker_profile_pct": summarise(self.profiles) if self.profiles else None,
            "loadavg_before": load_before, "loadavg_after": machine.loadavg(),
        }
        self.details["throughput"]["monitor"] = self._monitored_jobs(group)

    def _monitored_jobs(self, group: WorkerGroup) -> dict[str, Any] | None:
        """Commands per job by name and source (client or Lua script) in the benchmark's
        database, for --monitor-jobs untimed jobs one at a time under MONITOR."""
        count = self.options.monitor_jobs
        if not count:
            return None
        watch = CommandWatch(self._redis(), self.options.redis_db, ignore=(LIVE_KEY,))
        try:
            watch.begin()
        except redis.RedisError as exc:
            return {"error": f"MONITOR refused: {exc}"}
        reader = ResultsReader(self._redis(), self.client.store.keys.results)
        task = self._task(f"jobs under MONITOR x{count}", count)
        try:
            for _ in range(count):
                event = self._wait_single(reader, group, self._submit_job(), "monitor")
                if event.status == "succeeded":
                    delete_created(self.livekit, Created.from_payload(event.payload))
                self.progress.advance(task)
        finally:
            reader.close()
            self.progress.remove_task(task)
            watch.finish()
        return {"jobs": count,
                "client_commands_per_job": per_job(watch.client, count),
                "script_commands_per_job": per_job(watch.script, count),
                "method": "MONITOR on the benchmark's database; a script's commands are "
                          "named `lua`; the benchmark's reads (xread, xrevrange, info) and "
                          "lease left out; one job at a time, so idle polling (brpop) counts"}

    def _round_sizes(self) -> list[int]:
        count, rounds = self.options.jobs, min(self.options.rounds, self.options.jobs)
        return [count // rounds + (1 if i < count % rounds else 0) for i in range(rounds)]

    def _measured(self, tally: Tally, meter: CpuMeter, size: int,
                  batch: Callable[[], tuple[float, list[Created]]]) -> list[Created]:
        """Run one batch and add its seconds, CPU and Redis use to `tally`; its objects."""
        before, redis_before = meter.snapshot(), self._redis_snapshot()
        seconds, created = batch()
        used = CpuMeter.delta(before, meter.snapshot())
        tally.add(size, seconds, used, redis_before, self._redis_snapshot())
        return created

    def _redis_snapshot(self) -> RedisSnapshot:
        # One INFO for both sections: the snapshot itself is one command and one reply.
        return redis_snapshot(self.redis.info("stats", "commandstats"))

    def _cpu_parties(self, group: WorkerGroup) -> dict[str, Callable[[], list[int]]]:
        parties: dict[str, Callable[[], list[int]]] = {"workers": group.pids}
        if self.endpoints.local_stack:
            for name, pid in stack_pids().items():
                parties[name] = _just(pid)
        primary = self._local_sentinel_primary_pid()
        if primary is not None and "redis" in parties:
            # The stack's redis serves LiveKit, the Sentinel primary Trunkline: count both.
            stack_redis = parties["redis"]()
            parties["redis"] = lambda: [*stack_redis, primary]
        return parties

    def _local_sentinel_primary_pid(self) -> int | None:
        """The Sentinel primary's pid when it runs on this machine (its CPU is then ours)."""
        if not self.settings.uses_sentinel:
            return None
        pool: Any = self.redis.connection_pool
        host = pool.get_master_address()[0]
        if host not in ("127.0.0.1", "::1", "localhost"):
            return None
        pid = int(self.redis.info("server")["process_id"])
        return pid if Path(f"/proc/{pid}").exists() else None

    def _direct_batch(self, count: int, label: str) -> tuple[float, list[Created]]:
        """`count` setups the saga's way on --concurrency threads; (seconds, objects)."""
        concurrency = self.options.concurrency
        numbers = [self.numbers.next() for _ in range(count)]
        task = self._task(f"direct x{count} (C={concurrency}) {label}", count)

        def one(number: str) -> tuple[Created, float]:
            created, _ = self.direct.concurrent(number)
            self.progress.advance(task)
            return created, time.perf_counter()

        with ThreadPoolExecutor(concurrency, thread_name_prefix="bench-direct") as pool:
            started = time.perf_counter()
            done = list(pool.map(one, numbers))
        self.progress.remove_task(task)
        return max(at for _, at in done) - started, [created for created, _ in done]

    def _pipeline_batch(self, group: WorkerGroup, count: int,
                        label: str) -> tuple[float, list[Created]]:
        """`count` jobs submitted at once; the workers' slots set the concurrency."""
        leaders = [proc.pid for proc in group.procs]
        with sampling(self.options.py_spy, leaders, self.log_dir / "py-spy",
                      f"pipeline-{label.replace('/', '-of-').replace(' ', '')}") as paths, \
                Collector(ResultsReader(self._redis(), self.client.store.keys.results)) as c:
            t0, t_end, events = self.run_jobs(
                group, c, count, window=count,
                phase=f"pipeline x{count} ({group.slots} slots) {label}")
        self.profiles.extend(paths)
        return t_end - t0, [Created.from_payload(e.payload) for e in events
                            if e.status == "succeeded"]

    def phase_single(self, group: WorkerGroup) -> None:
        count = self.options.single_jobs
        reader = ResultsReader(self._redis(), self.client.store.keys.results)

        def sample(kind: str) -> tuple[Created, float] | None:
            number = self.numbers.next()
            if kind == "sequential":
                return self.direct.sequential(number)
            if kind == "concurrent":
                return self.direct.concurrent(number)
            started = time.perf_counter()
            job_id = submit(self.client, self.org_id, bench_request(number))
            event = self._wait_single(reader, group, job_id, "single")
            if event.status != "succeeded":
                return None
            return Created.from_payload(event.payload), event.at - started

        load_before = machine.loadavg()
        try:
            samples = self._interleaved(f"one at a time x{count} (x3 kinds)", count,
                                        ["sequential", "concurrent", "pipeline"], sample)
        finally:
            reader.close()
        pipe = samples["pipeline"]
        self.metrics["pipeline_single_p50_ms"] = percentile(pipe, 50)
        self.metrics["pipeline_single_p95_ms"] = percentile(pipe, 95)
        self.metrics["pipeline_single_p99_ms"] = percentile(pipe, 99)
        self.metrics["direct_sequential_p50_ms"] = percentile(samples["sequential"], 50)
        self.metrics["pipeline_single_ratio"] = (self.metrics["pipeline_single_p50_ms"]
                                                 / self.metrics["direct_sequential_p50_ms"])
        self.details["single"] = {
            "jobs_each": count,
            "pipeline_ms": summary(pipe),
            "direct_sequential_ms": summary(samples["sequential"]),
            "direct_concurrent_ms": summary(samples["concurrent"]),
            "loadavg_before": load_before, "loadavg_after": machine.loadavg(),
        }

    def _interleaved(self, label: str, count: int, kinds: list[str],
                     sample: Callable[[str], tuple[Created, float] | None],
                     ) -> dict[str, list[float]]:
        """`count` rounds of one sample of each kind (ms), the order rotated so that none
        always goes first; a sample returning None (its job failed) is left out."""
        samples: dict[str, list[float]] = {kind: [] for kind in kinds}
        task = self._task(label, count)
        try:
            for i in range(count):
                made: list[Created] = []
                for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
                    taken = sample(kind)
                    if taken is None:
                        continue
                    created, seconds = taken
                    samples[kind].append(seconds * 1000)
                    made.append(created)
                # Untimed: every sample starts from the same (empty) LiveKit.
                for created in made:
                    delete_created(self.livekit, created)
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)
        return samples

    def phase_noop(self) -> None:
        """The Celery floor: a no-op task through the same app, broker, settings and worker
        flags, measured like the pipeline (rounds, CPU by party, Redis use), then one at a
        time. What a job costs above it is Trunkline's own."""
        with self.workers("bench.noop", "noop", send=self._send_noop,
                          stream=NOOP_STREAM) as group:
            meter = CpuMeter(self._cpu_parties(group))
            tally = Tally()
            load_before = machine.loadavg()
            sizes = self._round_sizes()
            for index, size in enumerate(sizes):
                self._measured(tally, meter, size, partial(
                    self._noop_batch, group, size, f"round {index + 1}/{len(sizes)}"))
            single = self._noop_single(group)
        self._flush()
        self.metrics["celery_noop_throughput"] = tally.jobs_per_second
        self.metrics["celery_noop_single_p50_ms"] = percentile(single, 50)
        self.details["noop"] = {
            "task": NOOP_TASK, "tasks": tally.summary(), "single_ms": summary(single),
            "loadavg_before": load_before, "loadavg_after": machine.loadavg(),
        }

    def _noop_batch(self, group: WorkerGroup, count: int,
                    label: str) -> tuple[float, list[Created]]:
        """`count` no-op tasks sent at once, like a pipeline batch; (seconds, no objects)."""
        with Collector(ResultsReader(self._redis(), NOOP_STREAM)) as c:
            t0, t_end, _ = self.run_jobs(group, c, count, window=count,
                                         phase=f"noop x{count} ({group.slots} slots) {label}",
                                         send=self._send_noop)
        return t_end - t0, []

    def _noop_single(self, group: WorkerGroup) -> list[float]:
        count = self.options.single_jobs
        reader = ResultsReader(self._redis(), NOOP_STREAM)
        task = self._task(f"noop one at a time x{count}", count)
        samples: list[float] = []
        try:
            for _ in range(count):
                started = time.perf_counter()
                job_id = self._send_noop()
                event = self._wait_single(reader, group, job_id, "noop")
                samples.append((event.at - started) * 1000)
                self.progress.advance(task)
        finally:
            reader.close()
            self.progress.remove_task(task)
        return samples

    def phase_http(self, group: WorkerGroup) -> None:
        """One createSipTrunkDispatch at a time through the real API (which waits for the
        job), interleaved with three sequential direct calls, as phase_single does; and, to
        tell the API's own part from the wait, one with `Prefer: respond-async`, timed to its
        202 (its job is waited for untimed before the next sample)."""
        count = self.options.single_jobs
        key = ApiKeys(self.client.redis).create(self.org_id, name="benchmark http phase")
        # The per-organisation rate limit (60/min by default) would throttle the samples.
        self.api = ApiProcess({**self.worker_env, "TRUNKLINE_API_RATE_LIMIT": "0"},
                              self.log_dir / "api.log")
        self.api.start()
        api_url = self.api.url
        load_before = machine.loadavg()
        headers = {"X-API-KEY": key.api_key, "X-API-SECRET": key.api_secret}
        try:
            with httpx.Client(base_url=self.api.url, headers=headers, timeout=60) as http:
                # Untimed: the connection and the API's first-request work (imports, pools).
                for _ in range(3):
                    self._http_sample(http, group)

                def sample(kind: str) -> tuple[Created, float] | None:
                    if kind == "sequential":
                        return self.direct.sequential(self.numbers.next())
                    return self._http_sample(http, group, respond_async=kind == "accepted")

                samples = self._interleaved(f"http one at a time x{count} (x3 kinds)", count,
                                            ["http", "sequential", "accepted"], sample)
        finally:
            self.api.stop()
            self.api = None
        if not samples["http"]:
            raise BenchError(f"http: no request succeeded; API log: {self.log_dir / 'api.log'}")
        self.metrics["http_single_p50_ms"] = percentile(samples["http"], 50)
        self.metrics["http_single_p95_ms"] = percentile(samples["http"], 95)
        self.details["http"] = {
            "requests": count, "endpoint": "POST /api/sio/createSipTrunkDispatch",
            "api_url": api_url, "api_log": str(self.log_dir / "api.log"),
            "http_ms": summary(samples["http"]),
            "direct_sequential_ms": summary(samples["sequential"]),
            # The API's own part: authentication, validation, admission, storing, enqueueing.
            "respond_async_ms": summary(samples["accepted"]) if samples["accepted"] else None,
            "loadavg_before": load_before, "loadavg_after": machine.loadavg(),
        }

    def _http_sample(self, http: httpx.Client, group: WorkerGroup, *,
                     respond_async: bool = False) -> tuple[Created, float] | None:
        """One request, timed to its answer (the finished one, or with respond_async the 202);
        (objects, seconds), or None if it failed (recorded, its objects deleted)."""
        started = time.perf_counter()
        answer = http.post("/api/sio/createSipTrunkDispatch",
                           json=bench_request(self.numbers.next()),
                           headers={"Prefer": "respond-async"} if respond_async else None)
        seconds = time.perf_counter() - started
        job_id = answer.headers.get("Trunkline-Job-Id", "")
        job = None
        if job_id:
            job = (self._finished_job(job_id, group) if respond_async
                   else self.client.store.get(job_id))
        created = (Created(job.result.inbound_trunk_id, job.result.outbound_trunk_id,
                           job.result.dispatch_rule_id)
                   if job is not None and job.result is not None else None)
        if answer.status_code == (202 if respond_async else 200) and created is not None:
            return created, seconds
        group.check_alive()
        if self.api is not None:
            self.api.check_alive()
        try:
            code = (answer.json().get("error") or {}).get("code")
        except (ValueError, AttributeError):
            code = None
        self.failures.append(Failure("http", job_id or "?",
                                     f"HTTP {answer.status_code} {code}"))
        if created is not None:
            delete_created(self.livekit, created)
        return None

    def _finished_job(self, job_id: str, group: WorkerGroup) -> Job | None:
        deadline = time.monotonic() + STALL_SECONDS
        while time.monotonic() < deadline:
            try:
                return self.client.wait(job_id, timeout=5)
            except WaitTimeout:
                group.check_alive()
        return None

    def derive(self) -> None:
        """Figures that need more than one phase: how far the pipeline is above the floor,
        and the seed user's latency against three sequential direct calls."""
        metrics = self.metrics
        if "celery_noop_throughput" in metrics and "pipeline_throughput" in metrics:
            self.details.setdefault("noop", {})["pipeline_over_noop_throughput"] = (
                metrics["celery_noop_throughput"] / metrics["pipeline_throughput"])
        if "celery_noop_single_p50_ms" in metrics and "pipeline_single_p50_ms" in metrics:
            self.details.setdefault("noop", {})["pipeline_single_minus_noop_ms"] = (
                metrics["pipeline_single_p50_ms"] - metrics["celery_noop_single_p50_ms"])
        if "http_single_p50_ms" in metrics:
            own = self.details["http"]["direct_sequential_ms"]["p50"]
            sequential = metrics.get("direct_sequential_p50_ms", own)
            metrics["http_single_ratio"] = metrics["http_single_p50_ms"] / sequential
            self.details["http"]["ratio_against"] = (
                "single phase direct_sequential_p50_ms" if "direct_sequential_p50_ms"
                in metrics else "this phase's own direct sequential p50")

    def phase_rss(self) -> None:
        count, warmup = self.options.rss_jobs, self.options.effective_rss_warmup
        with self.workers("worker", "rss") as group, \
                Collector(ResultsReader(self._redis(), self.client.store.keys.results)) as c:
            window = max(4 * group.slots, 50)
            self.run_jobs(group, c, warmup, window=window, phase=f"rss warm-up x{warmup}",
                          delete_as_you_go=True)
            self.flush_deletes()
            time.sleep(1.0)
            start = group.rss_kb()
            series: list[tuple[int, float]] = [(0, sum(start.values()) / MB)]
            every = max(1, min(self.options.cleanup_batch, count // 20 or 1))

            def sample(done: int, _event: Event) -> None:
                if done % every == 0:
                    series.append((done, sum(group.rss_kb().values()) / MB))

            t0, t_end, _ = self.run_jobs(group, c, count, window=window,
                                         phase=f"rss x{count}", delete_as_you_go=True,
                                         on_event=sample)
            end = group.rss_kb()
            task = self._task("deleting the last rss objects", 1)
            self.flush_deletes()
            self.progress.remove_task(task)
        start_mb, end_mb = sum(start.values()) / MB, sum(end.values()) / MB
        self.metrics["worker_rss_start_mb"] = start_mb
        self.metrics["worker_rss_end_mb"] = end_mb
        self.metrics["worker_rss_growth_pct"] = (end_mb - start_mb) / start_mb * 100
        self.details["rss"] = {
            "jobs": count, "warmup_jobs": warmup, "processes": len(end),
            "seconds": round(t_end - t0, 3), "jobs_per_second": round(count / (t_end - t0), 2),
            "per_process_start_mb": [round(v / MB, 2) for v in start.values()],
            "per_process_end_mb": [round(v / MB, 2) for v in end.values()],
            "series_mb": [(done, round(mb, 2)) for done, mb in series],
        }

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        wall = time.perf_counter()
        started_at = datetime.now(UTC).isoformat()
        durations: dict[str, float] = {}
        phases = self.options.phases
        load_start = machine.loadavg()
        with self.progress:
            try:
                self.setup()
                if "overhead" in phases:
                    t = time.perf_counter()
                    self.phase_overhead()
                    durations["overhead"] = time.perf_counter() - t
                if "noop" in phases:
                    t = time.perf_counter()
                    self.phase_noop()
                    durations["noop"] = time.perf_counter() - t
                if {"throughput", "single", "http"} & set(phases):
                    with self.workers("worker", "bench") as group:
                        if "throughput" in phases:
                            t = time.perf_counter()
                            self.phase_throughput(group)
                            durations["throughput"] = time.perf_counter() - t
                        if "single" in phases:
                            t = time.perf_counter()
                            self.phase_single(group)
                            durations["single"] = time.perf_counter() - t
                        if "http" in phases:
                            t = time.perf_counter()
                            self.phase_http(group)
                            durations["http"] = time.perf_counter() - t
                if "rss" in phases:
                    t = time.perf_counter()
                    self.phase_rss()
                    durations["rss"] = time.perf_counter() - t
                self.derive()
            finally:
                self.teardown()
        return self.compose(started_at, time.perf_counter() - wall, durations, load_start)

    def compose(self, started_at: str, seconds: float, durations: dict[str, float],
                load_start: list[float]) -> dict[str, Any]:
        options = self.options
        parameters = asdict(options)
        parameters.update(
            json_path=str(options.json_path) if options.json_path else None,
            log_dir=str(self.log_dir), worker_concurrency=options.effective_worker_concurrency,
            rss_warmup=options.effective_rss_warmup, phases=list(options.phases),
            worker_env=dict(options.worker_env),
            pipeline_slots=options.workers * options.effective_worker_concurrency,
            worker_command=WorkerGroup("worker", options.workers,
                                       options.effective_worker_concurrency, options.pool, {},
                                       self.log_dir, options.worker_loglevel).command(0)[1:],
        )
        versions = machine.versions()
        versions["redis_server"] = self.redis.info("server").get("redis_version")
        versions["livekit_server"] = (local_livekit_version()
                                      if self.endpoints.local_stack else None)
        result: dict[str, Any] = {key: round(value, 3) for key, value in self.metrics.items()}
        result.update(
            run_id=self.run_id, started_at=started_at, duration_seconds=round(seconds, 1),
            phase_seconds={k: round(v, 1) for k, v in durations.items()},
            parameters=parameters, machine=machine.machine(), versions=versions,
            endpoints={"redis": self.redis_url, "livekit": self.endpoints.livekit_url,
                       "local_stack": self.endpoints.local_stack},
            loadavg={"start": load_start, "end": machine.loadavg()},
            failures=[asdict(f) for f in self.failures],
            details=self.details,
        )
        return result
