"""Unit tests for worker.reconcile: orphans, missing and drifted objects, deleting orphans,
and the latest report kept in Redis (saved by the beat task and `trunkline reconcile`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from tests.ops.conftest import World
from tests.worker.fake_livekit import PASSWORD
from worker.livekit import DispatchRule, DispatchRuleSpec, OutboundTrunk, SIPTransport
from worker.observability import RECONCILE_FINDINGS
from worker.reconcile import (
    MAX_SAVED_FINDINGS,
    Category,
    Finding,
    Kind,
    Reconciler,
    Report,
    TooManyDeletions,
    latest_report,
    latest_report_key,
    save_report,
    scheduled_reconcile,
)
from worker.records import JobState, StepName
from worker.saga import TAG_KEY, make_tag
from worker.store import Keys

A, B, C = "+15551230001", "+15551230002", "+15551230003"


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # The `trunkline` command's world (tests/ops): the CLI saves reports too.
    made = World(monkeypatch)
    yield made
    made.close()


def reconciler(world: World, max_deletions: int = 50) -> Reconciler:
    return Reconciler(world.livekit, world.store, world.vault, max_deletions=max_deletions)


def tagged(job_id: str, number: str, step: StepName, org: str = "org_acme") -> str:
    return make_tag(job_id, org, step, number)


def test_provisioned_numbers_are_clean(world: World) -> None:
    """Numbers provisioned by the saga give no finding at all."""
    world.provision(A)
    world.provision(B, agentName="receptionist", allowedAddresses=["203.0.113.0/24"])
    report = reconciler(world).run()
    assert report.clean, report.as_json()
    assert report.counts() == {"orphans": 0, "missing": 0, "drifted": 0, "in_flight": 0}
    assert report.checked["records"] == 2
    assert report.checked["outbound_trunks"] == 2


def test_orphans_of_unknown_failed_and_succeeded_jobs(world: World) -> None:
    """Tagged objects nobody's record uses are orphans, each with its reason, job and number."""
    ok = world.provision(A)
    failed = world.dead_letter(B)
    ghost_in = world.fake.seed_inbound(name="ghost", numbers=[C],
                                       metadata=tagged("job_ghost", C, StepName.INBOUND_TRUNK))
    ghost_rule = world.fake.seed_rule(
        name="ghost", trunk_ids=[ghost_in], rule={"dispatch_rule_individual": {"room_prefix": "x"}},
        metadata=tagged("job_ghost", C, StepName.DISPATCH_RULE))
    failed_out = world.fake.seed_outbound(
        name="left", address="sip.example.com", numbers=[B],
        metadata=tagged(failed.job_id, B, StepName.OUTBOUND_TRUNK))
    duplicate = world.fake.seed_outbound(
        name="dup", address="sip.example.com", numbers=[A],
        metadata=tagged(ok.job_id, A, StepName.OUTBOUND_TRUNK))
    world.fake.seed_outbound(name="not ours", address="sip.example.com", numbers=[C])

    report = reconciler(world).run()

    found = {(f.livekit_id, f.reason, f.job_id, f.number, f.kind) for f in report.orphans}
    assert found == {
        (ghost_in, "job_unknown", "job_ghost", C, Kind.INBOUND_TRUNK),
        (ghost_rule, "job_unknown", "job_ghost", C, Kind.DISPATCH_RULE),
        (failed_out, "job_failed", failed.job_id, B, Kind.OUTBOUND_TRUNK),
        (duplicate, "not_in_record", ok.job_id, A, Kind.OUTBOUND_TRUNK),
    }
    assert not report.missing and not report.drifted
    states = {f.livekit_id: f.job_state for f in report.orphans}
    assert states[failed_out] == "failed" and states[ghost_in] is None


def test_objects_of_queued_or_running_jobs_are_in_flight_not_orphans(world: World) -> None:
    """A job still queued or running may be mid-saga: its objects are left alone."""
    queued = world.submit(number=C)
    trunk = world.fake.seed_inbound(name="mid-saga", numbers=[C],
                                    metadata=tagged(queued.job_id, C, StepName.INBOUND_TRUNK))
    report = reconciler(world).run()
    assert report.orphans == []
    assert report.in_flight == [trunk]
    assert reconciler(world).delete_orphans() == []
    assert trunk in world.fake.inbound


