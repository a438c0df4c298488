"""UpdateSaga on the in-memory fake: only the asked-for fields change, everything set in
LiveKit outside Trunkline stays, and a refused update puts every object back exactly.

The same claims are checked against the real livekit-server in
tests/integration/test_updates.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from tests.worker.fake_livekit import PASSWORD, Fault, Harness
from worker.contract import parse_change
from worker.lifecycle import UpdateSaga
from worker.livekit import LiveKitObject, ObjectKind
from worker.records import (
    Job,
    JobKind,
    JobResult,
    JobState,
    StepName,
    StepStatus,
    StoredChange,
    new_job_id,
)
from worker.runner import JobRunner

NEW_PASSWORD = "Rotated-Canary-Pw-88e1"
# What an operator set in LiveKit that Trunkline does not model, per object.
OPERATOR_FIELDS: dict[ObjectKind, dict[str, Any]] = {
    ObjectKind.INBOUND_TRUNK: {"krisp_enabled": True, "headers": {"X-Tenant": "acme"},
                               "headers_to_attributes": {"X-Call": "call.id"}},
    ObjectKind.OUTBOUND_TRUNK: {"headers": {"X-Route": "eu"}, "destination_country": "DE",
                                "from_host": "from.acme.example"},
    ObjectKind.DISPATCH_RULE: {"attributes": {"team": "sales"}, "hide_phone_number": True,
                               "krisp_enabled": True,
                               "rule": {"dispatch_rule_individual": {"pin": "4321"}}},
}


class World:
    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.update_saga = UpdateSaga(harness.livekit, harness.store, harness.vault)
        self.runner = JobRunner(harness.store, harness.saga, harness.settings,
                                rand=lambda: 0.0, lifecycle={JobKind.UPDATE: self.update_saga})

    def provision(self) -> JobResult:
        job = self.h.submit(agentName="agent-one")
        self.runner.run(job.job_id)
        done = self.h.reload(job)
        assert done.state is JobState.SUCCEEDED, done.error
        assert done.result is not None
        return done.result

    def objects(self, ids: JobResult) -> dict[ObjectKind, LiveKitObject]:
        return {
            ObjectKind.INBOUND_TRUNK: self.h.livekit.read_object(ObjectKind.INBOUND_TRUNK,
                                                                 ids.inbound_trunk_id),
            ObjectKind.OUTBOUND_TRUNK: self.h.livekit.read_object(ObjectKind.OUTBOUND_TRUNK,
                                                                  ids.outbound_trunk_id),
            ObjectKind.DISPATCH_RULE: self.h.livekit.read_object(ObjectKind.DISPATCH_RULE,
                                                                 ids.dispatch_rule_id),
        }

    def operator_edits(self, ids: JobResult) -> dict[ObjectKind, LiveKitObject]:
        """Set OPERATOR_FIELDS through LiveKit's API, as an operator's console would."""
        for obj in self.objects(ids).values():
            self.h.livekit.replace_object(obj.merged(OPERATOR_FIELDS[obj.kind]))
        return self.objects(ids)

    def update_job(self, changes: dict[str, Any]) -> Job:
        """An update job as ProvisioningClient.update stores it."""
        change = parse_change(changes)
        job = Job(job_id=new_job_id(), org_id="org_acme", kind=JobKind.UPDATE,
                  number="+15551234567", change=StoredChange.seal(change, self.h.vault),
                  request_fingerprint="fp-" + new_job_id())
        job_id, _ = self.h.store.create(job, deadline=time.time() + 30)
        stored = self.h.store.get(job_id)
        assert stored is not None
        return stored

    def run(self, job: Job) -> Job:
        self.runner.run(job.job_id)
        return self.h.reload(job)


@pytest.fixture
def world() -> Iterator[World]:
    harness = Harness()
    yield World(harness)
    harness.close()


def without(obj: LiveKitObject, *names: str) -> dict[str, Any]:
    return {k: v for k, v in obj.fields.items() if k not in names}


def test_update_changes_only_the_asked_fields(world: World) -> None:
    """Every field set outside Trunkline reads back unchanged; the asked ones changed."""
    ids = world.provision()
    before = world.operator_edits(ids)
    job = world.run(world.update_job({
        "name": "Renamed line", "authPassword": NEW_PASSWORD, "roomPrefix": "sales-",
        "agentName": "agent-two", "allowedAddresses": ["192.0.2.0/24"]}))
    assert job.state is JobState.SUCCEEDED, job.error
    after = world.objects(ids)

    inbound, outbound = ObjectKind.INBOUND_TRUNK, ObjectKind.OUTBOUND_TRUNK
    assert after[inbound] == before[inbound].merged(
        {"name": "Renamed line", "allowed_addresses": ["192.0.2.0/24"]})
    assert after[outbound] == before[outbound].merged(
        {"name": "Renamed line", "auth_password": NEW_PASSWORD})
    rule_before, rule_after = before[ObjectKind.DISPATCH_RULE], after[ObjectKind.DISPATCH_RULE]
    assert without(rule_after, "name", "rule", "room_config") == without(
        rule_before, "name", "rule", "room_config")
    assert rule_after.fields["name"] == "Renamed line"
    assert rule_after.fields["rule"]["dispatch_rule_individual"] == {
        "room_prefix": "sales-", "pin": "4321", "no_randomness": False}
    (agent,) = rule_after.fields["room_config"]["agents"]
    assert agent["agent_name"] == "agent-two"
    assert json.loads(agent["metadata"])["number"] == "+15551234567"
    # One whole write per object besides the operator's; nothing created again or deleted.
    writes = {m: n for m, n in world.h.fake.calls.items() if m.startswith(("Create", "Update",
                                                                            "Delete"))}
    assert writes == {"CreateSIPInboundTrunk": 1, "CreateSIPOutboundTrunk": 1,
                      "CreateSIPDispatchRule": 1, "UpdateSIPInboundTrunk": 2,
                      "UpdateSIPOutboundTrunk": 2, "UpdateSIPDispatchRule": 2}


def test_an_update_touches_only_the_objects_its_fields_live_on(world: World) -> None:
    """A password rotation reads and writes the outbound trunk alone."""
    ids = world.provision()
    before = world.operator_edits(ids)
    calls_before = dict(world.h.fake.calls)
    job = world.run(world.update_job({"authPassword": NEW_PASSWORD}))
    assert job.state is JobState.SUCCEEDED, job.error
    new_calls = {m: n - calls_before.get(m, 0) for m, n in world.h.fake.calls.items()
                 if n != calls_before.get(m, 0)}
    assert new_calls == {"GetSIPOutboundTrunk": 1, "UpdateSIPOutboundTrunk": 1}
    after = world.objects(ids)
    assert after[ObjectKind.OUTBOUND_TRUNK] == before[ObjectKind.OUTBOUND_TRUNK].merged(
        {"auth_password": NEW_PASSWORD})
    assert after[ObjectKind.INBOUND_TRUNK] == before[ObjectKind.INBOUND_TRUNK]
    assert after[ObjectKind.DISPATCH_RULE] == before[ObjectKind.DISPATCH_RULE]


def test_a_refused_update_puts_every_object_back_exactly(world: World) -> None:
    """The rule is refused after both trunks changed: all three are as they were, field for
    field (passwords and operator fields included), and so is the record."""
    ids = world.provision()
    before = world.operator_edits(ids)
    record_before = world.h.store.get_number("+15551234567")
    world.h.fake.inject("UpdateSIPDispatchRule", Fault.http(400, "room prefix refused",
                                                            code="invalid_argument"))
    job = world.run(world.update_job({
        "name": "Renamed line", "authPassword": NEW_PASSWORD, "roomPrefix": "sales-",
        "allowedAddresses": ["192.0.2.0/24"]}))
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.code == "livekit_rejected"
    assert world.objects(ids) == before
    assert world.h.store.get_number("+15551234567") == record_before
    assert {name: step.status for name, step in job.steps.items()} == {
        StepName.INBOUND_TRUNK: StepStatus.COMPENSATED,
        StepName.OUTBOUND_TRUNK: StepStatus.COMPENSATED,
        StepName.DISPATCH_RULE: StepStatus.COMPENSATED,
        StepName.PHONE_NUMBER: StepStatus.PENDING,
    }


def test_rollback_restores_what_the_first_run_found(world: World) -> None:
    """A write whose answer was lost is applied; the next run reads our own change, yet
    the rollback puts back the object as the first run found it."""
    ids = world.provision()
    before = world.operator_edits(ids)
    world.h.fake.inject("UpdateSIPOutboundTrunk", Fault.lost())
    job = world.run(world.update_job({"authPassword": NEW_PASSWORD, "roomPrefix": "sales-"}))
    assert job.state is JobState.QUEUED  # rescheduled: the write's outcome is unknown
    assert job.step(StepName.OUTBOUND_TRUNK).status is StepStatus.STARTED
    changed = world.objects(ids)[ObjectKind.OUTBOUND_TRUNK]
    assert changed.fields["auth_password"] == NEW_PASSWORD

    world.h.fake.inject("UpdateSIPDispatchRule", Fault.http(400, "refused",
                                                            code="invalid_argument"))
    job = world.run(job)
    assert job.state is JobState.FAILED
    assert world.objects(ids) == before


def test_rollback_without_a_saved_copy_puts_back_only_the_changed_fields(
    world: World,
) -> None:
    """A job a Trunkline without copies started: its changed fields go back to the record's
    values, and what an operator set stays."""
    ids = world.provision()
    before = world.operator_edits(ids)
    job = world.update_job({"authPassword": NEW_PASSWORD, "outboundPstn": "gw2.example"})
    record = world.h.store.get_number("+15551234567")
    assert record is not None
    # As the older code left it: the trunk changed, the step started, no copy kept.
    outbound = before[ObjectKind.OUTBOUND_TRUNK]
    world.h.livekit.replace_object(outbound.merged(
        {"auth_password": NEW_PASSWORD, "address": "gw2.example"}))
    job.previous = record
    job.step(StepName.OUTBOUND_TRUNK).status = StepStatus.STARTED
    assert job.livekit_before == {}
    token = world.h.lock(job)
    world.update_saga.backward(job, token, world.h.checkpoint(token))
    assert world.objects(ids) == before
    assert job.step(StepName.OUTBOUND_TRUNK).status is StepStatus.COMPENSATED


def test_the_saved_copies_are_sealed_and_never_shown(world: World) -> None:
    """The copies hold passwords: encrypted in Redis, absent from the job's view."""
    ids = world.provision()
    world.operator_edits(ids)
    job = world.run(world.update_job({"authPassword": NEW_PASSWORD}))
    assert job.state is JobState.SUCCEEDED, job.error
    assert set(job.livekit_before) == {StepName.OUTBOUND_TRUNK}
    sealed = job.livekit_before[StepName.OUTBOUND_TRUNK]
    kept = LiveKitObject.from_json(world.h.vault.decrypt(sealed))
    assert kept.fields["auth_password"] == PASSWORD
    view = json.dumps(job.public_view())
    assert "livekit_before" not in view
    raw = cast(bytes, world.h.redis.get(world.h.store.keys.job(job.job_id)))
    assert b"livekit_before" in raw
    for secret in (PASSWORD, NEW_PASSWORD):
        assert secret not in view
        assert secret.encode() not in raw


