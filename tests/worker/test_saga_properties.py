"""Property tests on the provisioning saga and the job runner, against the fake LiveKit.

Hypothesis generates what goes wrong for a job:

* for every LiveKit method the saga uses, the outcomes of its next calls, in order: answered,
  503, 429, executed with the response lost, connection refused before anything was applied,
  or a permanent 400;
* for every delivery, an interruption at the k-th recovery point of the run (a checkpoint
  just saved, or a saga hook point): a soft time limit (Celery's SoftTimeLimitExceeded, which
  the worker hands to the runner as an interruption), the worker killed outright, or another
  delivery run right there (a duplicate delivery of the same job, or another job's).

Deliveries are then driven the way redeliveries come (the retry delay is taken as elapsed)
until the job is terminal, and the invariants are checked: the job ends within the attempt
limit plus the compensation bound; a succeeded job has exactly one inbound trunk, one outbound
trunk and one dispatch rule tagged for it on LiveKit and a record naming them; a failed job
leaves nothing tagged for it (or, only when compensation gave up for a documented reason,
exactly what its `leftovers` name) and no record; there is exactly one event per job; a
canary password is in no Redis key or value, log record or error message.

A delivery stopped at its very first recovery point (right after it counted its attempt)
does not bring its job closer to the end; the bounds allow for those.

These properties found that a soft time limit during compensation made the runner abandon
the compensation and leave LiveKit objects behind; the test at the bottom pins the fix down.

No sockets: fakeredis and httpx.MockTransport. Reproducible: derandomized, no example database.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import fakeredis
import httpx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.worker.fake_livekit import (
    API_KEY,
    API_SECRET,
    BASE_URL,
    ORG,
    FakeLiveKit,
    Fault,
    Harness,
    build_job,
)
from tests.worker.fake_livekit import settings as worker_settings
from worker.livekit import LiveKitSIP
from worker.records import Job, JobState, Phase, StepName
from worker.runner import COMPENSATION_ATTEMPT_FACTOR, JobRunner
from worker.saga import ProvisioningSaga, StepHooks, read_tag
from worker.store import RESULTS_STREAM, JobStore
from worker.vault import Vault

CANARY = "Canary-Prop-Pw-9d2e71"
MAX_ATTEMPTS = 4
COMPENSATION_LIMIT = MAX_ATTEMPTS * COMPENSATION_ATTEMPT_FACTOR
# Each delivery that is not a lock wait spends an attempt: at most MAX_ATTEMPTS + 1 forward
# (the last one only notices the limit) and COMPENSATION_LIMIT + 1 compensating; plus those
# stopped before they could act on their count (World.early).
DELIVERY_BOUND = (MAX_ATTEMPTS + 1) + (COMPENSATION_LIMIT + 1)
NUMBERS = ("+15551234567", "+15551230001", "+442071838750", "+4930901820")

FaultKind = Literal["ok", "503", "429", "lost", "unreachable", "400"]
FAULT_KINDS: tuple[FaultKind, ...] = ("ok", "503", "429", "lost", "unreachable", "400")
SAGA_METHODS = (
    "CreateSIPInboundTrunk",
    "CreateSIPOutboundTrunk",
    "CreateSIPDispatchRule",
    "ListSIPInboundTrunk",
    "ListSIPOutboundTrunk",
    "ListSIPDispatchRule",
    "GetSIPInboundTrunk",
    "DeleteSIPTrunk",
    "DeleteSIPDispatchRule",
)
STEP_OF_OBJECT = {"inbound": StepName.INBOUND_TRUNK, "outbound": StepName.OUTBOUND_TRUNK,
                  "rules": StepName.DISPATCH_RULE}

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fault_for(kind: FaultKind) -> Fault | None:
    return {
        "ok": None,
        "503": Fault.http(503),
        "429": Fault.http(429, headers={"Retry-After": "1"}),
        "lost": Fault.lost(),
        "unreachable": Fault.unreachable(),
        "400": Fault.http(400, "injected: invalid argument", code="invalid_argument"),
    }[kind]


class SoftLimit(Exception):
    """The soft time limit: raised inside the run, handed to the runner as an interruption."""


class WorkerKilled(BaseException):
    """SIGKILL: nothing in the run catches it (the lock is released as if its lease ran out)."""


@dataclass(frozen=True)
class Interruption:
    """At the `at`-th recovery point a delivery reaches while its job is in `phase`: stop it
    softly, kill it, or run another delivery (of job number `other`) right there and go on."""

    at: int
    how: Literal["soft", "kill", "nest"]
    phase: Phase = Phase.PROVISION
    other: int = 0


@dataclass(frozen=True)
class Consumed:
    """One LiveKit call: its method, the outcome it was given, and whose run made it."""

    method: str
    kind: FaultKind
    job_id: str | None
    phase: Phase | None


class PointedStore(JobStore):
    """The job store, with a callback after every checkpoint (a recovery point)."""

    world: World

    def save(self, job: Job, token: str, *, deadline: float | None = None) -> None:
        super().save(job, token, deadline=deadline)
        self.world.saved(job)


class LogTap(logging.Handler):
    """Every log record of the run, formatted, for the canary scan."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        self.lines.append(text)