def test_record_gone_but_job_succeeded_is_an_orphan(world: World) -> None:
    """Objects of a succeeded job whose record is gone are orphans (`no_record`)."""
    job = world.provision(A)
    world.redis.delete(world.store.keys.number(A))
    report = reconciler(world).run()
    assert {f.reason for f in report.orphans} == {"no_record"}
    assert len(report.orphans) == 3
    assert all(f.job_id == job.job_id and f.number == A for f in report.orphans)


def test_missing_rule_and_trunk_are_reported_with_record_ids(world: World) -> None:
    """A record whose rule or trunk is gone from LiveKit is reported as missing."""
    job = world.provision(A)
    assert job.result is not None
    world.livekit.delete_dispatch_rule(job.result.dispatch_rule_id)
    world.livekit.delete_trunk(job.result.outbound_trunk_id)
    report = reconciler(world).run()
    missing = {(f.kind, f.livekit_id) for f in report.missing}
    assert missing == {(Kind.DISPATCH_RULE, job.result.dispatch_rule_id),
                       (Kind.OUTBOUND_TRUNK, job.result.outbound_trunk_id)}
    for finding in report.missing:
        assert (finding.number, finding.job_id, finding.phone_number_id) == (
            A, job.job_id, job.result.phone_number_id)
        assert finding.category is Category.MISSING
    assert report.orphans == [] and report.drifted == []


def test_drifted_outbound_trunk_names_fields_never_passwords(world: World) -> None:
    """An outbound trunk edited by hand is drifted; the password difference carries no value."""
    job = world.provision(A)
    assert job.result is not None
    trunk_id = job.result.outbound_trunk_id
    current = world.livekit.get_outbound_trunk(trunk_id)
    world.livekit.update_outbound_trunk(trunk_id, OutboundTrunk(
        name=current.name, metadata=current.metadata, address="evil.example.net",
        transport=SIPTransport.SIP_TRANSPORT_UDP, numbers=current.numbers,
        auth_username="intruder", auth_password="Hand-Set-Pw-991"))
    report = reconciler(world).run()
    assert len(report.drifted) == 1
    finding = report.drifted[0]
    assert (finding.livekit_id, finding.kind, finding.number, finding.job_id) == (
        trunk_id, Kind.OUTBOUND_TRUNK, A, job.job_id)
    fields = {f.field: f for f in finding.fields}
    assert set(fields) == {"address", "transport", "auth_username", "auth_password"}
    assert fields["address"].expected == "sip.provider.example:5060"
    assert fields["address"].actual == "evil.example.net"
    assert fields["auth_password"].secret
    text = json.dumps(report.as_json())
    assert PASSWORD not in text and "Hand-Set-Pw-991" not in text
    assert '"auth_password", "secret": true' in text


def test_password_alone_changed_is_drift(world: World) -> None:
    """Only the password differs: still drifted, compared through the vault."""
    job = world.provision(A)
    assert job.result is not None
    trunk = world.livekit.get_outbound_trunk(job.result.outbound_trunk_id)
    world.livekit.update_outbound_trunk(trunk.sip_trunk_id, trunk.model_copy(
        update={"auth_password": SecretStr("other")}))
    report = reconciler(world).run()
    assert [[f.field for f in d.fields] for d in report.drifted] == [["auth_password"]]


def test_without_a_vault_passwords_are_not_compared(world: World) -> None:
    """No TRUNKLINE_SECRET_KEYS: passwords are skipped, and the report says so."""
    job = world.provision(A)
    assert job.result is not None
    trunk = world.livekit.get_outbound_trunk(job.result.outbound_trunk_id)
    world.livekit.update_outbound_trunk(trunk.sip_trunk_id, trunk.model_copy(
        update={"auth_password": SecretStr("other")}))
    report = Reconciler(world.livekit, world.store, None).run()
    assert report.drifted == []
    assert any("passwords were not compared" in w for w in report.warnings)


