"""Unit tests for worker.saga: the forward path, recovery of unknown outcomes, compensation.

No sockets: fakeredis for the job store and the fake LiveKit behind httpx.MockTransport.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis.exceptions
from prometheus_client import REGISTRY

from tests.worker.fake_livekit import (
    API_KEY,
    API_SECRET,
    BASE_URL,
    NUMBER,
    ORG,
    PASSWORD,
    Fault,
    Harness,
)
from worker.contract import Transport
from worker.livekit import (
    InboundNumberConflict,
    InboundTrunk,
    LiveKitNotFound,
    LiveKitServerError,
    LiveKitSIP,
    LiveKitTimeout,
    LiveKitUnauthorized,
    LiveKitUnavailable,
    OutboundTrunk,
)
from worker.records import Job, JobResult, PhoneNumberRecord, StepName, StepStatus
from worker.retry import ProvisioningFailure
from worker.saga import ProvisioningSaga, StepHooks, make_tag, phone_number_id_for, read_tag, tag

CREATE_INBOUND = "CreateSIPInboundTrunk"
CREATE_OUTBOUND = "CreateSIPOutboundTrunk"
CREATE_RULE = "CreateSIPDispatchRule"

LIVEKIT_STEPS = [
    (CREATE_INBOUND, StepName.INBOUND_TRUNK),
    (CREATE_OUTBOUND, StepName.OUTBOUND_TRUNK),
    (CREATE_RULE, StepName.DISPATCH_RULE),
]


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def provision(h: Harness, job: Job) -> JobResult:
    """One run of the saga's forward path, holding the number lock like a real run."""
    token = h.lock(job)
    try:
        result = h.saga.provision(job, token, h.checkpoint(token))
        # The runner's terminal write persists the last steps (the saga leaves it to that).
        h.checkpoint(token)(job)
        return result
    finally:
        h.store.release_number_lock(job.number, token)


def compensate(h: Harness, job: Job) -> None:
    token = h.lock(job)
    try:
        h.saga.compensate(job, token, h.checkpoint(token))
    finally:
        h.store.release_number_lock(job.number, token)


def objects_of(h: Harness, job: Job) -> dict[StepName, list[str]]:
    """Ids of every LiveKit object tagged for `job`, by the step that tagged it."""
    found: dict[StepName, list[str]] = {name: [] for _, name in LIVEKIT_STEPS}
    tables: list[tuple[dict[str, dict[str, Any]], str]] = [
        (h.fake.inbound, "sip_trunk_id"),
        (h.fake.outbound, "sip_trunk_id"),
        (h.fake.rules, "sip_dispatch_rule_id"),
    ]
    for table, id_field in tables:
        for item in table.values():
            found_tag = read_tag(item["metadata"])
            if found_tag and found_tag.get("job_id") == job.job_id:
                found[StepName(found_tag["step"])].append(item[id_field])
    return found


def total_objects(h: Harness) -> int:
    return len(h.fake.inbound) + len(h.fake.outbound) + len(h.fake.rules)


def seed_step_object(h: Harness, job: Job, step: StepName, **extra: Any) -> str:
    """Create, directly in the fake, the object `step` of `job` would create (tagged)."""
    metadata = tag(job, step)
    request = job.create_request
    if step is StepName.INBOUND_TRUNK:
        return h.fake.seed_inbound(name=request.name, numbers=[NUMBER], metadata=metadata,
                                   **extra)
    if step is StepName.OUTBOUND_TRUNK:
        return h.fake.seed_outbound(name=request.name, numbers=[NUMBER],
                                    address=request.outbound_pstn, metadata=metadata, **extra)
    return h.fake.seed_rule(name=request.name, metadata=metadata,
                            rule={"dispatch_rule_individual": {"room_prefix": "acme-"}}, **extra)


def crash_after_started(h: Harness, job: Job, step: StepName, *, with_object: bool) -> Job:
    """Leave `step` STARTED in the stored job, as a run that died mid-call would.

    Steps before it are DONE with objects of their own, so only `step` is in doubt.
    """
    token = h.lock(job)
    if step is StepName.DISPATCH_RULE:
        for done in (StepName.INBOUND_TRUNK, StepName.OUTBOUND_TRUNK):
            job.step(done).status = StepStatus.DONE
            job.step(done).resource_id = seed_step_object(h, job, done)
    if with_object:
        extra: dict[str, Any] = {}
        if step is StepName.DISPATCH_RULE:
            extra["trunk_ids"] = [job.step(StepName.INBOUND_TRUNK).resource_id]
        seed_step_object(h, job, step, **extra)
    job.step(step).status = StepStatus.STARTED
    h.store.save(job, token)
    h.store.release_number_lock(job.number, token)
    return h.reload(job)


# --------------------------------------------------------------------------- happy path


def test_happy_path_creates_one_of_each_part_tagged_for_the_job(h: Harness) -> None:
    """The happy path creates one inbound trunk, one outbound trunk, one rule, one record."""
    job = h.submit()
    result = provision(h, job)

    assert len(h.fake.inbound) == len(h.fake.outbound) == len(h.fake.rules) == 1
    inbound = h.fake.inbound[result.inbound_trunk_id]
    outbound = h.fake.outbound[result.outbound_trunk_id]
    rule = h.fake.rules[result.dispatch_rule_id]
    for step, item in ((StepName.INBOUND_TRUNK, inbound), (StepName.OUTBOUND_TRUNK, outbound),
                       (StepName.DISPATCH_RULE, rule)):
        assert read_tag(item["metadata"]) == {"job_id": job.job_id, "org_id": ORG,
                                              "step": step.value, "number": NUMBER}
    record = h.store.get_number(NUMBER)
    assert record is not None
    assert record.phone_number_id == result.phone_number_id == phone_number_id_for(job)
    assert (record.inbound_trunk_id, record.outbound_trunk_id, record.dispatch_rule_id) == (
        result.inbound_trunk_id, result.outbound_trunk_id, result.dispatch_rule_id)
    assert list(h.store.numbers_of_org(ORG)) == [NUMBER]