@dataclass
class World:
    """One example's world: fakeredis, the job store, the fake LiveKit, a saga and a runner."""

    plan: dict[str, deque[FaultKind]]

    def __post_init__(self) -> None:
        self.settings = worker_settings(max_attempts=MAX_ATTEMPTS)
        self.vault = Vault(self.settings.secret_keys)
        self.redis = fakeredis.FakeRedis()
        self.store = PointedStore(self.redis, results_maxlen=self.settings.results_maxlen)
        self.store.world = self
        self.fake = FakeLiveKit()
        self.http = httpx.Client(transport=httpx.MockTransport(self.handle), base_url=BASE_URL)
        self.livekit = LiveKitSIP(BASE_URL, API_KEY, API_SECRET, http=self.http)
        self.saga = ProvisioningSaga(self.livekit, self.store, self.vault,
                                     StepHooks(reached=self.reached))
        self.runner = JobRunner(self.store, self.saga, self.settings, rand=lambda: 0.5,
                                interruptions=(SoftLimit,))
        self.consumed: list[Consumed] = []
        self.phases: dict[str, Phase] = {}
        self.running: list[str] = []
        self.armed: Interruption | None = None
        self.points = 0
        self.jobs: list[str] = []
        self.details: list[str] = []
        self.crashes: Counter[str] = Counter()
        self.interrupted: list[str] = []
        self.all_points = 0
        self.early: Counter[str] = Counter()

    def close(self) -> None:
        self.saga.close()
        self.http.close()
        self.redis.close()

    # --- jobs ---------------------------------------------------------------------------

    def submit(self, number: str) -> str:
        job = build_job(self.vault, number=number, authPassword=CANARY, agentName="receptionist")
        job_id, created = self.store.create(job, deadline=0.0)
        assert created
        self.jobs.append(job_id)
        return job_id

    def job(self, job_id: str) -> Job:
        found = self.store.get(job_id)
        assert found is not None
        return found

    # --- faults -------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        queue = self.plan.get(method)
        kind: FaultKind = queue.popleft() if queue else "ok"
        job_id = self.running[-1] if self.running else None
        self.consumed.append(Consumed(method, kind, job_id,
                                      self.phases.get(job_id) if job_id else None))
        fault = fault_for(kind)
        if fault is not None:
            # Only this thread calls `method` now (the saga's two threads call different ones).
            self.fake.inject(method, fault)
        return self.fake.handle(request)

    def saved(self, job: Job) -> None:
        self.phases[job.job_id] = job.phase
        self.point()

    def reached(self, point: str, job: Job) -> None:
        self.point()

    def point(self) -> None:
        # Only the outermost delivery is interrupted; a delivery run inside it runs clean.
        if len(self.running) != 1 or self.armed is None:
            return
        self.all_points += 1
        if self.phases.get(self.running[0], Phase.PROVISION) is not self.armed.phase:
            return
        self.points += 1
        if self.points != self.armed.at:
            return
        armed, self.armed = self.armed, None
        self.interrupted.append(f"{armed.how} during {armed.phase.value}")
        if armed.how != "nest" and self.all_points == 1:
            # Stopped right after the delivery counted its attempt, before it could act on
            # the count: such deliveries do not bring the job closer to its end.
            self.early[self.running[0]] += 1
        if armed.how == "kill":
            raise WorkerKilled
        if armed.how == "soft":
            raise SoftLimit
        self.deliver(self.jobs[armed.other % len(self.jobs)])

    # --- deliveries ---------------------------------------------------------------------

    def deliver(self, job_id: str, interruption: Interruption | None = None) -> str:
        """One delivery of the job's message; returns the outcome kind, or `crashed`."""
        outer = not self.running
        if outer:
            self.armed, self.points, self.all_points = interruption, 0, 0
        self.running.append(job_id)
        try:
            outcome = self.runner.run(job_id)
        except (WorkerKilled, SoftLimit) as exc:
            # The soft limit outside the runner's reach (e.g. while finishing) fails the task
            # like a crash does: the sweeper sends the job again.
            self.crashes[type(exc).__name__] += 1
            return "crashed"
        finally:
            self.running.pop()
            if outer:
                self.armed = None
        self.details.append(outcome.detail)
        return outcome.kind

    def drive(self, job_id: str, interruptions: Sequence[Interruption | None] = ()) -> int:
        """Deliver until the job is terminal or the bound is passed; returns the deliveries."""
        deliveries = 0
        while (not self.job(job_id).state.terminal
               and deliveries <= DELIVERY_BOUND + len(interruptions)):
            planned = interruptions[deliveries] if deliveries < len(interruptions) else None
            self.deliver(job_id, planned)
            deliveries += 1
        return deliveries

    # --- what is where ------------------------------------------------------------------

    def tagged(self, job_id: str) -> dict[str, list[dict[str, Any]]]:
        """LiveKit objects carrying this job's tag, by kind."""
        tables = {"inbound": self.fake.inbound, "outbound": self.fake.outbound,
                  "rules": self.fake.rules}
        found: dict[str, list[dict[str, Any]]] = {kind: [] for kind in tables}
        for kind, table in tables.items():
            for item in table.values():
                tag = read_tag(item["metadata"])
                if tag and tag.get("job_id") == job_id:
                    found[kind].append(item)
        return found

    def events(self) -> list[dict[str, Any]]:
        raw = cast(list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(RESULTS_STREAM))
        decoded = []
        for _, fields in raw:
            entry: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
            entry["payload"] = json.loads(entry["payload"])
            decoded.append(entry)
        return decoded

    def redis_dump(self) -> bytes:
        client: Any = self.redis
        chunks: list[bytes] = []
        for key in client.scan_iter():
            chunks.append(key)
            kind = client.type(key)
            if kind == b"string":
                chunks.append(client.get(key))
            elif kind == b"zset":
                chunks.extend(client.zrange(key, 0, -1))
            elif kind == b"stream":
                for _, fields in client.xrange(key):
                    chunks.extend(b"%s=%s" % item for item in fields.items())
            elif kind == b"hash":
                chunks.extend(b"%s=%s" % item for item in client.hgetall(key).items())
            elif kind == b"set":
                chunks.extend(client.smembers(key))
            elif kind == b"list":
                chunks.extend(client.lrange(key, 0, -1))
            else:
                raise AssertionError(f"unexpected Redis type {kind!r} for {key!r}")
        return b"\n".join(chunks)