def test_inbound_and_rule_drift(world: World) -> None:
    """Allowed addresses, numbers, trunk ids, room prefix and agent are all compared."""
    job = world.provision(A, agentName="receptionist", allowedAddresses=["203.0.113.7"])
    assert job.result is not None
    inbound = world.livekit.get_inbound_trunk(job.result.inbound_trunk_id)
    world.livekit.update_inbound_trunk(inbound.sip_trunk_id, inbound.model_copy(
        update={"allowed_addresses": ["0.0.0.0/0"]}))
    rule = world.livekit.list_dispatch_rules(rule_ids=[job.result.dispatch_rule_id])[0]
    other = world.fake.seed_inbound(name="other", numbers=[C])
    world.livekit.update_dispatch_rule(rule.sip_dispatch_rule_id, DispatchRule(
        name=rule.name, metadata=rule.metadata, trunk_ids=[other],
        rule=DispatchRuleSpec.model_validate(
            {"dispatch_rule_individual": {"room_prefix": "hijack-"}})))
    report = reconciler(world).run()
    by_kind = {f.kind: {d.field: d for d in f.fields} for f in report.drifted}
    assert set(by_kind[Kind.INBOUND_TRUNK]) == {"allowed_addresses"}
    assert by_kind[Kind.INBOUND_TRUNK]["allowed_addresses"].actual == ["0.0.0.0/0"]
    assert set(by_kind[Kind.DISPATCH_RULE]) == {"trunk_ids", "room_prefix", "agents"}
    assert by_kind[Kind.DISPATCH_RULE]["agents"].expected == ["receptionist"]
    assert by_kind[Kind.DISPATCH_RULE]["agents"].actual == []


def test_a_number_with_an_active_job_is_not_judged(world: World) -> None:
    """While a job for the number is queued or running (an update, say), drift waits."""
    job = world.provision(A)
    assert job.result is not None
    trunk = world.livekit.get_outbound_trunk(job.result.outbound_trunk_id)
    world.livekit.update_outbound_trunk(trunk.sip_trunk_id, trunk.model_copy(
        update={"address": "mid.update.example"}))
    world.submit(number=A)  # queued, in the active index
    report = reconciler(world).run()
    assert report.drifted == []
    assert job.result.outbound_trunk_id in report.in_flight


def test_delete_orphans_removes_only_orphans_rules_first(world: World) -> None:
    """--delete removes orphans only, each rule before the trunks; everything else stays."""
    ok = world.provision(A)
    assert ok.result is not None
    ghost_in = world.fake.seed_inbound(name="ghost", numbers=[C],
                                       metadata=tagged("job_ghost", C, StepName.INBOUND_TRUNK))
    ghost_out = world.fake.seed_outbound(name="ghost", address="x.example", numbers=[C],
                                         metadata=tagged("job_ghost", C,
                                                         StepName.OUTBOUND_TRUNK))
    ghost_rule = world.fake.seed_rule(
        name="ghost", trunk_ids=[ghost_in], rule={"dispatch_rule_individual": {"room_prefix": "x"}},
        metadata=tagged("job_ghost", C, StepName.DISPATCH_RULE))
    world.livekit.delete_trunk(ok.result.outbound_trunk_id)  # a missing object stays missing
    foreign = world.fake.seed_inbound(name="foreign", numbers=[B])

    r = reconciler(world)
    report = r.run()
    assert len(report.orphans) == 3 and len(report.missing) == 1
    before = len(world.fake.deletions)
    deletions = r.delete_orphans(report)

    assert all(d.deleted for d in deletions)
    assert world.fake.deletions[before:] == [ghost_rule, ghost_out, ghost_in]
    assert [d.finding.kind for d in deletions] == [
        Kind.DISPATCH_RULE, Kind.OUTBOUND_TRUNK, Kind.INBOUND_TRUNK]
    assert foreign in world.fake.inbound
    assert ok.result.inbound_trunk_id in world.fake.inbound
    assert ok.result.dispatch_rule_id in world.fake.rules
    after = r.run()
    assert after.orphans == [] and len(after.missing) == 1


def test_delete_skips_numbers_locked_by_a_running_job(world: World) -> None:
    """A number whose lock is held is not touched; the deletion says why."""
    trunk = world.fake.seed_inbound(name="ghost", numbers=[C],
                                    metadata=tagged("job_ghost", C, StepName.INBOUND_TRUNK))
    assert world.store.acquire_number_lock(C, "job_other:token", 30)
    deletions = reconciler(world).delete_orphans()
    assert [d.deleted for d in deletions] == [False]
    assert "locked" in deletions[0].detail
    assert trunk in world.fake.inbound
    assert world.store.number_lock_holder(C)[0] == "job_other:token"