def test_happy_path_does_no_listing(h: Harness) -> None:
    """A first run with nothing in doubt never calls a List method."""
    provision(h, h.submit())

    assert h.fake.list_calls() == 0
    assert h.fake.calls[CREATE_INBOUND] == h.fake.calls[CREATE_OUTBOUND] == 1
    assert h.fake.calls[CREATE_RULE] == 1
    assert sum(h.fake.calls.values()) == 3


def test_both_trunks_are_created_before_the_rule(h: Harness) -> None:
    """The rule is created only after both trunk creates have been made."""
    provision(h, h.submit())

    rule_at = h.fake.log.index(CREATE_RULE)
    assert h.fake.log.index(CREATE_INBOUND) < rule_at
    assert h.fake.log.index(CREATE_OUTBOUND) < rule_at


def test_both_trunk_creates_are_in_flight_at_once(h: Harness) -> None:
    """The inbound and outbound creates overlap: each waits for the other to arrive."""
    arrived = threading.Barrier(2, timeout=5)

    def meet(method: str) -> None:
        if method in (CREATE_INBOUND, CREATE_OUTBOUND):
            arrived.wait()  # breaks (and fails the run) if the creates are sequential

    h.fake.before_apply = meet

    provision(h, h.submit())

    assert not arrived.broken
    assert len(h.fake.inbound) == len(h.fake.outbound) == 1


def test_happy_path_sends_every_field_to_livekit(h: Harness) -> None:
    """The objects carry the number, gateway, transport, credentials, trunk id and agent."""
    job = h.submit(agentName="support-bot", allowedAddresses=["203.0.113.0/24"])
    result = provision(h, job)

    inbound = h.fake.inbound[result.inbound_trunk_id]
    assert inbound["numbers"] == [NUMBER]
    assert inbound["allowed_addresses"] == ["203.0.113.0/24"]
    assert inbound["auth_username"] == inbound["auth_password"] == ""
    outbound = h.fake.outbound[result.outbound_trunk_id]
    assert outbound["address"] == "sip.provider.example:5060"
    assert outbound["transport"] == "SIP_TRANSPORT_TCP"
    assert outbound["numbers"] == [NUMBER]
    assert (outbound["auth_username"], outbound["auth_password"]) == ("acme-user", PASSWORD)
    rule = h.fake.rules[result.dispatch_rule_id]
    assert rule["trunk_ids"] == [result.inbound_trunk_id]
    assert rule["rule"]["dispatch_rule_individual"]["room_prefix"] == "acme-"
    assert [a["agent_name"] for a in rule["room_config"]["agents"]] == ["support-bot"]


def test_steps_are_done_and_not_adopted_after_a_clean_run(h: Harness) -> None:
    """A clean run records every step DONE with its id, none of them adopted."""
    job = h.submit()
    result = provision(h, job)

    stored = h.reload(job)
    ids = {StepName.INBOUND_TRUNK: result.inbound_trunk_id,
           StepName.OUTBOUND_TRUNK: result.outbound_trunk_id,
           StepName.DISPATCH_RULE: result.dispatch_rule_id,
           StepName.PHONE_NUMBER: result.phone_number_id}
    for name, resource_id in ids.items():
        assert stored.step(name).status is StepStatus.DONE
        assert stored.step(name).resource_id == resource_id
        assert stored.step(name).adopted is False


def test_number_held_by_another_org_fails_before_livekit(h: Harness) -> None:
    """A number recorded for another organisation fails without any LiveKit call."""
    other = h.submit(org_id="org_other")
    provision(h, other)
    calls_before = sum(h.fake.calls.values())

    job = h.submit()
    with pytest.raises(ProvisioningFailure) as failure:
        provision(h, job)

    assert failure.value.code == "number_owned_by_other_org"
    assert sum(h.fake.calls.values()) == calls_before


# --------------------------------------------------------------------------- unknown outcomes


@pytest.mark.parametrize(("method", "step"), LIVEKIT_STEPS)
def test_response_lost_then_rerun_adopts_the_object(
    h: Harness, method: str, step: StepName
) -> None:
    """A create executed with its response lost is adopted on the next run, not repeated."""
    job = h.submit()
    h.fake.inject(method, Fault.lost())
    with pytest.raises(LiveKitTimeout):
        provision(h, job)
    assert h.reload(job).step(step).status is StepStatus.STARTED

    job = h.reload(job)
    result = provision(h, job)

    objects = objects_of(h, job)
    assert {name: len(ids) for name, ids in objects.items()} == {
        StepName.INBOUND_TRUNK: 1, StepName.OUTBOUND_TRUNK: 1, StepName.DISPATCH_RULE: 1}
    assert total_objects(h) == 3
    assert h.fake.calls[method] == 1
    stored = h.reload(job)
    assert stored.step(step).adopted is True
    assert [n for n, s in stored.steps.items() if s.adopted] == [step]
    ids = {StepName.INBOUND_TRUNK: result.inbound_trunk_id,
           StepName.OUTBOUND_TRUNK: result.outbound_trunk_id,
           StepName.DISPATCH_RULE: result.dispatch_rule_id}
    assert objects[step] == [ids[step]]