# ------------------------------------------------------------------------------- strategies

# Answered calls weigh more, so that about half of the jobs get through.
fault_kinds = st.sampled_from(("ok", "ok", *FAULT_KINDS))
fault_plans = st.fixed_dictionaries(
    {method: st.lists(fault_kinds, max_size=3) for method in SAGA_METHODS}
)
# A forward run has up to 12 recovery points (fewer when it fails), a compensating run up to 6.
interruptions = st.one_of(
    st.builds(Interruption, at=st.integers(min_value=1, max_value=12),
              how=st.sampled_from(("soft", "kill", "nest")), phase=st.just(Phase.PROVISION),
              other=st.integers(min_value=0, max_value=len(NUMBERS) - 1)),
    st.builds(Interruption, at=st.integers(min_value=1, max_value=6),
              how=st.sampled_from(("soft", "kill", "nest")), phase=st.just(Phase.COMPENSATE),
              other=st.integers(min_value=0, max_value=len(NUMBERS) - 1)),
)
delivery_plans = st.lists(st.one_of(st.none(), interruptions, interruptions), min_size=1,
                          max_size=8)


def make_world(plan: Mapping[str, Sequence[FaultKind]]) -> World:
    return World({method: deque(kinds) for method, kinds in plan.items()})


@contextmanager
def tapped_logs() -> Iterator[LogTap]:
    """Capture every record the worker logs (DEBUG and up), and anything else at WARNING and
    up, while the block runs."""
    tap, root, ours = LogTap(), logging.getLogger(), logging.getLogger("worker")
    level = ours.level
    root.addHandler(tap)
    ours.setLevel(logging.DEBUG)
    try:
        yield tap
    finally:
        root.removeHandler(tap)
        ours.setLevel(level)