def test_delete_checks_again_a_job_replayed_meanwhile(world: World) -> None:
    """An orphan of a failed job that was replayed after the report is not deleted."""
    failed = world.dead_letter(B)
    left = world.fake.seed_outbound(name="left", address="x.example", numbers=[B],
                                    metadata=tagged(failed.job_id, B, StepName.OUTBOUND_TRUNK))
    r = reconciler(world)
    report = r.run()
    assert [f.livekit_id for f in report.orphans] == [left]
    world.store.replay(failed.job_id, deadline=time.time() + 60)
    deletions = r.delete_orphans(report)
    assert [(d.deleted, d.detail) for d in deletions] == [
        (False, "no longer an orphan (its job or record changed)")]
    assert left in world.fake.outbound


def test_delete_refuses_too_many_orphans(world: World) -> None:
    """More orphans than max_deletions: nothing is deleted (another deployment?)."""
    for index in range(3):
        number = f"+1555123100{index}"
        world.fake.seed_outbound(name="ghost", address="x.example", numbers=[number],
                                 metadata=tagged(f"job_ghost{index}", number,
                                                 StepName.OUTBOUND_TRUNK))
    with pytest.raises(TooManyDeletions, match="refusing to delete 3 orphans"):
        reconciler(world, max_deletions=2).delete_orphans()
    assert len(world.fake.outbound) == 3


def test_report_json_shape(world: World) -> None:
    """--json's document: the three lists, each item naming the LiveKit id, number and job."""
    world.fake.seed_inbound(name="ghost", numbers=[C],
                            metadata=tagged("job_ghost", C, StepName.INBOUND_TRUNK))
    document = reconciler(world).run().as_json()
    assert set(document) == {"orphans", "missing", "drifted", "summary"}
    item = document["orphans"][0]
    assert {"livekit_id", "number", "job_id", "kind", "reason"} <= set(item)
    assert document["summary"]["orphans"] == 1
    assert JobState.FAILED.value not in json.dumps(item)


def forget_job(world: World, job_id: str) -> None:
    """What retention does to a finished job: its record is deleted, the number's stays."""
    assert world.redis.delete(world.store.keys.job(job_id)) == 1


def test_objects_a_record_uses_stay_owned_after_their_job_record_is_deleted(
        world: World) -> None:
    """Retention deleted the job: its objects the record uses are owned, a stray one of the
    same job is `job_unknown`, and deleting orphans removes the stray only."""
    job = world.provision(A)
    assert job.result is not None
    stray = world.fake.seed_outbound(name="dup", address="x.example", numbers=[A],
                                     metadata=tagged(job.job_id, A, StepName.OUTBOUND_TRUNK))
    forget_job(world, job.job_id)

    r = reconciler(world)
    report = r.run()

    assert [(f.livekit_id, f.reason, f.job_state) for f in report.orphans] == [
        (stray, "job_unknown", None)]
    assert report.missing == [] and report.drifted == []
    assert [(d.finding.livekit_id, d.deleted) for d in r.delete_orphans(report)] == [
        (stray, True)]
    for object_id in (job.result.inbound_trunk_id, job.result.outbound_trunk_id):
        assert object_id in world.fake.inbound or object_id in world.fake.outbound
    assert job.result.dispatch_rule_id in world.fake.rules
    assert r.run().clean


def test_delete_leaves_an_unknown_jobs_object_a_record_took_since_the_report(
        world: World) -> None:
    """The job is gone and its tag names no number: once any record points at the object
    (written after the report), it is owned and not deleted."""
    job = world.provision(A)
    assert job.result is not None
    untagged_number = json.dumps({TAG_KEY: {"job_id": "job_gone", "org_id": "org_acme",
                                            "step": StepName.OUTBOUND_TRUNK.value}})
    adopted = world.fake.seed_outbound(name="adopted", address="x.example", numbers=[A],
                                       metadata=untagged_number)
    r = reconciler(world)
    report = r.run()
    assert [(f.livekit_id, f.reason, f.number) for f in report.orphans] == [
        (adopted, "job_unknown", None)]

    record = world.store.get_number(A)
    assert record is not None
    world.redis.set(world.store.keys.number(A),
                    record.model_copy(update={"outbound_trunk_id": adopted}).model_dump_json())
    deletions = r.delete_orphans(report)

    assert [(d.deleted, d.detail) for d in deletions] == [
        (False, "no longer an orphan (its job or record changed)")]
    assert adopted in world.fake.outbound


