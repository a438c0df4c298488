"""The benchmark's phases, run in one go against one stack.

overhead    probe workers; one job at a time at 0 existing numbers, then again after seeding
            --seed-numbers numbers; own part = end to end minus time inside LiveKit calls
throughput  N setups directly (C threads) and N jobs through the pipeline (C job slots)
single      one at a time, interleaved: three sequential direct calls, the saga's
            concurrent direct calls, one pipeline job
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
from pathlib import Path
from typing import Any, cast

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
from bench.keys import LIVE_KEY, LIVE_SECONDS, MARKER_KEY, PROBE_KEY
from bench.options import BenchError, Options
from bench.pipeline import Collector, Event, ResultsReader, submit
from bench.profile import sampling, summarise
from bench.seed import seed_numbers, unseed
from bench.stack import Endpoints, StackError, local_livekit_version, resolve
from bench.stats import percentile, summary
from bench.workers import WorkerGroup
from producers import ProvisioningClient
from worker.app import create_app
from worker.config import Settings
from worker.livekit import LiveKitSIP
from worker.runtime import redis_client
from worker.store import JobStore
from worker.vault import Vault

STALL_SECONDS = 120.0
MB = 1024.0  # VmRSS is in KiB


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
        self.redis = redis.Redis.from_url(self.redis_url)
        self._claim_database()
        secret_key = Vault.generate_key()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TRUNKLINE_", "LIVEKIT_", "CELERY_", "PROMETHEUS_"))
               and k != "REDIS_URL"}
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

    def _client(self) -> ProvisioningClient:
        return ProvisioningClient(
            JobStore(redis_client(self.settings), results_maxlen=self.settings.results_maxlen),
            self.vault, create_app(self.settings), self.settings)

    def _close_client(self) -> None:
        self.client.close()
        self.client.app.close()

    def teardown(self) -> None:
        self._stopping.set()
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
    def workers(self, app: str, label: str) -> Iterator[WorkerGroup]:
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
            with Collector(ResultsReader(self.redis_url, self.client.store.keys.results)) as c:
                self.run_jobs(group, c, max(10, 2 * group.slots), window=group.slots * 2,
                              phase=f"{label} warm-up", delete_as_you_go=True)
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
                 ) -> tuple[float, float, list[Event]]:
        """Submit `count` jobs keeping at most `window` in flight; returns (t0, t_end, events).

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
                pending.add(submit(self.client, self.org_id,
                                   bench_request(self.numbers.next())))
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
        reader = ResultsReader(self.redis_url, self.client.store.keys.results)
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
        count, rounds = self.options.jobs, min(self.options.rounds, self.options.jobs)
        sizes = [count // rounds + (1 if i < count % rounds else 0) for i in range(rounds)]
        meter = CpuMeter(self._cpu_parties(group))
        totals: dict[str, dict[str, Any]] = {
            side: {"jobs": 0, "seconds": 0.0, "cpu": {}, "redis": {}, "rounds": []}
            for side in ("direct", "pipeline")}
        load_before = machine.loadavg()
        for index, size in enumerate(sizes):
            order = ("direct", "pipeline") if index % 2 == 0 else ("pipeline", "direct")
            for side in order:
                before = meter.snapshot()
                calls_before = self._redis_calls()
                if side == "direct":
                    seconds, created = self._direct_batch(size, f"round {index + 1}/{rounds}")
                else:
                    seconds, created = self._pipeline_batch(group, size,
                                                            f"round {index + 1}/{rounds}")
                used = CpuMeter.delta(before, meter.snapshot())
                calls = self._redis_calls()
                total = totals[side]
                for command, count_after in calls.items():
                    made = count_after - calls_before.get(command, 0)
                    if made:
                        total["redis"][command] = total["redis"].get(command, 0) + made
                total["jobs"] += size
                total["seconds"] += seconds
                for name, value in used.items():
                    total["cpu"][name] = total["cpu"].get(name, 0.0) + value
                total["rounds"].append({"jobs": size, "seconds": round(seconds, 3),
                                        "jobs_per_second": round(size / seconds, 2)})
                self.delete_now(created, f"deleting {side} objects")
        for total in totals.values():
            total["jobs_per_second"] = total["jobs"] / total["seconds"]
            total["cpu_ms_per_setup"] = {name: round(value * 1000 / total["jobs"], 3)
                                         for name, value in total["cpu"].items()}
            total["cpu_ms_per_setup"]["all"] = round(
                sum(total["cpu"].values()) * 1000 / total["jobs"], 3)
            del total["cpu"]
            # Every command the Redis server ran (LiveKit's own included), per setup.
            per_setup = {name: round(n / total["jobs"], 2)
                         for name, n in sorted(total["redis"].items(), key=lambda kv: -kv[1])}
            total["redis_commands_per_setup"] = {"all": round(sum(per_setup.values()), 2),
                                                 **per_setup}
            del total["redis"]
        self.metrics["direct_throughput"] = totals["direct"]["jobs_per_second"]
        self.metrics["pipeline_throughput"] = totals["pipeline"]["jobs_per_second"]
        self.metrics["throughput_ratio"] = (self.metrics["pipeline_throughput"]
                                            / self.metrics["direct_throughput"])
        self.details["throughput"] = {
            "jobs_per_side": count, "rounds": rounds, "direct_threads":
            self.options.concurrency, "pipeline_slots": group.slots,
            "direct": totals["direct"], "pipeline": totals["pipeline"],
            "worker_profile_pct": summarise(self.profiles) if self.profiles else None,
            "loadavg_before": load_before, "loadavg_after": machine.loadavg(),
        }

    def _redis_calls(self) -> dict[str, int]:
        """Commands the Redis server has run so far, by name (INFO commandstats)."""
        stats = self.redis.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in stats.items() if isinstance(value, dict)}

    def _cpu_parties(self, group: WorkerGroup) -> dict[str, Callable[[], list[int]]]:
        parties: dict[str, Callable[[], list[int]]] = {"workers": group.pids}
        if self.endpoints.local_stack:
            for name, pid in stack_pids().items():
                parties[name] = _just(pid)
        return parties

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
                Collector(ResultsReader(self.redis_url, self.client.store.keys.results)) as c:
            t0, t_end, events = self.run_jobs(
                group, c, count, window=count,
                phase=f"pipeline x{count} ({group.slots} slots) {label}")
        self.profiles.extend(paths)
        return t_end - t0, [Created.from_payload(e.payload) for e in events
                            if e.status == "succeeded"]

    def phase_single(self, group: WorkerGroup) -> None:
        count = self.options.single_jobs
        samples: dict[str, list[float]] = {"sequential": [], "concurrent": [], "pipeline": []}
        kinds = list(samples)
        reader = ResultsReader(self.redis_url, self.client.store.keys.results)
        task = self._task(f"one at a time x{count} (x3 kinds)", count)
        load_before = machine.loadavg()
        try:
            for i in range(count):
                made: list[Created] = []
                # Rotate the order so that none of the three always goes first.
                for kind in kinds[i % 3:] + kinds[:i % 3]:
                    number = self.numbers.next()
                    if kind == "sequential":
                        created, seconds = self.direct.sequential(number)
                    elif kind == "concurrent":
                        created, seconds = self.direct.concurrent(number)
                    else:
                        started = time.perf_counter()
                        job_id = submit(self.client, self.org_id, bench_request(number))
                        event = self._wait_single(reader, group, job_id, "single")
                        seconds = event.at - started
                        if event.status != "succeeded":
                            continue
                        created = Created.from_payload(event.payload)
                    samples[kind].append(seconds * 1000)
                    made.append(created)
                # Untimed: every sample starts from the same (empty) LiveKit.
                for created in made:
                    delete_created(self.livekit, created)
                self.progress.advance(task)
        finally:
            reader.close()
            self.progress.remove_task(task)
        pipe = samples["pipeline"]
        self.metrics["pipeline_single_p50_ms"] = percentile(pipe, 50)
        self.metrics["pipeline_single_p95_ms"] = percentile(pipe, 95)
        self.metrics["pipeline_single_p99_ms"] = percentile(pipe, 99)
        self.metrics["direct_sequential_p50_ms"] = percentile(samples["sequential"], 50)
        self.details["single"] = {
            "jobs_each": count,
            "pipeline_ms": summary(pipe),
            "direct_sequential_ms": summary(samples["sequential"]),
            "direct_concurrent_ms": summary(samples["concurrent"]),
            "loadavg_before": load_before, "loadavg_after": machine.loadavg(),
        }

    def phase_rss(self) -> None:
        count, warmup = self.options.rss_jobs, self.options.effective_rss_warmup
        with self.workers("worker", "rss") as group, \
                Collector(ResultsReader(self.redis_url, self.client.store.keys.results)) as c:
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
                if "throughput" in phases or "single" in phases:
                    with self.workers("worker", "bench") as group:
                        if "throughput" in phases:
                            t = time.perf_counter()
                            self.phase_throughput(group)
                            durations["throughput"] = time.perf_counter() - t
                        if "single" in phases:
                            t = time.perf_counter()
                            self.phase_single(group)
                            durations["single"] = time.perf_counter() - t
                if "rss" in phases:
                    t = time.perf_counter()
                    self.phase_rss()
                    durations["rss"] = time.perf_counter() - t
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