# ------------------------------------------------------------------------------- invariants


def leftovers_explained(world: World, job: Job) -> bool:
    """Compensation may give up only when the documented reasons hold: a permanent LiveKit
    error during compensation, or its attempts used up."""
    permanent = any(c.job_id == job.job_id and c.kind == "400" and c.phase is Phase.COMPENSATE
                    for c in world.consumed)
    return permanent or job.compensation_attempts >= COMPENSATION_LIMIT


def check_job(world: World, job_id: str, number: str) -> Job:
    job = world.job(job_id)
    assert job.state.terminal, (
        f"job not finished after the delivery bound: {job.state.value}, "
        f"phase {job.phase.value}, attempts {job.attempts}/{job.compensation_attempts}")
    early = world.early[job_id]
    assert job.attempts <= MAX_ATTEMPTS + 1 + early
    assert job.compensation_attempts <= COMPENSATION_LIMIT + 1 + early
    tagged = world.tagged(job_id)
    record = world.store.get_number(number)
    mine = [e for e in world.events() if e["job_id"] == job_id]
    assert len(mine) == 1, f"{len(mine)} events for {job_id}"
    published = mine[0]
    assert published["status"] == job.state.value
    assert published["org_id"] == ORG

    if job.state is JobState.SUCCEEDED:
        assert [len(tagged[kind]) for kind in ("inbound", "outbound", "rules")] == [1, 1, 1], (
            {kind: [o["sip_trunk_id" if kind != "rules" else "sip_dispatch_rule_id"]
                    for o in objects] for kind, objects in tagged.items()})
        inbound, outbound, rule = tagged["inbound"][0], tagged["outbound"][0], tagged["rules"][0]
        assert record is not None
        assert record.job_id == job_id
        assert record.org_id == ORG
        ids = (inbound["sip_trunk_id"], outbound["sip_trunk_id"], rule["sip_dispatch_rule_id"])
        assert (record.inbound_trunk_id, record.outbound_trunk_id,
                record.dispatch_rule_id) == ids
        assert job.result is not None
        assert job.result.model_dump() == {
            "number": number, "inbound_trunk_id": ids[0], "outbound_trunk_id": ids[1],
            "dispatch_rule_id": ids[2], "phone_number_id": record.phone_number_id}
        assert {k: published["payload"][k] for k in job.result.model_dump()} == (
            job.result.model_dump())
        assert rule["trunk_ids"] == [ids[0]]
        assert inbound["numbers"] == [number]
        assert outbound["numbers"] == [number]
        assert outbound["auth_password"] == CANARY  # the canary did travel, to LiveKit only
        assert job.attempts <= MAX_ATTEMPTS
        assert job.leftovers == []
        assert not job.dead_lettered
        for kind, objects in tagged.items():
            for item in objects:
                assert read_tag(item["metadata"]) == {
                    "job_id": job_id, "org_id": ORG, "step": STEP_OF_OBJECT[kind].value,
                    "number": number}
    else:
        assert record is None or record.job_id != job_id, "a failed job left its record"
        assert job.error is not None
        assert published["payload"]["error_code"] == job.error.code
        assert job_id in world.store.dead_letter_ids(1000)
        remaining = {(STEP_OF_OBJECT[kind],
                      item.get("sip_trunk_id") or item.get("sip_dispatch_rule_id"))
                     for kind, objects in tagged.items() for item in objects}
        if not job.leftovers:
            assert not remaining, f"failed job left {sorted(remaining)} on LiveKit"
        else:
            assert leftovers_explained(world, job), (
                f"compensation gave up without cause (leftovers {job.leftovers}, "
                f"error {job.error.code}, crashes {dict(world.crashes)})")
            assert published["payload"]["leftovers"] == job.leftovers
            named = set(job.leftovers)
            for step, object_id in remaining:
                assert {f"{step.value}:{object_id}", f"{step.value}:unknown"} & named, (
                    f"{step.value} {object_id} is left on LiveKit but not in {job.leftovers}")
    assert world.store.number_lock_holder(number)[0] is None
    assert job_id not in world.store.due(float("inf"), 1000)
    assert world.store.jobs_in_flight(number) == []
    return job