def test_a_replayed_update_copies_the_objects_again(world: World) -> None:
    """Between a refused update and its replay an operator changes a trunk: the replay's
    rollback keeps that change (it copies again), and its success keeps it too."""
    ids = world.provision()
    world.operator_edits(ids)
    refusal = Fault.http(400, "refused", code="invalid_argument")
    world.h.fake.inject("UpdateSIPDispatchRule", refusal)
    job = world.run(world.update_job({"authPassword": NEW_PASSWORD, "roomPrefix": "sales-"}))
    assert job.state is JobState.FAILED
    outbound = world.objects(ids)[ObjectKind.OUTBOUND_TRUNK]
    world.h.livekit.replace_object(outbound.merged({"headers": {"X-Route": "us"}}))
    edited = world.objects(ids)

    world.h.store.replay(job.job_id, deadline=time.time() + 30)
    world.h.fake.inject("UpdateSIPDispatchRule", refusal)
    job = world.run(job)
    assert (job.state, job.run) == (JobState.FAILED, 2)
    assert world.objects(ids) == edited

    world.h.store.replay(job.job_id, deadline=time.time() + 30)
    job = world.run(job)
    assert job.state is JobState.SUCCEEDED, job.error
    after = world.objects(ids)[ObjectKind.OUTBOUND_TRUNK]
    assert after == edited[ObjectKind.OUTBOUND_TRUNK].merged({"auth_password": NEW_PASSWORD})
