"""Fault injection against the real stack: random SIGKILLs, a flaky network, LiveKit down,
Redis restarted. Every scenario ends with the same ledger check: one set of LiveKit objects and
one record per succeeded job, nothing else on LiveKit, exactly one terminal event per job.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from producers import ProvisioningClient
from tests.integration.conftest import (
    REPO,
    SEED_REQUEST,
    STACK_DEFAULTS,
    Stack,
    WorkerFactory,
    WorkerProcess,
    everything_on_livekit,
    wait_for,
)
from tests.support.faultproxy import Action, DownMode, FaultProxy, Rule
from worker.livekit import LiveKitSIP
from worker.records import Job, JobState, StepName
from worker.saga import read_tag
from worker.store import RESULTS_STREAM, JobStore

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("clean")]

SEED = int(os.environ.get("TRUNKLINE_CHAOS_SEED", "20261127"))


def numbers(count: int, start: int = 0) -> list[str]:
    return [f"+1555{2000000 + start + i:07d}" for i in range(count)]


def submit_all(client: ProvisioningClient, org: str, batch: list[str]) -> list[str]:
    return [client.submit(org_id=org, request={**SEED_REQUEST, "number": n}) for n in batch]


def wait_all(client: ProvisioningClient, job_ids: list[str], timeout: float,
             worker: WorkerProcess | None = None) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker is not None and not worker.alive:
            worker.start()
        jobs = [client.get(job_id) for job_id in job_ids]
        if all(job.state.terminal for job in jobs):
            return jobs
        time.sleep(0.25)
    states = Counter(client.get(job_id).state.value for job_id in job_ids)
    pytest.fail(f"jobs not finished after {timeout}s: {dict(states)}")


def assert_ledger(jobs: list[Job], livekit: LiveKitSIP, db: redis.Redis) -> None:
    """One set of objects and one record per succeeded job; nothing else; one event each."""
    succeeded = [job for job in jobs if job.state is JobState.SUCCEEDED]
    results = [job.result for job in succeeded if job.result is not None]
    assert len(results) == len(succeeded)
    on_livekit = everything_on_livekit(livekit)
    assert on_livekit["inbound"] == sorted(r.inbound_trunk_id for r in results), "orphans"
    assert on_livekit["outbound"] == sorted(r.outbound_trunk_id for r in results), "orphans"
    assert on_livekit["rules"] == sorted(r.dispatch_rule_id for r in results), "orphans"
    store = JobStore(db)
    for job in succeeded:
        record = store.get_number(job.number)
        assert record is not None
        assert record.job_id == job.job_id
    for job in jobs:
        record = store.get_number(job.number)
        if job.state is JobState.FAILED:
            assert record is None or record.job_id != job.job_id
    events = Counter(event["job_id"] for event in all_events(db))
    assert {job.job_id: events[job.job_id] for job in jobs} == {job.job_id: 1 for job in jobs}
    assert sum(events.values()) == len(jobs)


def all_events(db: redis.Redis) -> list[dict[str, str]]:
    client: Any = db
    return [{k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in client.xrange(RESULTS_STREAM)]


# One budget for all 20 rounds, so the waits fit under the test's cap: 30 s for the first worker
# start + 540 s for the rounds (each round's waits get what is left of it, at most 15 s until
# the round runs and 90 s until it ends) + 30 s for a worker restart begun just before the
# budget ran out = 600 s. The test took 238 s with both cores hogged by stress-ng.
SIGKILL_ROUNDS_BUDGET = 540


@pytest.mark.timeout(30 + SIGKILL_ROUNDS_BUDGET + 30)
def test_random_sigkills_over_200_runs(
    worker_factory: WorkerFactory, client_factory: Callable[..., ProvisioningClient],
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """Seeded random SIGKILLs of the worker's process group while 200 jobs run."""
    rng = random.Random(SEED)
    # Producers and workers share their settings: the sweep deadline comes from both.
    client = client_factory(TRUNKLINE_VISIBILITY_TIMEOUT="10")
    worker = worker_factory(start=False, concurrency=4, TRUNKLINE_VISIBILITY_TIMEOUT="10")
    worker.start()
    rounds, per_round = 20, 10
    all_jobs: list[Job] = []
    kills = 0
    budget_ends = time.monotonic() + SIGKILL_ROUNDS_BUDGET
    for round_no in range(rounds):
        job_ids = submit_all(client, "org_chaos", numbers(per_round, round_no * per_round))
        # Kill once the round is under way (however loaded the machine), at a random moment.
        started = time.monotonic()
        running_by = min(started + 15, budget_ends)
        while time.monotonic() < running_by and not any(
                client.get(job_id).state is JobState.RUNNING for job_id in job_ids):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        if worker.alive:
            worker.kill()
            kills += 1
        left = budget_ends - time.monotonic()
        all_jobs += wait_all(client, job_ids, timeout=max(1.0, min(90.0, left)), worker=worker)
    interrupted = sum(1 for job in all_jobs if job.attempts >= 2)
    print(f"seed={SEED} kills={kills} jobs={len(all_jobs)} interrupted mid-run={interrupted}")
    assert len(all_jobs) >= 200
    assert kills == rounds
    assert interrupted >= rounds // 2  # the kills really landed inside running jobs
    assert all(job.state is JobState.SUCCEEDED for job in all_jobs), Counter(
        job.error.code for job in all_jobs if job.error)
    assert_ledger(all_jobs, livekit, redis_db)