def check_secrets(world: World, logs: LogTap) -> None:
    dump = world.redis_dump()
    assert all(job_id.encode() in dump for job_id in world.jobs)  # the scan sees the jobs
    assert CANARY.encode() not in dump
    assert all(any(job_id in line for line in logs.lines) for job_id in world.jobs)  # tapped
    assert not [line for line in logs.lines if CANARY in line]
    assert not [d for d in world.details if CANARY in d]
    for job_id in world.jobs:
        job = world.job(job_id)
        messages = [job.error.message if job.error else ""]
        messages += [a.error.message for a in job.history if a.error]
        assert not [m for m in messages if CANARY in m]
    # On LiveKit the canary is the outbound trunk's password and nothing else.
    for table in (world.fake.inbound, world.fake.outbound, world.fake.rules):
        for item in table.values():
            rest = {k: v for k, v in item.items() if k != "auth_password" or table is not
                    world.fake.outbound}
            assert CANARY not in json.dumps(rest)


# ------------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(plan=fault_plans, deliveries=delivery_plans)
def test_one_job_ends_all_or_nothing_whatever_fails(
    plan: dict[str, list[FaultKind]], deliveries: list[Interruption | None]
) -> None:
    """One job, every LiveKit call of it faulted at will, its runs interrupted at will."""
    world = make_world(plan)
    try:
        with tapped_logs() as logs:
            job_id = world.submit(NUMBERS[0])
            count = world.drive(job_id, deliveries)
            job = check_job(world, job_id, NUMBERS[0])
            assert count <= DELIVERY_BOUND + world.early[job_id]
            assert len(world.events()) == 1
            check_secrets(world, logs)
        event(f"outcome: {job.state.value}" + (f" ({job.error.code})" if job.error else ""))
        for what in set(world.interrupted):
            event(f"interrupted: {what}")
    finally:
        world.close()


schedules = st.lists(
    st.tuples(st.integers(min_value=0, max_value=len(NUMBERS) - 1),
              st.one_of(st.none(), interruptions)),
    max_size=12,
)