def test_latest_report_round_trips_findings_without_secrets(world: World) -> None:
    """The saved report is the --json document plus when, by whom; never a password."""
    assert latest_report(world.redis) is None
    job = world.provision(A)
    assert job.result is not None
    trunk = world.livekit.get_outbound_trunk(job.result.outbound_trunk_id)
    world.livekit.update_outbound_trunk(trunk.sip_trunk_id, trunk.model_copy(
        update={"auth_password": SecretStr("Hand-Set-Pw-3391")}))
    ghost = world.fake.seed_inbound(name="ghost", numbers=[C],
                                    metadata=tagged("job_ghost", C, StepName.INBOUND_TRUNK))
    report = reconciler(world).run()

    saved = save_report(world.store, report, source="beat", clock=lambda: 1_700_000_000.0)
    loaded = latest_report(world.redis)

    assert loaded == saved
    assert loaded["source"] == "beat" and loaded["saved_at"] == "2023-11-14T22:13:20+00:00"
    assert loaded["summary"]["started_at"] == report.started_at.isoformat()
    assert [f["livekit_id"] for f in loaded["orphans"]] == [ghost]
    assert loaded["drifted"][0]["fields"] == [
        {"field": "auth_password", "secret": True, "changed": True}]
    assert loaded["truncated"] == [] and "deleted" not in loaded
    raw = world.redis.get(latest_report_key(world.store.keys))
    assert isinstance(raw, bytes)
    assert b"Hand-Set-Pw-3391" not in raw and PASSWORD.encode() not in raw


def test_a_saved_report_replaces_the_previous_and_keeps_counts_when_cut(world: World) -> None:
    """Only the latest report is kept; a huge one keeps MAX_SAVED_FINDINGS per list and its
    true counts."""
    save_report(world.store, reconciler(world).run(), source="cli")
    huge = Report(orphans=[
        Finding(category=Category.ORPHAN, kind=Kind.DISPATCH_RULE, livekit_id=f"SDR_{index}",
                number=C, job_id=f"job_ghost{index}", org_id="org_acme", reason="job_unknown")
        for index in range(MAX_SAVED_FINDINGS + 1)])
    save_report(world.store, huge, source="beat")

    loaded = latest_report(world.redis)
    assert loaded is not None and loaded["source"] == "beat"
    assert len(loaded["orphans"]) == MAX_SAVED_FINDINGS
    assert loaded["summary"]["orphans"] == MAX_SAVED_FINDINGS + 1
    assert loaded["truncated"] == ["orphans"]


def test_latest_report_that_does_not_load_reads_as_none(world: World) -> None:
    """A damaged saved report is no report, not an error for the page that shows it."""
    world.redis.set(latest_report_key(Keys()), b"{not json")
    assert latest_report(world.redis) is None


def test_trunkline_reconcile_saves_its_findings_and_deletions(world: World) -> None:
    """`trunkline reconcile` saves what it found; with --delete, what it deleted too."""
    ghost = world.fake.seed_inbound(name="ghost", numbers=[C],
                                    metadata=tagged("job_ghost", C, StepName.INBOUND_TRUNK))
    world.cli_json("reconcile")
    found = latest_report(world.redis)
    assert found is not None and found["source"] == "cli"
    assert [f["livekit_id"] for f in found["orphans"]] == [ghost] and "deleted" not in found

    result = world.cli("reconcile", "--delete", "--yes", "--json")
    assert result.exit_code == 0, result.output
    deleted = latest_report(world.redis)
    assert deleted is not None
    assert [(d["livekit_id"], d["deleted"]) for d in deleted["deleted"]] == [(ghost, True)]


def test_the_scheduled_run_saves_its_report_and_sets_the_metrics(world: World) -> None:
    """The beat task's run keeps its findings as the latest report and exports the counts."""
    ghost = world.fake.seed_inbound(name="ghost", numbers=[C],
                                    metadata=tagged("job_ghost", C, StepName.INBOUND_TRUNK))

    counts = scheduled_reconcile(world.livekit, world.store, world.vault)

    assert counts == {"orphans": 1, "missing": 0, "drifted": 0, "in_flight": 0}
    assert RECONCILE_FINDINGS.labels("orphans")._value.get() == 1.0
    saved = latest_report(world.redis)
    assert saved is not None and saved["source"] == "beat"
    assert [f["livekit_id"] for f in saved["orphans"]] == [ghost]