def test_every_step_lost_once_still_gives_one_object_each(h: Harness) -> None:
    """Every LiveKit create losing its response once still ends with one object per step."""
    job = h.submit()
    for method, _ in LIVEKIT_STEPS:
        h.fake.inject(method, Fault.lost())
    for _ in range(2):
        with pytest.raises(LiveKitTimeout):
            provision(h, h.reload(job))

    provision(h, h.reload(job))

    assert {n: len(ids) for n, ids in objects_of(h, job).items()} == {
        StepName.INBOUND_TRUNK: 1, StepName.OUTBOUND_TRUNK: 1, StepName.DISPATCH_RULE: 1}
    assert total_objects(h) == 3
    stored = h.reload(job)
    assert all(stored.step(s).adopted for _, s in LIVEKIT_STEPS)
    assert stored.step(StepName.PHONE_NUMBER).status is StepStatus.DONE


def test_record_written_but_checkpoint_lost_is_not_duplicated(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A phone-number record written before the run died is reused by the next run."""
    job = h.submit()
    put_number = h.store.put_number

    def write_then_die(record: PhoneNumberRecord, token: str) -> PhoneNumberRecord:
        put_number(record, token)
        raise redis.exceptions.ConnectionError("connection lost after the write")

    monkeypatch.setattr(h.store, "put_number", write_then_die)
    with pytest.raises(redis.exceptions.ConnectionError):
        provision(h, job)
    monkeypatch.undo()
    # The record step has no recovery point of its own: the stored job still shows the rule
    # as the last step begun, and the record as not done.
    stored = h.reload(job)
    assert stored.step(StepName.DISPATCH_RULE).status is StepStatus.STARTED
    assert stored.step(StepName.PHONE_NUMBER).status is not StepStatus.DONE

    result = provision(h, h.reload(job))

    assert list(h.store.numbers_of_org(ORG)) == [NUMBER]
    record = h.store.get_number(NUMBER)
    assert record is not None
    assert record.phone_number_id == result.phone_number_id
    assert h.reload(job).step(StepName.PHONE_NUMBER).status is StepStatus.DONE
    assert total_objects(h) == 3


@pytest.mark.parametrize(("method", "step"), LIVEKIT_STEPS)
def test_started_step_with_its_object_is_adopted(
    h: Harness, method: str, step: StepName
) -> None:
    """A step a crashed run left STARTED, whose object exists, is adopted, not created."""
    job = crash_after_started(h, h.submit(), step, with_object=True)
    seeded = objects_of(h, job)[step]

    provision(h, job)

    assert h.fake.calls[method] == 0
    assert objects_of(h, job)[step] == seeded
    assert total_objects(h) == 3
    stored = h.reload(job)
    assert stored.step(step).adopted is True
    assert stored.step(step).resource_id == seeded[0]


@pytest.mark.parametrize(("method", "step"), LIVEKIT_STEPS)
def test_started_step_without_an_object_is_created(
    h: Harness, method: str, step: StepName
) -> None:
    """A step left STARTED whose call never reached LiveKit is looked up, then created."""
    job = crash_after_started(h, h.submit(), step, with_object=False)

    provision(h, job)

    assert h.fake.calls[method] == 1
    assert h.fake.list_calls() == 1
    assert len(objects_of(h, job)[step]) == 1
    assert total_objects(h) == 3
    stored = h.reload(job)
    assert stored.step(step).status is StepStatus.DONE
    assert stored.step(step).adopted is False


# --------------------------------------------------------------------------- conflicts


def test_inbound_conflict_with_a_foreign_trunk_is_number_conflict(h: Harness) -> None:
    """A number routed by an untagged inbound trunk fails with code number_conflict."""
    foreign = h.fake.seed_inbound(name="someone else", numbers=["+1 (555) 123-4567"])
    job = h.submit()

    with pytest.raises(ProvisioningFailure) as failure:
        provision(h, job)

    assert failure.value.code == "number_conflict"
    assert failure.value.field == "number"
    assert foreign in failure.value.message
    assert "something other than Trunkline" in failure.value.message
    assert list(h.fake.inbound) == [foreign]
    assert h.fake.calls[CREATE_RULE] == 0


def test_inbound_conflict_with_another_jobs_trunk_is_number_conflict(h: Harness) -> None:
    """A number held by another Trunkline job's trunk fails and names that job."""
    other = h.submit(org_id="org_other")
    seed_step_object(h, other, StepName.INBOUND_TRUNK)
    job = h.submit()

    with pytest.raises(ProvisioningFailure) as failure:
        provision(h, job)

    assert failure.value.code == "number_conflict"
    assert other.job_id in failure.value.message


def test_inbound_conflict_with_this_jobs_trunk_reuses_it(h: Harness) -> None:
    """A conflict with a trunk tagged for this job reuses that trunk instead of failing."""
    job = h.submit()
    mine = seed_step_object(h, job, StepName.INBOUND_TRUNK)

    result = provision(h, job)

    assert result.inbound_trunk_id == mine
    assert list(h.fake.inbound) == [mine]
    assert h.fake.rules[result.dispatch_rule_id]["trunk_ids"] == [mine]


def test_rule_conflict_with_this_jobs_rule_reuses_it(h: Harness) -> None:
    """A dispatch-rule conflict with a rule tagged for this job reuses that rule."""
    job = h.submit()
    inbound = seed_step_object(h, job, StepName.INBOUND_TRUNK)
    job.step(StepName.INBOUND_TRUNK).status = StepStatus.DONE
    job.step(StepName.INBOUND_TRUNK).resource_id = inbound
    mine = seed_step_object(h, job, StepName.DISPATCH_RULE, trunk_ids=[inbound])

    result = provision(h, job)

    assert result.dispatch_rule_id == mine
    assert list(h.fake.rules) == [mine]
    assert h.fake.calls[CREATE_RULE] == 1


@pytest.mark.parametrize("step", [StepName.INBOUND_TRUNK, StepName.DISPATCH_RULE])
def test_object_reused_after_a_conflict_is_recorded_as_adopted(
    h: Harness, step: StepName
) -> None:
    """A step that takes over its own earlier object through a conflict is marked adopted."""
    job = h.submit()
    inbound = seed_step_object(h, job, StepName.INBOUND_TRUNK)
    if step is StepName.DISPATCH_RULE:
        job.step(StepName.INBOUND_TRUNK).status = StepStatus.DONE
        job.step(StepName.INBOUND_TRUNK).resource_id = inbound
        seed_step_object(h, job, StepName.DISPATCH_RULE, trunk_ids=[inbound])

    provision(h, job)

    stored = h.reload(job)
    assert stored.step(step).status is StepStatus.DONE
    assert stored.step(step).adopted is True


def test_rule_conflict_with_a_foreign_rule_is_dispatch_rule_conflict(h: Harness) -> None:
    """A foreign rule already routing the inbound trunk fails with dispatch_rule_conflict."""
    job = h.submit()
    inbound = seed_step_object(h, job, StepName.INBOUND_TRUNK)
    job.step(StepName.INBOUND_TRUNK).status = StepStatus.DONE
    job.step(StepName.INBOUND_TRUNK).resource_id = inbound
    foreign = h.fake.seed_rule(trunk_ids=[inbound],
                               rule={"dispatch_rule_direct": {"room_name": "lobby"}})

    with pytest.raises(ProvisioningFailure) as failure:
        provision(h, job)

    assert failure.value.code == "dispatch_rule_conflict"
    assert foreign in failure.value.message
    assert list(h.fake.rules) == [foreign]


# --------------------------------------------------------------------------- compensation


def test_compensation_deletes_the_rule_before_the_trunks(h: Harness) -> None:
    """Compensation deletes the rule first, then both trunks, and the number record."""
    job = h.submit()
    result = provision(h, job)

    compensate(h, job)

    deleted = h.fake.deletions
    assert sorted(deleted) == sorted([result.dispatch_rule_id, result.inbound_trunk_id,
                                      result.outbound_trunk_id])
    assert deleted[0] == result.dispatch_rule_id
    assert total_objects(h) == 0
    assert h.store.get_number(NUMBER) is None
    assert list(h.store.numbers_of_org(ORG)) == []
    stored = h.reload(job)
    assert all(s.status is StepStatus.COMPENSATED for s in stored.steps.values())


def test_compensation_spares_objects_it_did_not_create(h: Harness) -> None:
    """Foreign trunks and rules, even on the same number, survive compensation."""
    foreign_out = h.fake.seed_outbound(name="theirs", numbers=[NUMBER], address="other.example")
    foreign_in = h.fake.seed_inbound(name="theirs", numbers=["+15557654321"])
    foreign_rule = h.fake.seed_rule(trunk_ids=[foreign_in],
                                    rule={"dispatch_rule_individual": {"room_prefix": "x-"}})
    job = h.submit()
    provision(h, job)

    compensate(h, job)

    assert list(h.fake.outbound) == [foreign_out]
    assert list(h.fake.inbound) == [foreign_in]
    assert list(h.fake.rules) == [foreign_rule]


def test_compensation_counts_a_missing_rule_as_deleted(h: Harness) -> None:
    """A rule already gone (not_found) is compensated and the trunks are still deleted."""
    job = h.submit()
    result = provision(h, job)
    del h.fake.rules[result.dispatch_rule_id]  # gone behind our back

    compensate(h, job)

    assert h.fake.calls["DeleteSIPDispatchRule"] == 1
    assert total_objects(h) == 0
    assert h.reload(job).step(StepName.DISPATCH_RULE).status is StepStatus.COMPENSATED


def test_compensation_after_a_lost_rule_delete_finishes(h: Harness) -> None:
    """A rule delete whose response was lost is retried as not_found, then the trunks go."""
    job = h.submit()
    provision(h, job)
    h.fake.inject("DeleteSIPDispatchRule", Fault.lost())
    with pytest.raises(LiveKitTimeout):
        compensate(h, job)
    assert h.fake.rules == {}
    assert len(h.fake.inbound) == len(h.fake.outbound) == 1

    compensate(h, h.reload(job))

    assert h.fake.calls["DeleteSIPDispatchRule"] == 2
    assert total_objects(h) == 0


def test_compensation_finds_tagged_objects_of_started_steps(h: Harness) -> None:
    """Steps STARTED with no recorded id have their tagged objects looked up and deleted."""
    job = h.submit()
    token = h.lock(job)
    inbound = seed_step_object(h, job, StepName.INBOUND_TRUNK)
    seed_step_object(h, job, StepName.OUTBOUND_TRUNK)
    seed_step_object(h, job, StepName.DISPATCH_RULE, trunk_ids=[inbound])
    foreign = h.fake.seed_outbound(name="theirs", numbers=[NUMBER], address="other.example")
    for _, name in LIVEKIT_STEPS:
        job.step(name).status = StepStatus.STARTED
    h.store.save(job, token)
    h.store.release_number_lock(NUMBER, token)

    compensate(h, h.reload(job))

    assert objects_of(h, job) == {name: [] for _, name in LIVEKIT_STEPS}
    assert list(h.fake.outbound) == [foreign]
    assert total_objects(h) == 1


def test_compensation_is_idempotent(h: Harness) -> None:
    """A second compensation of a compensated job makes no LiveKit call at all."""
    job = h.submit()
    provision(h, job)
    compensate(h, job)
    calls = sum(h.fake.calls.values())
    assert len(h.fake.deletions) == 3

    compensate(h, h.reload(job))

    assert sum(h.fake.calls.values()) == calls
    assert len(h.fake.deletions) == 3


def test_compensation_of_a_job_that_never_ran_calls_nothing(h: Harness) -> None:
    """Compensating a job whose steps are all pending is a no-op."""
    job = h.submit()

    compensate(h, job)

    assert sum(h.fake.calls.values()) == 0
    assert all(s.status is StepStatus.PENDING for s in h.reload(job).steps.values())


# --------------------------------------------------------------------------- the fake itself
# The saga tests are only as good as the fake: these pin the server rules they rely on.


def test_fake_refuses_a_second_inbound_trunk_for_a_normalised_number(h: Harness) -> None:
    """The fake refuses an inbound trunk sharing a number in another format, naming the first."""
    first = h.livekit.create_inbound_trunk(InboundTrunk(numbers=[NUMBER]))

    with pytest.raises(InboundNumberConflict) as conflict:
        h.livekit.create_inbound_trunk(InboundTrunk(numbers=["1 (555) 123-4567"]))

    assert conflict.value.conflicting_id == first.sip_trunk_id
    assert conflict.value.status == 400
    assert conflict.value.twirp_code == "invalid_argument"
    assert list(h.fake.inbound) == [first.sip_trunk_id]


def test_fake_allows_duplicate_outbound_trunks(h: Harness) -> None:
    """Outbound trunks have no duplicate check: the same one can be created twice."""
    trunk = OutboundTrunk(address="gw.example", numbers=[NUMBER])

    ids = {h.livekit.create_outbound_trunk(trunk).sip_trunk_id for _ in range(2)}

    assert len(ids) == 2
    assert all(i.startswith("ST_") and len(i) == 15 for i in ids)


def test_fake_deletes_like_the_server(h: Harness) -> None:
    """Unknown trunk deletes succeed; unknown rule deletes are not_found; rules outlive trunks."""
    trunk = h.fake.seed_inbound(numbers=[NUMBER])
    rule = h.fake.seed_rule(trunk_ids=[trunk], rule={"dispatch_rule_individual": {}})

    h.livekit.delete_trunk("ST_doesnotexist")
    h.livekit.delete_trunk(trunk)
    with pytest.raises(LiveKitNotFound):
        h.livekit.delete_dispatch_rule("SDR_doesnotexist")

    assert h.fake.inbound == {}
    assert list(h.fake.rules) == [rule]
    assert h.fake.deletions == [trunk]


def test_fake_list_filters(h: Harness) -> None:
    """Inbound number filters add wildcard trunks, outbound is exact, rules add wildcards."""
    inbound = h.fake.seed_inbound(numbers=["+1 555 123 4567"])
    wildcard = h.fake.seed_inbound(allowed_addresses=["203.0.113.5"])
    h.fake.seed_inbound(numbers=["+15557654321"])
    outbound = h.fake.seed_outbound(address="gw", numbers=[NUMBER])
    h.fake.seed_outbound(address="gw", numbers=["15551234567"])
    rule = h.fake.seed_rule(trunk_ids=[inbound], rule={"dispatch_rule_individual": {}})
    catch_all = h.fake.seed_rule(rule={"dispatch_rule_direct": {"room_name": "r"}})
    h.fake.seed_rule(trunk_ids=["ST_other"], rule={"dispatch_rule_individual": {}})

    found_in = {t.sip_trunk_id for t in h.livekit.list_inbound_trunks(numbers=[NUMBER])}
    found_out = [t.sip_trunk_id for t in h.livekit.list_outbound_trunks(numbers=[NUMBER])]
    found_rules = {r.sip_dispatch_rule_id for r in h.livekit.list_dispatch_rules(
        trunk_ids=[inbound])}

    assert found_in == {inbound, wildcard}
    assert found_out == [outbound]
    assert found_rules == {rule, catch_all}


def test_fake_faults_apply_or_not_as_named(h: Harness) -> None:
    """Unreachable and HTTP faults change nothing; a lost response still creates the trunk."""
    trunk = OutboundTrunk(address="gw.example", numbers=[NUMBER])
    h.fake.inject(CREATE_OUTBOUND, Fault.unreachable(), Fault.http(503), Fault.lost())

    with pytest.raises(LiveKitUnavailable):
        h.livekit.create_outbound_trunk(trunk)
    with pytest.raises(LiveKitServerError):
        h.livekit.create_outbound_trunk(trunk)
    assert h.fake.outbound == {}
    with pytest.raises(LiveKitTimeout):
        h.livekit.create_outbound_trunk(trunk)

    assert len(h.fake.outbound) == 1
    assert h.fake.calls[CREATE_OUTBOUND] == 3
    assert h.fake.pending_faults(CREATE_OUTBOUND) == 0


def test_fake_reads_camel_case_and_drops_unknown_fields(h: Harness) -> None:
    """lowerCamel names are read, misspelled ones silently dropped, as the server does."""
    request = httpx.Request(
        "POST", "http://livekit.fake/twirp/livekit.SIP/CreateSIPOutboundTrunk",
        json={"trunk": {"address": "gw", "numbers": [NUMBER], "authUsername": "u",
                        "auth_user_name": "typo"}},
        headers={"Authorization": "Bearer " + admin_token()},
    )

    answer = h.fake.handle(request)

    assert answer.status_code == 200
    created = answer.json()
    assert created["auth_username"] == "u"
    assert "auth_user_name" not in created
    assert created["transport"] == "SIP_TRANSPORT_AUTO"


def test_fake_rejects_bad_tokens_in_plain_text(h: Harness) -> None:
    """A token signed with another secret gets a plain-text 401, as the auth middleware sends."""
    with httpx.Client(transport=httpx.MockTransport(h.fake.handle)) as http:
        bad = LiveKitSIP(BASE_URL, API_KEY, "another-secret-of-sufficient-length-xx", http=http)
        with pytest.raises(LiveKitUnauthorized) as refused:
            bad.create_inbound_trunk(InboundTrunk(numbers=[NUMBER]))

    assert refused.value.status == 401
    assert refused.value.twirp_code is None
    assert h.fake.inbound == {}


def admin_token() -> str:
    now = int(time.time())
    return jwt.encode({"iss": API_KEY, "sub": API_KEY, "nbf": now - 60, "exp": now + 600,
                       "sip": {"admin": True}}, API_SECRET, algorithm="HS256")


# --------------------------------------------------------------------------- exact effects
# The tests below pin down what the tests above left open: found missing by mutation testing
# (`make mutants`), where a changed field, filter, status or message went unnoticed.


class Recorded:
    """A saga on the fake LiveKit whose requests are kept, by Twirp method, with their bodies."""

    def __init__(self, h: Harness) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []

        def handle(request: httpx.Request) -> httpx.Response:
            method = request.url.path.rsplit("/", 1)[-1]
            self.requests.append((method, json.loads(request.content or b"{}")))
            return h.fake.handle(request)

        self.http = httpx.Client(transport=httpx.MockTransport(handle), base_url=BASE_URL)
        self.saga = ProvisioningSaga(LiveKitSIP(BASE_URL, API_KEY, API_SECRET, http=self.http),
                                     h.store, h.vault)

    def bodies(self, method: str) -> list[dict[str, Any]]:
        return [body for name, body in self.requests if name == method]

    def close(self) -> None:
        self.saga.close()
        self.http.close()


@pytest.fixture
def recorded(h: Harness) -> Iterator[Recorded]:
    saga = Recorded(h)
    yield saga
    saga.close()


def run_saga(h: Harness, saga: ProvisioningSaga, job: Job, *, backward: bool = False) -> None:
    token = h.lock(job)
    try:
        if backward:
            saga.compensate(job, token, h.checkpoint(token))
        else:
            saga.provision(job, token, h.checkpoint(token))
        h.checkpoint(token)(job)
    finally:
        h.store.release_number_lock(job.number, token)


def test_agent_dispatch_carries_the_calls_context(h: Harness) -> None:
    """The agent dispatched into a call's room learns the org, number, record and metadata."""
    job = h.submit(agentName="support-bot", metadata={"crm_id": 7})

    result = provision(h, job)

    rule = h.fake.rules[result.dispatch_rule_id]
    assert rule["name"] == "Acme main line"
    [agent] = rule["room_config"]["agents"]
    assert agent["metadata"] == (
        '{"org_id":"org_acme","number":"+15551234567",'
        f'"phone_number_id":"{phone_number_id_for(job)}","metadata":{{"crm_id":7}}}}'
    )


def test_rule_without_an_agent_has_no_room_config(h: Harness) -> None:
    """Without agentName the rule dispatches no agent: LiveKit gets no room config."""
    job = h.submit()

    result = provision(h, job)

    assert h.fake.rules[result.dispatch_rule_id]["room_config"] is None


def test_record_keeps_every_optional_field(h: Harness) -> None:
    """The phone-number record holds the agent, allowed addresses and metadata it was given."""
    job = h.submit(agentName="support-bot", allowedAddresses=["203.0.113.0/24"],
                   metadata={"crm_id": 7})

    provision(h, job)

    record = h.store.get_number(NUMBER)
    assert record is not None
    assert (record.agent_name, record.allowed_addresses, record.metadata) == (
        "support-bot", ("203.0.113.0/24",), {"crm_id": 7})


def test_record_step_is_timed(h: Harness) -> None:
    """The record write is observed in the step-duration histogram under its own step."""
    labels = {"step": "phone_number"}
    before = REGISTRY.get_sample_value("trunkline_step_duration_seconds_count", labels) or 0.0

    provision(h, h.submit())

    assert REGISTRY.get_sample_value("trunkline_step_duration_seconds_count", labels) == before + 1


@pytest.mark.parametrize(
    ("org_id", "code", "message"),
    [
        ("org_other", "number_owned_by_other_org",
         "+15551234567 is provisioned by another organisation"),
        (ORG, "number_already_provisioned",
         "+15551234567 is already provisioned for this organisation ({pn}, job {job}); "
         "release it first to set it up again"),
    ],
)
def test_number_recorded_meanwhile_fails_the_record_step(
    h: Harness, org_id: str, code: str, message: str
) -> None:
    """A record written for the number by another job during this run fails with its code."""
    other = h.submit(org_id=org_id)
    job = h.submit()

    token = h.lock(job)

    def record_other(point: str, running: Job) -> None:
        if point == "after_rule":  # under this run's lock, as a racing writer's record lands
            h.store.put_number(PhoneNumberRecord(
                phone_number_id=phone_number_id_for(other), org_id=org_id, number=NUMBER,
                name="other", job_id=other.job_id, inbound_trunk_id="ST_o",
                outbound_trunk_id="ST_p", dispatch_rule_id="SDR_o", outbound_pstn="gw.example",
                transport=Transport.AUTO, auth_user_name="u", auth_password_ciphertext="c",
                room_prefix="call-"), token)

    h.saga.hooks = StepHooks(reached=record_other)
    with pytest.raises(ProvisioningFailure) as failure:
        h.saga.provision(job, token, h.checkpoint(token))

    assert (failure.value.code, failure.value.field) == (code, "number")
    assert failure.value.message == message.format(pn=phone_number_id_for(other),
                                                   job=other.job_id)


def test_inbound_conflict_whose_holder_vanished_is_number_conflict(h: Harness) -> None:
    """A conflicting trunk that is gone when looked up is reported as not ours."""
    job = h.submit()
    h.fake.inject(CREATE_INBOUND, Fault.http(
        400, 'Conflicting inbound SIP Trunks: "<new>" and "ST_gone", using the same number(s)',
        code="invalid_argument"))

    with pytest.raises(ProvisioningFailure) as failure:
        provision(h, job)

    assert failure.value.code == "number_conflict"
    assert failure.value.message == (
        "+15551234567 is already routed by LiveKit inbound trunk ST_gone, created by something "
        "other than Trunkline; delete that trunk or release the number, then replay this job")
    assert h.fake.calls["GetSIPInboundTrunk"] == 1


def test_inbound_conflict_without_an_id_is_number_conflict(h: Harness) -> None:
    """A conflict that names no trunk fails as number_conflict, looking nothing up."""
    job = h.submit()
    h.fake.inject(CREATE_INBOUND, Fault.http(
        400, "Conflicting inbound SIP Trunks, using the same number(s)", code="invalid_argument"))

    with pytest.raises(ProvisioningFailure) as failure:
        provision(h, job)

    assert failure.value.code == "number_conflict"
    assert "inbound trunk ?, created by something other than Trunkline" in failure.value.message
    assert h.fake.calls["GetSIPInboundTrunk"] == 0


def test_adoption_lists_by_number_and_by_inbound_trunk(
    h: Harness, recorded: Recorded
) -> None:
    """Steps in doubt are looked up with the narrowest filter: the number, the inbound trunk."""
    job = crash_after_started(h, h.submit(), StepName.DISPATCH_RULE, with_object=True)
    inbound_id = job.step(StepName.INBOUND_TRUNK).resource_id
    job.step(StepName.INBOUND_TRUNK).status = StepStatus.STARTED
    job.step(StepName.OUTBOUND_TRUNK).status = StepStatus.STARTED

    run_saga(h, recorded.saga, job)

    assert [b.get("numbers") for b in recorded.bodies("ListSIPInboundTrunk")] == [[NUMBER]]
    assert [b.get("numbers") for b in recorded.bodies("ListSIPOutboundTrunk")] == [[NUMBER]]
    assert [b.get("trunk_ids") for b in recorded.bodies("ListSIPDispatchRule")] == [
        [inbound_id]]


def test_compensation_lists_by_number_and_by_inbound_trunk(
    h: Harness, recorded: Recorded
) -> None:
    """Compensation of steps without ids looks them up with the same narrow filters."""
    job = h.submit()
    inbound = seed_step_object(h, job, StepName.INBOUND_TRUNK)
    seed_step_object(h, job, StepName.OUTBOUND_TRUNK)
    seed_step_object(h, job, StepName.DISPATCH_RULE, trunk_ids=[inbound])
    job.step(StepName.INBOUND_TRUNK).status = StepStatus.DONE
    job.step(StepName.INBOUND_TRUNK).resource_id = inbound
    for name in (StepName.OUTBOUND_TRUNK, StepName.DISPATCH_RULE):
        job.step(name).status = StepStatus.STARTED

    run_saga(h, recorded.saga, job, backward=True)

    assert [b.get("numbers") for b in recorded.bodies("ListSIPOutboundTrunk")] == [[NUMBER]]
    assert [b.get("trunk_ids") for b in recorded.bodies("ListSIPDispatchRule")] == [[inbound]]
    assert total_objects(h) == 0


def test_step_in_doubt_without_an_object_is_pending_until_created(h: Harness) -> None:
    """A step found STARTED with nothing on LiveKit goes back to PENDING, and stays valid
    in the job record when the run fails before creating it."""
    job = crash_after_started(h, h.submit(), StepName.INBOUND_TRUNK, with_object=False)
    job.step(StepName.OUTBOUND_TRUNK).status = StepStatus.STARTED
    h.fake.inject("ListSIPOutboundTrunk", Fault.http(503))

    with pytest.raises(LiveKitServerError):
        provision(h, job)

    assert job.step(StepName.INBOUND_TRUNK).status is StepStatus.PENDING
    token = h.lock(job)
    h.store.save(job, token)
    assert h.reload(job).step(StepName.INBOUND_TRUNK).status is StepStatus.PENDING


@pytest.mark.parametrize("copies", [1, 2])
def test_adoption_keeps_the_oldest_of_several_tagged_objects(
    h: Harness, caplog: pytest.LogCaptureFixture, copies: int
) -> None:
    """Adoption takes the first id in order, warns only when there are several, and stamps
    the step's end."""
    caplog.set_level("WARNING", logger="worker.saga")
    # Outbound trunks: LiveKit refuses duplicate inbound trunks and rules, not these.
    job = crash_after_started(h, h.submit(), StepName.OUTBOUND_TRUNK, with_object=False)
    ids = sorted(seed_step_object(h, job, StepName.OUTBOUND_TRUNK) for _ in range(copies))

    result = provision(h, job)

    assert result.outbound_trunk_id == ids[0]
    step = job.step(StepName.OUTBOUND_TRUNK)
    assert step.adopted is True
    assert step.finished_at is not None
    warnings = [r.getMessage() for r in caplog.records if r.name == "worker.saga"]
    expected = [f"several objects carry this job's tag; adopting {ids[0]}"]
    assert warnings == (expected if copies > 1 else [])


def test_leftovers_name_steps_in_doubt_as_unknown(h: Harness) -> None:
    """A step STARTED without an id is listed as unknown; pending and compensated ones not."""
    job = h.submit()
    job.step(StepName.INBOUND_TRUNK).status = StepStatus.DONE
    job.step(StepName.INBOUND_TRUNK).resource_id = "ST_in"
    job.step(StepName.DISPATCH_RULE).status = StepStatus.STARTED
    job.step(StepName.OUTBOUND_TRUNK).status = StepStatus.COMPENSATED

    assert h.saga.leftovers(job) == ["inbound_trunk:ST_in", "dispatch_rule:unknown"]


def test_compensated_steps_are_stamped(h: Harness) -> None:
    """Every compensated step records when it was compensated."""
    job = h.submit()
    provision(h, job)

    compensate(h, job)

    for step in h.reload(job).steps.values():
        assert step.status is StepStatus.COMPENSATED
        assert step.finished_at is not None
        assert step.started_at is not None
        assert step.finished_at >= step.started_at


def test_trunks_are_named_after_the_request(h: Harness) -> None:
    """Both trunks carry the request's name, as the rule does."""
    result = provision(h, h.submit())

    assert h.fake.inbound[result.inbound_trunk_id]["name"] == "Acme main line"
    assert h.fake.outbound[result.outbound_trunk_id]["name"] == "Acme main line"


@pytest.mark.parametrize("metadata", ['{"trunkline": "job_x"}', '{"trunkline": 5}', "[1]", ""])
def test_read_tag_ignores_anything_but_a_tag_object(metadata: str) -> None:
    """Metadata whose `trunkline` entry is not an object (or absent) is not our tag."""
    assert read_tag(metadata) is None


def test_phone_number_id_is_derived_from_the_job_id(h: Harness) -> None:
    """Every run of a job writes the same record id: pn_ and the job id's own part."""
    job = h.submit()

    assert phone_number_id_for(job) == "pn_" + job.job_id[len("job_"):]


def test_provision_passes_every_recovery_point_in_order(h: Harness) -> None:
    """Fault injection can stop a run at each named point, with the job in hand."""
    job = h.submit()
    points: list[tuple[str, Job]] = []
    h.saga.hooks = StepHooks(reached=lambda point, j: points.append((point, j)))

    provision(h, job)

    assert [point for point, _ in points] == [
        "before_trunks", "after_trunks", "after_rule", "after_record"]
    assert all(j is job for _, j in points)


def test_every_step_is_timed_under_its_own_name(h: Harness) -> None:
    """Each step's LiveKit call or record write lands in the step-duration histogram."""
    steps = ["inbound_trunk", "outbound_trunk", "dispatch_rule", "phone_number"]

    def counts() -> list[float]:
        return [REGISTRY.get_sample_value("trunkline_step_duration_seconds_count",
                                          {"step": step}) or 0.0 for step in steps]

    before = counts()

    provision(h, h.submit())

    assert counts() == [n + 1 for n in before]


def test_rule_conflict_is_looked_up_by_the_conflicting_rule(
    h: Harness, recorded: Recorded
) -> None:
    """A rule conflict reads just the rule LiveKit named, to see whether it is ours."""
    job = h.submit()
    inbound = seed_step_object(h, job, StepName.INBOUND_TRUNK)
    job.step(StepName.INBOUND_TRUNK).status = StepStatus.DONE
    job.step(StepName.INBOUND_TRUNK).resource_id = inbound
    mine = seed_step_object(h, job, StepName.DISPATCH_RULE, trunk_ids=[inbound])

    run_saga(h, recorded.saga, job)

    assert job.step(StepName.DISPATCH_RULE).resource_id == mine
    assert [b.get("dispatch_rule_ids") for b in recorded.bodies("ListSIPDispatchRule")] == [
        [mine]]


def test_rule_conflict_without_an_id_is_dispatch_rule_conflict(h: Harness) -> None:
    """A rule conflict that names no rule fails as dispatch_rule_conflict, with '?'."""
    job = h.submit()
    h.fake.inject(CREATE_RULE, Fault.http(
        400, "Dispatch rule for the same trunk already exists", code="invalid_argument"))

    with pytest.raises(ProvisioningFailure) as failure:
        provision(h, job)

    assert failure.value.code == "dispatch_rule_conflict"
    inbound = job.step(StepName.INBOUND_TRUNK).resource_id
    assert failure.value.message == (
        f"LiveKit dispatch rule ? already routes calls of inbound trunk {inbound}; "
        "it was not created by this job")
    assert h.fake.calls["ListSIPDispatchRule"] == 0


def test_rule_without_an_inbound_trunk_id_is_a_bug_named_as_such(h: Harness) -> None:
    """A rule step reached without the inbound trunk's id stops, naming the missing step."""
    job = h.submit()
    for name in (StepName.INBOUND_TRUNK, StepName.OUTBOUND_TRUNK):
        job.step(name).status = StepStatus.DONE

    with pytest.raises(RuntimeError, match=r"^step inbound_trunk has no id yet$"):
        provision(h, job)


def test_close_does_not_wait_for_a_create_in_flight(h: Harness) -> None:
    """Closing the saga (worker shutdown) returns while a trunk create is still running."""
    arrived: set[str] = set()
    entered, release = threading.Condition(), threading.Event()

    def hold(method: str) -> None:
        if method in (CREATE_INBOUND, CREATE_OUTBOUND):
            with entered:
                arrived.add(method)
                entered.notify_all()
            release.wait(10)

    h.fake.before_apply = hold
    job = h.submit()
    runner = threading.Thread(target=lambda: provision(h, job), daemon=True)
    runner.start()
    try:
        with entered:  # both creates submitted and in flight
            assert entered.wait_for(lambda: len(arrived) == 2, 10)
        started = time.monotonic()
        h.saga.close()
        assert time.monotonic() - started < 5
    finally:
        release.set()
        runner.join(10)


def test_done_steps_are_stamped(h: Harness) -> None:
    """Every step a run completes records when it finished."""
    job = h.submit()

    provision(h, job)

    for name, step in job.steps.items():
        assert step.status is StepStatus.DONE, name
        assert step.finished_at is not None, name


def test_tag_is_compact_json() -> None:
    """The tag is JSON without spaces: it shares LiveKit's metadata field with nothing else."""
    assert make_tag("job_1", "org_a", StepName.OUTBOUND_TRUNK, NUMBER) == (
        '{"trunkline":{"job_id":"job_1","org_id":"org_a","step":"outbound_trunk",'
        '"number":"+15551234567"}}')