def test_flaky_network_to_livekit_makes_exactly_one_object_per_step(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """Resets, lost responses, slow answers and 503s on every call: one object per step."""
    rng = random.Random(SEED + 1)
    with FaultProxy(stack.livekit_url) as proxy:
        worker_factory(concurrency=4, LIVEKIT_URL=proxy.url, TRUNKLINE_LIVEKIT_TIMEOUT="1",
                       TRUNKLINE_MAX_ATTEMPTS="30")
        methods = ["CreateSIPInboundTrunk", "CreateSIPOutboundTrunk", "CreateSIPDispatchRule",
                   "ListSIPInboundTrunk", "ListSIPOutboundTrunk", "ListSIPDispatchRule"]
        # Each create loses its response at least once: "executed, response lost" per step.
        for method in methods[:3]:
            proxy.add_rule(Rule(Action.RESPONSE_LOST, method=method, times=3))
        for _ in range(40):
            action = rng.choice([Action.RESET_BEFORE, Action.RESPONSE_LOST, Action.ERROR,
                                 Action.DELAY])
            proxy.add_rule(Rule(action, method=rng.choice(methods), times=1,
                                status=503, seconds=1.4))
        job_ids = submit_all(client, "org_net", numbers(20, 500))
        jobs = wait_all(client, job_ids, timeout=240)
        proxy.wait_idle()
        actions = Counter(r.action for r in proxy.requests)
    print(f"seed={SEED + 1} proxy actions: {dict(actions)}")
    assert actions["response_lost"] >= 9
    assert actions["reset_before"] + actions["error_503"] + actions["delayed"] >= 5
    assert all(job.state is JobState.SUCCEEDED for job in jobs), [j.error for j in jobs]
    assert_ledger(jobs, livekit, redis_db)


def test_livekit_down_for_a_minute_then_every_job_succeeds_without_a_storm(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """LiveKit refuses connections for 60 s; jobs back off, then all succeed; requests bounded."""
    max_attempts, jobs_count = 20, 10
    with FaultProxy(stack.livekit_url, down_mode=DownMode.REFUSE) as proxy:
        proxy.down = True
        worker_factory(concurrency=4, LIVEKIT_URL=proxy.url, TRUNKLINE_VISIBILITY_TIMEOUT="120",
                       TRUNKLINE_BACKOFF_BASE="1", TRUNKLINE_BACKOFF_MAX="20",
                       TRUNKLINE_MAX_ATTEMPTS=str(max_attempts))
        job_ids = submit_all(client, "org_down", numbers(jobs_count, 700))
        time.sleep(60)
        during = [client.get(job_id) for job_id in job_ids]
        proxy.down = False
        jobs = wait_all(client, job_ids, timeout=120)
    attempts_during = sum(job.attempts for job in during)
    print(f"attempts while LiveKit was down: {attempts_during} for {jobs_count} jobs")
    assert all(not job.state.terminal for job in during)
    # Each attempt makes at most two calls (both trunks) before failing: the retry bound.
    assert attempts_during <= jobs_count * max_attempts
    # Backoff, not a storm: with base 1 s and cap 20 s a job tries about 10 times in a minute
    # (simulated: 10 jobs never exceeded 121 in 20,000 runs); a storm would be thousands.
    assert attempts_during <= jobs_count * 14
    assert all(job.state is JobState.SUCCEEDED for job in jobs), [j.error for j in jobs]
    assert all(any(a.error and a.error.code == "livekit_unavailable" for a in job.history)
               for job in jobs)
    assert_ledger(jobs, livekit, redis_db)


def _stack_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for key, value in STACK_DEFAULTS.items():
        env.setdefault(key, value)
    return subprocess.run(["bash", str(REPO / "ops" / "stack.sh"), *args], env=env,
                          capture_output=True, text=True, check=True)


def redis_answers(url: str) -> bool:
    probe = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(probe.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        probe.close()


def test_redis_restart_mid_run_loses_no_accepted_job(
    stack: Stack, worker_factory: WorkerFactory,
    client_factory: Callable[..., ProvisioningClient], livekit: LiveKitSIP,
    redis_db: redis.Redis,
) -> None:
    """Redis (AOF) restarted while jobs run: every accepted job still ends, once."""
    client = client_factory(TRUNKLINE_VISIBILITY_TIMEOUT="20")
    worker_factory(concurrency=4, TRUNKLINE_VISIBILITY_TIMEOUT="20")
    accepted = submit_all(client, "org_redis", numbers(30, 900))
    # Shut Redis down once the batch is under way, whatever the machine's load.
    wait_for(lambda: any(client.get(job_id).state is JobState.RUNNING for job_id in accepted),
             30, "a job of the batch is running", interval=0.005)
    unfinished = sum(not client.get(job_id).state.terminal for job_id in accepted)
    port = stack.redis_url.rsplit(":", 1)[1].split("/")[0]
    # SHUTDOWN writes the AOF; livekit-server and the worker lose their connections too.
    subprocess.run(["redis-cli", "-p", port, "shutdown"], capture_output=True, check=False)
    wait_for(lambda: not redis_answers(stack.redis_url), 10, "redis stopped answering")
    down_at = time.time()
    _stack_script("up")
    wait_for(lambda: redis_answers(stack.redis_url), 30, "redis answers again")
    accepted += submit_all(client, "org_redis", numbers(10, 950))
    jobs = wait_all(client, accepted, timeout=180)
    # The restart really hit jobs in flight: most of the batch was unfinished just before the
    # shutdown, and jobs of it finished only after Redis had gone (nothing is written while
    # it is down, so such a job was not terminal at the shutdown).
    finished_after = [job for job in jobs[:30]
                      if job.finished_at is not None and job.finished_at.timestamp() > down_at]
    print(f"unfinished at the shutdown: {unfinished}/30; finished after it: "
          f"{len(finished_after)}")
    assert unfinished >= 10
    assert finished_after
    assert len(jobs) == 40
    assert all(job.state is JobState.SUCCEEDED for job in jobs), Counter(
        job.error.code for job in jobs if job.error)
    assert_ledger(jobs, livekit, redis_db)


def pool_children(parent: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True,
                           check=False).stdout.split()
    return [int(pid) for pid in found]


def test_pool_child_killed_alone_requeues_its_job(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """A pool child SIGKILLed alone (the parent survives) while its job waits for LiveKit's
    answer to a create: the job runs again once its lease on the number ends (12 s with
    V=20), adopts the object the lost call made, and completes."""
    with FaultProxy(stack.livekit_url) as proxy:
        worker = worker_factory(concurrency=1, LIVEKIT_URL=proxy.url,
                                TRUNKLINE_VISIBILITY_TIMEOUT="20")
        assert worker.proc is not None
        parent = worker.proc.pid
        # (pool children found, the job whose create call was in flight) at the kill. The
        # callback runs in the proxy after LiveKit executed the call, before the answer goes
        # back: the child is certainly inside a job then.
        kills: list[tuple[list[int], str]] = []

        def kill_pool_child() -> None:
            children = pool_children(parent)
            (entry,) = [r for r in proxy.requests
                        if r.method == "CreateSIPOutboundTrunk" and not r.done]
            tag = read_tag(entry.json()["trunk"]["metadata"]) or {}
            kills.append((children, tag.get("job_id", "")))
            if len(children) == 1:
                os.kill(children[0], signal.SIGKILL)

        proxy.add_rule(Rule(Action.CALLBACK, method="CreateSIPOutboundTrunk", times=1,
                            callback=kill_pool_child))
        job_ids = submit_all(client, "org_child", numbers(5, 990))
        jobs = wait_all(client, job_ids, timeout=90)
        executed = proxy.executed("CreateSIPOutboundTrunk")
        assert proxy.errors == []

    assert len(kills) == 1, "the fault never fired"
    ((children, victim),) = kills
    assert len(children) == 1, f"expected the one pool child of {parent}, found {children}"
    assert victim in job_ids
    assert worker.alive, "the parent died with its child"
    replacements = pool_children(parent)
    assert len(replacements) == 1
    assert replacements != children
    assert all(job.state is JobState.SUCCEEDED for job in jobs), [j.error for j in jobs]
    interrupted = next(job for job in jobs if job.job_id == victim)
    # The killed run never closed its attempt; the next one adopted the trunk it had made.
    assert interrupted.attempts >= 2
    assert interrupted.history[0].finished_at is None
    assert interrupted.step(StepName.OUTBOUND_TRUNK).adopted
    assert all(job.attempts == 1 for job in jobs if job.job_id != victim)
    assert executed == len(job_ids)  # no second outbound trunk for the victim
    assert_ledger(jobs, livekit, redis_db)
