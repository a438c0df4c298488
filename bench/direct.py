"""The same LiveKit calls a job makes, made directly with LiveKitSIP; and the cleanup.

The request bodies are built by the saga's own functions (inbound_trunk_for,
outbound_trunk_for, dispatch_rule_for) with the same tag layout, so a direct setup sends
byte-for-byte what a worker sends. Every object the benchmark makes carries a Trunkline tag
whose org_id is the run's bench organisation; cleanup deletes only objects with that tag.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from worker.contract import parse_request
from worker.livekit import LiveKitNotFound, LiveKitSIP
from worker.records import StepName, StoredRequest
from worker.saga import (
    dispatch_rule_for,
    inbound_trunk_for,
    make_tag,
    outbound_trunk_for,
    read_tag,
)
from worker.vault import Vault

BENCH_ORG_PREFIX = "trunkline-bench-"
PASSWORD = "bench-Pw-0f1e2d3c"  # noqa: S105  # sent to a local LiveKit only


def bench_request(number: str) -> dict[str, Any]:
    """The request every benchmark job provisions (the README's seed request + an agent)."""
    return {
        "name": "Bench SIP Trunk",
        "number": number,
        "outboundPstn": "sip.gateway.example",
        "authUserName": "bench_user",
        "authPassword": PASSWORD,
        "agentName": "bench-agent",
    }


@dataclass(frozen=True)
class Created:
    """One setup's LiveKit objects."""

    inbound: str
    outbound: str
    rule: str

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Created:
        return cls(str(payload["inbound_trunk_id"]), str(payload["outbound_trunk_id"]),
                   str(payload["dispatch_rule_id"]))


class NumberPlan:
    """Unique E.164 numbers for this run, never one that a LiveKit trunk already routes."""

    def __init__(self, taken: Iterable[str], rng: random.Random | None = None) -> None:
        self.taken = set(taken)
        rng = rng or random.Random()  # noqa: S311  # not security: spreading runs apart
        self.area = rng.randrange(200, 1000)
        self.seq = rng.randrange(0, 1_000_000)

    def next(self) -> str:
        while True:
            if self.seq >= 10_000_000:
                self.area = 200 + (self.area - 199) % 800
                self.seq = 0
            number = f"+1{self.area}{self.seq:07d}"
            self.seq += 1
            if number not in self.taken:
                return number

    @classmethod
    def avoiding(cls, livekit: LiveKitSIP) -> NumberPlan:
        taken: set[str] = set()
        for inbound in livekit.list_inbound_trunks():
            taken.update(inbound.numbers)
        for outbound in livekit.list_outbound_trunks():
            taken.update(outbound.numbers)
        return cls(taken)


class Direct:
    """A setup made with LiveKitSIP directly, the saga's way or strictly one call at a time."""

    def __init__(self, livekit: LiveKitSIP, vault: Vault, org_id: str,
                 pool: ThreadPoolExecutor) -> None:
        self.livekit = livekit
        self.vault = vault
        self.org_id = org_id
        self.pool = pool  # for the concurrent inbound ‖ outbound pair
        self._serial = 0

    def _prepared(self, number: str) -> tuple[str, StoredRequest]:
        self._serial += 1
        job_id = f"job_benchdirect{self._serial:08d}{time.monotonic_ns() % 10**8:08d}"
        stored = StoredRequest.seal(parse_request(bench_request(number)), self.vault)
        return job_id, stored

    def _inbound(self, job_id: str, stored: StoredRequest) -> str:
        body = inbound_trunk_for(stored, make_tag(job_id, self.org_id, StepName.INBOUND_TRUNK,
                                                  stored.number))
        return self.livekit.create_inbound_trunk(body).sip_trunk_id

    def _outbound(self, job_id: str, stored: StoredRequest) -> str:
        body = outbound_trunk_for(
            stored, make_tag(job_id, self.org_id, StepName.OUTBOUND_TRUNK, stored.number),
            PASSWORD)
        return self.livekit.create_outbound_trunk(body).sip_trunk_id

    def _rule(self, job_id: str, stored: StoredRequest, inbound_id: str) -> str:
        body = dispatch_rule_for(
            stored, make_tag(job_id, self.org_id, StepName.DISPATCH_RULE, stored.number),
            inbound_trunk_id=inbound_id, org_id=self.org_id,
            phone_number_id="pn_" + job_id.removeprefix("job_"))
        return self.livekit.create_dispatch_rule(body).sip_dispatch_rule_id

    def concurrent(self, number: str) -> tuple[Created, float]:
        """Inbound ‖ outbound, then the rule (what the saga does). Returns (ids, seconds)."""
        job_id, stored = self._prepared(number)
        started = time.perf_counter()
        outbound = self.pool.submit(self._outbound, job_id, stored)
        inbound_id = self._inbound(job_id, stored)
        outbound_id = outbound.result()
        rule_id = self._rule(job_id, stored, inbound_id)
        return Created(inbound_id, outbound_id, rule_id), time.perf_counter() - started

    def sequential(self, number: str) -> tuple[Created, float]:
        """Inbound, then outbound, then the rule: three sequential calls."""
        job_id, stored = self._prepared(number)
        started = time.perf_counter()
        inbound_id = self._inbound(job_id, stored)
        outbound_id = self._outbound(job_id, stored)
        rule_id = self._rule(job_id, stored, inbound_id)
        return Created(inbound_id, outbound_id, rule_id), time.perf_counter() - started


def delete_created(livekit: LiveKitSIP, created: Created) -> None:
    with contextlib.suppress(LiveKitNotFound):
        livekit.delete_dispatch_rule(created.rule)
    livekit.delete_trunk(created.inbound)  # unknown ids answer 200
    livekit.delete_trunk(created.outbound)


def delete_many(livekit: LiveKitSIP, sets: Iterable[Created], pool: ThreadPoolExecutor,
                advance: Callable[[int], None] = lambda _n: None) -> int:
    """Delete the objects of many setups on `pool`; returns how many setups."""
    futures = [pool.submit(delete_created, livekit, created) for created in sets]
    for future in futures:
        future.result()
        advance(1)
    return len(futures)


def is_bench_object(metadata: str, org_id: str) -> bool:
    found = read_tag(metadata)
    return bool(found and found.get("org_id") == org_id)


def is_any_bench_object(metadata: str) -> bool:
    found = read_tag(metadata)
    return bool(found and str(found.get("org_id", "")).startswith(BENCH_ORG_PREFIX))


def sweep(livekit: LiveKitSIP, matches: Callable[[str], bool]) -> int:
    """Delete every rule and trunk whose metadata `matches`; returns how many objects."""
    deleted = 0
    for rule in livekit.list_dispatch_rules():
        if matches(rule.metadata):
            with contextlib.suppress(LiveKitNotFound):
                livekit.delete_dispatch_rule(rule.sip_dispatch_rule_id)
            deleted += 1
    for inbound in livekit.list_inbound_trunks():
        if matches(inbound.metadata):
            livekit.delete_trunk(inbound.sip_trunk_id)
            deleted += 1
    for outbound in livekit.list_outbound_trunks():
        if matches(outbound.metadata):
            livekit.delete_trunk(outbound.sip_trunk_id)
            deleted += 1
    return deleted