@PROPERTY_SETTINGS
@given(count=st.integers(min_value=2, max_value=len(NUMBERS)), plan=fault_plans,
       schedule=schedules)
def test_jobs_for_different_numbers_interleaved(
    count: int, plan: dict[str, list[FaultKind]],
    schedule: list[tuple[int, Interruption | None]],
) -> None:
    """Several jobs for different numbers, their deliveries interleaved in any order and run
    inside one another's recovery points; LiveKit faults shared among them."""
    world = make_world(plan)
    try:
        with tapped_logs() as logs:
            job_ids = [world.submit(number) for number in NUMBERS[:count]]
            for index, interruption in schedule:
                job_id = job_ids[index % count]
                if not world.job(job_id).state.terminal:
                    world.deliver(job_id, interruption)
            for _ in range(DELIVERY_BOUND + len(schedule) + 1):
                waiting = [j for j in job_ids if not world.job(j).state.terminal]
                if not waiting:
                    break
                for job_id in waiting:
                    world.deliver(job_id)
            jobs = [check_job(world, job_id, number)
                    for job_id, number in zip(job_ids, NUMBERS, strict=False)]
            assert Counter(e["job_id"] for e in world.events()) == dict.fromkeys(job_ids, 1)
            # Nothing on LiveKit that a succeeded job's record or a failed job's leftovers do
            # not account for.
            accounted = {o for job in jobs if job.result for o in (
                job.result.inbound_trunk_id, job.result.outbound_trunk_id,
                job.result.dispatch_rule_id)}
            leftover_jobs = {job.job_id for job in jobs if job.leftovers}
            for table in (world.fake.inbound, world.fake.outbound, world.fake.rules):
                for object_id, item in table.items():
                    tag = read_tag(item["metadata"])
                    assert object_id in accounted or (tag and tag["job_id"] in leftover_jobs)
            check_secrets(world, logs)
        event("succeeded: " + str(sum(j.state is JobState.SUCCEEDED for j in jobs)) + f"/{count}")
    finally:
        world.close()


# ------------------------------------------------------------------------------- found bugs


def test_soft_time_limit_during_compensation_is_retried_not_abandoned() -> None:
    """Found by the properties above (a job whose rule LiveKit refuses, interrupted at the
    second recovery point of its compensation): the worker's interruption (Celery's
    SoftTimeLimitExceeded, passed as `interruptions`) was honoured only on the forward path.
    Raised while compensation ran, it was classified like any unexpected exception
    (`internal_error`, not retryable), so the runner gave the compensation up at once,
    recorded `leftovers` and finished the job FAILED with both trunks left on LiveKit,
    although the next delivery would have deleted them. It must be retried like a
    transiently failing compensation.
    """
    h = Harness()
    try:
        h.fake.inject("CreateSIPDispatchRule", Fault.http(400, code="invalid_argument"))
        fired: list[str] = []

        def soft_limit_during_delete(method: str) -> None:
            if method == "DeleteSIPTrunk" and not fired:
                fired.append(method)
                raise SoftLimit

        h.fake.before_apply = soft_limit_during_delete
        runner = JobRunner(h.store, h.saga, h.settings, rand=lambda: 0.5,
                           interruptions=(SoftLimit,))
        job = h.submit(authPassword=CANARY)

        outcomes = [runner.run(job.job_id).kind]
        while not h.reload(job).state.terminal and len(outcomes) < DELIVERY_BOUND:
            outcomes.append(runner.run(job.job_id).kind)

        assert fired, "the soft limit never fired"
        stored = h.reload(job)
        assert stored.state is JobState.FAILED
        assert stored.error is not None
        assert stored.error.code == "livekit_rejected"  # the job's real reason, kept
        assert (h.fake.inbound, h.fake.outbound, h.fake.rules) == ({}, {}, {}), (
            f"left on LiveKit after {outcomes}: leftovers {stored.leftovers}")
        assert stored.leftovers == []
    finally:
        h.close()
