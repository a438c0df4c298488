"""`python -m bench.soak`: Redis memory under retention, over 100,000 jobs (issue 14).

What it pushes through, per job, is Trunkline's own code on a real redis-server: the
producer's `ProvisioningClient.submit`/`release` (validation, sealing, the create script with
its Celery message and idempotency key), the broker message taken off the queue list as a
worker's BRPOP would, then the worker's `JobRunner.run` (claim script, per-number lock,
checkpoints, the saga, the finish script with its event and phone-number record). Two things
are not the deployed ones, to fit 100,000 jobs on two shared cores: Celery's consumer (the
message is popped and the runner called in this process) and LiveKit (an in-memory SIP API
behind `httpx.MockTransport`, answering creates and deletes; `LiveKitSIP` itself, tokens and
all, is the real client). Jobs alternate create and release over a pool of `--numbers`
numbers, so the live state (phone-number records) stays bounded and what grows is what
retention is for; one create in `--refuse-every` is refused by the fake (a permanent 400), so
it compensates and is dead-lettered.

Retention (`worker.retention.Retention`, the module the beat task runs) is applied every
`--retention-every` jobs with every horizon at `--horizon` seconds, and Redis `used_memory` is
sampled every `--sample-every` jobs. Reported: the memory slope (bytes per job, least squares)
over the first window (filling, before anything is old enough to go) and the last window;
since an age bound keeps rate x horizon jobs, also a fit of memory against the jobs kept and
its residual per job run (a leak shows there whatever the rate did); and what one kept job
costs in Redis bytes, two ways (the fit's slope, and the sum of MEMORY USAGE over the keys a
job leaves).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import redis
from rich.console import Console

from bench.api import free_port
from bench.options import at_least
from bench.stack import with_db
from producers import ProvisioningClient
from worker.app import create_app
from worker.config import Settings
from worker.lifecycle import ReleaseSaga, UpdateSaga
from worker.livekit import LiveKitSIP
from worker.records import JobKind
from worker.retention import Retention, RetentionPolicy
from worker.runner import JobRunner, Saga
from worker.saga import ProvisioningSaga
from worker.store import JobStore
from worker.vault import Vault

FAKE_LIVEKIT = "http://livekit.soak.invalid"
FAKE_KEY, FAKE_SECRET = "APIsoak", "soak-secret-long-enough-for-hs256-signing"
REFUSED_PREFIX = "+1555999"
ORGS = 10


class InMemorySIP:
    """LiveKit's SIP Twirp routes a saga and a release call, in memory and thread-safe.

    Creates answer the request with a new id; deletes forget it. A create of an inbound
    trunk for a REFUSED_PREFIX number is refused as LiveKit refuses a bad config (400).
    """

    def __init__(self) -> None:
        self.objects: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        body = json.loads(request.content)
        if method in ("CreateSIPInboundTrunk", "CreateSIPOutboundTrunk"):
            trunk = body["trunk"]
            if method == "CreateSIPInboundTrunk" and any(
                    n.startswith(REFUSED_PREFIX) for n in trunk.get("numbers", [])):
                return httpx.Response(400, json={"code": "invalid_argument",
                                                 "msg": "soak: this number is refused"})
            return httpx.Response(200, json={**trunk, "sip_trunk_id": self._new("ST_")})
        if method == "CreateSIPDispatchRule":
            rule = body["dispatch_rule"]
            return httpx.Response(200, json={**rule, "sip_dispatch_rule_id": self._new("SDR_")})
        if method.startswith("List"):
            # Only a recovering run lists (nothing is adopted here): nothing is found.
            return httpx.Response(200, json={"items": []})
        if method in ("DeleteSIPTrunk", "DeleteSIPDispatchRule"):
            with self._lock:
                self.objects.discard(body.get("sip_trunk_id") or body.get("sip_dispatch_rule_id"))
            return httpx.Response(200, json={})
        return httpx.Response(501, json={"code": "unimplemented", "msg": method})

    def _new(self, prefix: str) -> str:
        with self._lock:
            made = f"{prefix}{next(self._ids)}"
            self.objects.add(made)
        return made


@dataclass(frozen=True)
class SoakOptions:
    jobs: int = 100_000
    numbers: int = 500
    horizon: float = 60.0
    retention_every: int = 1_000
    sample_every: int = 1_000
    refuse_every: int = 100
    lanes: int = 4
    redis_url: str | None = None
    redis_db: int = 4
    own_redis_port: int = 0
    json_path: Path | None = None


@dataclass
class Sample:
    jobs: int
    seconds: float
    used_memory: int
    keys: int
    finished_jobs: int
    results: int
    dead_letters: int


@dataclass
class SoakResult:
    options: dict[str, Any]
    jobs: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    jobs_per_second: float = 0.0
    deleted: dict[str, int] = field(
        default_factory=lambda: {"jobs": 0, "dead_letters": 0, "results": 0})
    retention_seconds: float = 0.0
    retention_runs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:  # linear_regression needs two distinct x values
        return 0.0
    return statistics.linear_regression(xs, [y for _, y in points]).slope


@contextlib.contextmanager
def own_redis(port: int = 0) -> Iterator[str]:
    """A redis-server of this run's own on loopback (used_memory is server-wide), no
    persistence; stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: run `bash ops/stack.sh install`, or "
                         "pass --redis-url")
    port = port or free_port()
    folder = tempfile.mkdtemp(prefix="trunkline-soak-")
    process = subprocess.Popen(  # noqa: S603  # a fixed binary and arguments
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder, "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


class Lane:
    """One producer-and-worker pair, as one worker process would be: its own Redis
    connections, app, client and runner. Lane `n` of `lanes` cycles its own numbers."""

    def __init__(self, settings: Settings, sip: InMemorySIP, lane: int, lanes: int,
                 numbers: int) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.store = JobStore.for_settings(self.redis, settings)
        vault = Vault(settings.secret_keys)
        self.app = create_app(settings)
        self.client = ProvisioningClient(self.store, vault, self.app, settings)
        self.http = httpx.Client(transport=httpx.MockTransport(sip.handle))
        self.livekit = LiveKitSIP(FAKE_LIVEKIT, FAKE_KEY, FAKE_SECRET, http=self.http)
        self.saga = ProvisioningSaga(self.livekit, self.store, vault)
        lifecycle: dict[JobKind, Saga] = {
            JobKind.UPDATE: UpdateSaga(self.livekit, self.store, vault),
            JobKind.RELEASE: ReleaseSaga(self.livekit, self.store),
        }
        self.runner = JobRunner(self.store, self.saga, settings, lifecycle=lifecycle)
        self.slots = list(range(lane, numbers, lanes))
        self.provisioned: set[str] = set()
        self.creates = 0
        self.runs = 0

    def next_job(self, refuse_every: int) -> str:
        """Submit the lane's next job (a release when its number is provisioned, else a
        create), take its broker message as a worker would, and run it; returns the outcome."""
        slot = self.slots[self.runs // 2 % len(self.slots)]
        self.runs += 1
        number, org = f"+1555{slot:07d}", f"soak-org-{slot % ORGS}"
        if number in self.provisioned:
            job_id = self.client.release(org_id=org, number=number)
            self.provisioned.discard(number)
        else:
            self.creates += 1
            refused = bool(refuse_every) and self.creates % refuse_every == 0
            job_id = self.client.submit(
                org_id=org, idempotency_key=f"soak-{slot}-{self.runs}",
                request={"name": f"Soak line {slot}",
                         "number": f"{REFUSED_PREFIX}{slot:04d}" if refused else number,
                         "outboundPstn": "sip.provider.example", "authUserName": "soak",
                         "authPassword": "soak-password"})
            if not refused:
                self.provisioned.add(number)
        # What a worker's BRPOP takes; the message carries only the job id.
        if self.redis.rpop(self.settings.queue) is None:
            return "no broker message"
        return self.runner.run(job_id).kind

    def close(self) -> None:
        self.saga.close()
        self.livekit.close()
        self.http.close()
        self.app.close()
        self.redis.close()


class Soak:
    def __init__(self, options: SoakOptions, redis_url: str, console: Console) -> None:
        self.options = options
        self.console = console
        self.settings = Settings(
            redis_url=redis_url, livekit_url=FAKE_LIVEKIT, livekit_api_key=FAKE_KEY,
            livekit_api_secret=FAKE_SECRET, secret_keys=(Vault.generate_key(),),
            # An idempotency key must not outlive its job (the settings' rule): at most the
            # horizon.
            idempotency_ttl_seconds=max(1, int(options.horizon)), retention_interval=0)
        self.redis = redis.Redis.from_url(redis_url)
        self.store = JobStore.for_settings(self.redis, self.settings)
        self.sip = InMemorySIP()
        self.lanes = [Lane(self.settings, self.sip, n, options.lanes, options.numbers)
                      for n in range(options.lanes)]
        self.retention = Retention(self.store, RetentionPolicy(
            jobs_seconds=options.horizon, dead_letters_seconds=options.horizon,
            results_seconds=options.horizon))
        self._done = 0
        self._progress = threading.Condition()

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()
        self.redis.close()

    def run(self) -> SoakResult:
        options = self.options
        result = SoakResult(options={k: str(v) if isinstance(v, Path) else v
                                     for k, v in asdict(options).items()})
        self.redis.flushdb()
        baseline = self._sample(0, 0.0)
        result.samples.append(baseline)
        started = time.monotonic()
        shares = [options.jobs // options.lanes + (1 if n < options.jobs % options.lanes else 0)
                  for n in range(options.lanes)]
        threads = [threading.Thread(target=self._drive, args=(lane, share, result),
                                    name=f"soak-lane-{n}", daemon=True)
                   for n, (lane, share) in enumerate(zip(self.lanes, shares, strict=True))]
        for thread in threads:
            thread.start()
        # Retention runs beside the lanes, as the beat task runs beside the workers.
        next_retention, next_sample = options.retention_every, options.sample_every
        while True:
            target = min(next_retention, next_sample, options.jobs)
            with self._progress:
                self._progress.wait_for(
                    lambda target=target: self._done >= target  # type: ignore[misc]
                    or not any(t.is_alive() for t in threads), timeout=60)
                done = self._done
            finished = done >= options.jobs or not any(t.is_alive() for t in threads)
            if done >= next_retention or finished:
                report = self.retention.apply()
                for kind, count in report.deleted.items():
                    result.deleted[kind] += count
                result.retention_seconds += report.seconds
                result.retention_runs += 1
                next_retention = (done // options.retention_every + 1) * options.retention_every
            if done >= next_sample or finished:
                sample = self._sample(done, time.monotonic() - started)
                result.samples.append(sample)
                next_sample = (done // options.sample_every + 1) * options.sample_every
                self.console.print(
                    f"{done:>7} jobs {sample.seconds:7.1f} s used_memory "
                    f"{sample.used_memory / 1_048_576:7.2f} MiB, kept: "
                    f"{sample.finished_jobs} jobs, {sample.results} results, "
                    f"{sample.dead_letters} dead letters, {sample.keys} keys")
            if finished:
                break
        for thread in threads:
            thread.join()
        result.jobs = self._done
        result.seconds = round(time.monotonic() - started, 1)
        result.jobs_per_second = round(result.jobs / result.seconds, 1)
        result.summary = self._summarise(result, baseline)
        result.summary["livekit_objects_left"] = len(self.sip.objects)
        result.summary["numbers_provisioned_left"] = sum(len(lane.provisioned)
                                                         for lane in self.lanes)
        result.summary["broker_queue_left"] = int(self.redis.llen(self.settings.queue))
        return result

    def _drive(self, lane: Lane, share: int, result: SoakResult) -> None:
        for _ in range(share):
            try:
                kind = lane.next_job(self.options.refuse_every)
            except Exception as exc:  # reported, and this lane stops
                kind = f"error: {type(exc).__name__}: {exc}"
            with self._progress:
                result.outcomes[kind] = result.outcomes.get(kind, 0) + 1
                if kind != "finished":
                    result.failures.append(f"job {self._done}: {kind}")
                self._done += 1
                self._progress.notify_all()
            if kind.startswith("error"):
                return

    def _sample(self, jobs: int, seconds: float) -> Sample:
        pipe = self.redis.pipeline(transaction=False)
        pipe.info("memory")
        pipe.dbsize()
        pipe.zcard(self.store.keys.terminal)
        pipe.xlen(self.store.keys.results)
        pipe.zcard(self.store.keys.dead_letters)
        memory, keys, finished, results, letters = pipe.execute()
        return Sample(jobs, round(seconds, 2), int(memory["used_memory"]), int(keys),
                      int(finished), int(results), int(letters))

    def _summarise(self, result: SoakResult, baseline: Sample) -> dict[str, Any]:
        samples = result.samples[1:]
        window = max(2, len(samples) // 4)
        # Filling: until retention first finds something old enough (the horizon).
        filling = [s for s in samples if s.seconds <= self.options.horizon] or samples[:window]
        last = samples[-window:]
        steady = [s for s in samples if s.seconds >= 2 * self.options.horizon]

        def per_job(points: list[Sample]) -> float:
            return round(slope([(s.jobs, s.used_memory) for s in points]), 1)

        end = samples[-1]
        kept_jobs = end.finished_jobs
        mean_steady = (sum(s.used_memory for s in steady) / len(steady)) if steady else None
        mean_kept = (sum(s.finished_jobs for s in steady) / len(steady)) if steady else None
        # What is kept is rate x horizon, so memory follows the rate; per kept job it should not.
        per_kept = sorted((s.used_memory - baseline.used_memory) / s.finished_jobs
                          for s in steady if s.finished_jobs)
        return {
            "first_window": {"jobs": [filling[0].jobs, filling[-1].jobs],
                             "bytes_per_job": per_job(filling)},
            "last_window": {"jobs": [last[0].jobs, last[-1].jobs],
                            "bytes_per_job": per_job(last)},
            "steady": {
                "jobs": [steady[0].jobs, steady[-1].jobs] if steady else None,
                "bytes_per_job": per_job(steady) if len(steady) > 1 else None,
                "used_memory_min": min(s.used_memory for s in steady) if steady else None,
                "used_memory_max": max(s.used_memory for s in steady) if steady else None,
                "finished_jobs_kept_mean": round(mean_kept, 1) if mean_kept else None,
                "bytes_per_kept_job": {
                    "min": round(per_kept[0], 1), "median": round(statistics.median(per_kept), 1),
                    "max": round(per_kept[-1], 1)} if per_kept else None,
            },
            "fit": self._fit(steady),
            "used_memory_baseline": baseline.used_memory,
            "used_memory_end": end.used_memory,
            "used_memory_peak": max(s.used_memory for s in samples),
            "finished_jobs_kept_end": kept_jobs,
            "bytes_per_kept_job_from_memory": (
                round((mean_steady - baseline.used_memory) / mean_kept, 1)
                if mean_steady is not None and mean_kept else None),
            "bytes_per_job_by_key": self._bytes_by_key(),
        }

    @staticmethod
    def _fit(steady: list[Sample]) -> dict[str, float] | None:
        """used_memory = fixed + per_kept_job x finished jobs kept, fitted over the steady
        samples, and what is left over per job run: ~0 when memory is what retention keeps
        and nothing else grows (a leak would show here, whatever the rate did)."""
        if len(steady) < 3:
            return None
        per_kept = slope([(s.finished_jobs, s.used_memory) for s in steady])
        fixed = (statistics.mean(s.used_memory for s in steady)
                 - per_kept * statistics.mean(s.finished_jobs for s in steady))
        residuals = [(s.jobs, s.used_memory - fixed - per_kept * s.finished_jobs)
                     for s in steady]
        return {"fixed_bytes": round(fixed), "bytes_per_kept_job": round(per_kept, 1),
                "residual_bytes_per_job": round(slope(residuals), 2),
                "residual_min": round(min(r for _, r in residuals)),
                "residual_max": round(max(r for _, r in residuals))}

    def _bytes_by_key(self) -> dict[str, float]:
        """MEMORY USAGE of what one kept job leaves, from a sample of kept jobs; shared
        structures (indexes, the stream) divided by their length."""
        keys = self.store.keys
        ids = [i.decode() for i in cast(list[bytes], self.redis.zrandmember(keys.terminal, 50))]

        def mean_usage(names: list[str]) -> float:
            sizes = [self.redis.memory_usage(n) for n in names]
            known = [int(s) for s in sizes if s is not None]
            return round(sum(known) / len(known), 1) if known else 0.0

        def per_member(name: str, length: int) -> float:
            size = self.redis.memory_usage(name)
            return round(int(size) / length, 1) if size and length else 0.0

        orgs = [keys.jobs_by_org(f"soak-org-{n}") for n in range(ORGS)]
        org_members = sum(int(self.redis.zcard(o)) for o in orgs)
        org_bytes = sum(int(self.redis.memory_usage(o) or 0) for o in orgs)
        jobs = [json.loads(raw) for raw in cast(list[bytes | None], self.redis.mget(
            [keys.job(i) for i in ids])) if raw]
        keyed = [keys.idempotency(j["org_id"], j["idempotency_key"]) for j in jobs
                 if j.get("idempotency_key")]
        live_keys = [k for k in keyed if self.redis.exists(k)]
        found = {
            "job_record": mean_usage([keys.job(i) for i in ids]),
            "published_marker": mean_usage([keys.published(j["job_id"], j["run"]) for j in jobs]),
            "results_entry": per_member(keys.results, int(self.redis.xlen(keys.results))),
            "terminal_index_entry": per_member(keys.terminal,
                                               int(self.redis.zcard(keys.terminal))),
            "org_index_entry": round(org_bytes / org_members, 1) if org_members else 0.0,
        }
        # Creates carry an idempotency key here (about half the jobs); it lives its TTL.
        found["idempotency_key_share"] = round(
            mean_usage(live_keys) * len(keyed) / len(jobs), 1) if jobs else 0.0
        found["total"] = round(sum(found.values()), 1)
        return found


# Whole-number options: flag, default, minimum, help.
COUNTS = (
    ("--jobs", 100_000, 1, "jobs in all"),
    ("--numbers", 500, 1, "numbers cycled through create and release"),
    ("--retention-every", 1000, 1, "apply retention every this many jobs"),
    ("--sample-every", 1000, 1, "sample Redis used_memory every this many jobs"),
    ("--refuse-every", 100, 0, "one create in this many is refused and dead-lettered (0: none)"),
    ("--lanes", 4, 1, "producer-and-worker pairs running at once, one thread each"),
    ("--own-redis-port", 0, 0, "loopback port of the run's own redis-server (0: a free one)"),
    ("--redis-db", 4, 0, "database used with --redis-url"),
)


def parse_args(argv: list[str] | None = None) -> SoakOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Redis memory under retention over many jobs (see the module docstring). "
                    "Starts a redis-server of its own unless --redis-url is given.")
    for flag, default, minimum, text in COUNTS:
        parser.add_argument(flag, type=at_least(minimum), default=default,
                            help=f"{text} (default {default})")
    parser.add_argument("--horizon", type=float, default=60.0,
                        help="retention of finished jobs, dead letters and results, seconds "
                             "(default 60)")
    parser.add_argument("--redis-url", default=None,
                        help="use this Redis (its --redis-db is flushed) instead of one of "
                             "the run's own; used_memory is server-wide, so others' data counts")
    parser.add_argument("--json", dest="json_path", type=Path, default=None,
                        help="write the result here")
    args = parser.parse_args(argv)
    if args.horizon <= 0:
        parser.error("--horizon must be positive")
    if args.numbers < args.lanes:
        parser.error("--numbers must be at least --lanes (each lane cycles numbers of its own)")
    return SoakOptions(**vars(args))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    console = Console(stderr=True)
    with contextlib.ExitStack() as stack:
        if options.redis_url:
            url = with_db(options.redis_url, options.redis_db)
        else:
            url = stack.enter_context(own_redis(options.own_redis_port))
        soak = Soak(options, url, console)
        stack.callback(soak.close)
        result = soak.run()
    document = asdict(result)
    text = json.dumps(document, indent=1)
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(text)
        console.print(f"wrote {options.json_path}")
    Console().print_json(json.dumps(result.summary | {
        "jobs": result.jobs, "seconds": result.seconds, "jobs_per_second": result.jobs_per_second,
        "deleted": result.deleted, "outcomes": result.outcomes, "failures": result.failures}))
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
