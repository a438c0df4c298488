"""The provisioning core end to end: producer client -> Redis -> real worker -> real LiveKit."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis

from producers import ProvisioningClient
from tests.integration.conftest import (
    CANARY_PASSWORD,
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    everything_on_livekit,
    redis_dump,
    stream_events,
    trunkline_keys,
    wait_for,
)
from tests.support.faultproxy import Action, FaultProxy, Rule
from worker.contract import InvalidRequest
from worker.livekit import InboundTrunk, LiveKitSIP, SIPTransport
from worker.records import JobState, StepName, StepStatus
from worker.saga import read_tag
from worker.store import RESULTS_STREAM, JobStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]


def events_for(db: redis.Redis, job_id: str) -> list[dict[str, str]]:
    return stream_events(db, RESULTS_STREAM, job_id)


def test_seed_example_provisions_all_four_parts(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    redis_db: redis.Redis,
) -> None:
    """The seed's request creates both trunks, the rule and the record, with every field we set."""
    worker_factory()
    job_id = client.submit(org_id="org_seed", request=SEED_REQUEST)
    job = client.wait(job_id, timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None
    result = job.result

    inbound = livekit.get_inbound_trunk(result.inbound_trunk_id)
    assert inbound.sip_trunk_id.startswith("ST_")
    assert inbound.name == "Main Office SIP Trunk"
    assert inbound.numbers == ["+15551234567"]
    assert inbound.allowed_addresses == []
    tag = read_tag(inbound.metadata)
    assert tag == {"job_id": job_id, "org_id": "org_seed", "step": "inbound_trunk",
                   "number": "+15551234567"}

    outbound = livekit.get_outbound_trunk(result.outbound_trunk_id)
    assert outbound.name == "Main Office SIP Trunk"
    assert outbound.address == "sip.gateway.com"
    assert outbound.numbers == ["+15551234567"]
    assert outbound.transport is SIPTransport.SIP_TRANSPORT_AUTO
    assert outbound.auth_username == "sip_user"
    assert outbound.auth_password.get_secret_value() == "sip_password"
    assert read_tag(outbound.metadata) == {**tag, "step": "outbound_trunk"}

    rules = livekit.list_dispatch_rules(rule_ids=[result.dispatch_rule_id])
    assert len(rules) == 1
    rule = rules[0]
    assert rule.trunk_ids == [result.inbound_trunk_id]
    assert rule.rule.dispatch_rule_individual is not None
    assert rule.rule.dispatch_rule_individual.room_prefix == "call-"
    assert read_tag(rule.metadata) == {**tag, "step": "dispatch_rule"}
    assert rule.room_config is None or rule.room_config.agents == []

    record = JobStore(redis_db).get_number("+15551234567")
    assert record is not None
    assert (record.org_id, record.job_id, record.phone_number_id) == (
        "org_seed", job_id, result.phone_number_id)
    assert (record.inbound_trunk_id, record.outbound_trunk_id, record.dispatch_rule_id) == (
        result.inbound_trunk_id, result.outbound_trunk_id, result.dispatch_rule_id)

    assert everything_on_livekit(livekit) == {
        "inbound": [result.inbound_trunk_id], "outbound": [result.outbound_trunk_id],
        "rules": [result.dispatch_rule_id]}
    events = events_for(redis_db, job_id)
    assert len(events) == 1
    assert events[0]["status"] == "succeeded"
    assert events[0]["org_id"] == "org_seed"
    payload = json.loads(events[0]["payload"])
    assert payload["inbound_trunk_id"] == result.inbound_trunk_id
    assert payload["dispatch_rule_id"] == result.dispatch_rule_id
    assert payload["type"] == "created"
    assert all(step.status is StepStatus.DONE for step in job.steps.values())


def test_optional_fields_reach_livekit(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
) -> None:
    """Agent, transport, allow-list and room prefix are all read back from LiveKit as sent."""
    worker_factory()
    request = {
        **SEED_REQUEST,
        "number": "+44 20 7946 0958",
        "outboundPstn": "gw.example.net:5061",
        "transport": "TLS",
        "allowedAddresses": ["203.0.113.0/24", "198.51.100.7"],
        "agentName": "inbound-agent",
        "roomPrefix": "support-",
        "metadata": {"crm_id": "42"},
    }
    job = client.wait(client.submit(org_id="org_opt", request=request), timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None
    inbound = livekit.get_inbound_trunk(job.result.inbound_trunk_id)
    assert inbound.numbers == ["+442079460958"]
    assert inbound.allowed_addresses == ["203.0.113.0/24", "198.51.100.7"]
    outbound = livekit.get_outbound_trunk(job.result.outbound_trunk_id)
    assert outbound.address == "gw.example.net:5061"
    assert outbound.transport is SIPTransport.SIP_TRANSPORT_TLS
    assert outbound.numbers == ["+442079460958"]
    (rule,) = livekit.list_dispatch_rules(rule_ids=[job.result.dispatch_rule_id])
    assert rule.rule.dispatch_rule_individual is not None
    assert rule.rule.dispatch_rule_individual.room_prefix == "support-"
    assert rule.room_config is not None
    assert [a.agent_name for a in rule.room_config.agents] == ["inbound-agent"]
    agent_metadata = json.loads(rule.room_config.agents[0].metadata)
    assert agent_metadata["metadata"] == {"crm_id": "42"}
    assert agent_metadata["number"] == "+442079460958"


def test_number_held_by_foreign_trunk_fails_cleanly(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    redis_db: redis.Redis,
) -> None:
    """A number routed by someone else's trunk: clear code, nothing new left, DLQ, one event."""
    foreign = livekit.create_inbound_trunk(
        InboundTrunk(name="not ours", numbers=["+15551234567"]))
    before = everything_on_livekit(livekit)
    worker_factory()
    job_id = client.submit(org_id="org_a", request=SEED_REQUEST)
    job = client.wait(job_id, timeout=60)

    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.code == "number_conflict"
    assert job.error.field == "number"
    assert foreign.sip_trunk_id in job.error.message
    assert job.dead_lettered
    assert everything_on_livekit(livekit) == before
    assert JobStore(redis_db).dead_letter_ids() == [job_id]
    assert JobStore(redis_db).get_number("+15551234567") is None
    events = events_for(redis_db, job_id)
    assert [e["status"] for e in events] == ["failed"]
    payload = json.loads(events[0]["payload"])
    assert payload["error_code"] == "number_conflict"
    assert payload["retryable"] is False


def test_number_of_another_org_is_refused(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    redis_db: redis.Redis,
) -> None:
    """A number belongs to one organisation: a second org's job fails and changes nothing."""
    worker_factory()
    first = client.wait(client.submit(org_id="org_a", request=SEED_REQUEST), timeout=60)
    assert first.state is JobState.SUCCEEDED
    before = everything_on_livekit(livekit)
    second = client.wait(client.submit(org_id="org_b", request=SEED_REQUEST), timeout=60)
    assert second.state is JobState.FAILED
    assert second.error is not None
    assert second.error.code == "number_owned_by_other_org"
    assert everything_on_livekit(livekit) == before
    record = JobStore(redis_db).get_number("+15551234567")
    assert record is not None
    assert record.org_id == "org_a"


def test_livekit_errors_and_timeouts_are_retried_to_one_set(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """5xx, lost responses and timeouts on every step: retried with backoff, one set of objects."""
    with FaultProxy(stack.livekit_url) as proxy:
        proxy.add_rule(Rule(Action.ERROR, method="CreateSIPInboundTrunk", status=503, times=2))
        proxy.add_rule(Rule(Action.RESPONSE_LOST, method="CreateSIPOutboundTrunk", times=1))
        # Executed upstream after the client's 1 s timeout: the retry must wait and adopt it.
        proxy.add_rule(Rule(Action.DELAY, method="CreateSIPDispatchRule", seconds=1.5, times=1))
        # The look-up that adopts the lost outbound trunk is itself rate-limited once.
        proxy.add_rule(Rule(Action.ERROR, method="ListSIPOutboundTrunk", status=429, times=1))
        worker_factory(LIVEKIT_URL=proxy.url, TRUNKLINE_LIVEKIT_TIMEOUT="1")
        job = client.wait(client.submit(org_id="org_f", request=SEED_REQUEST), timeout=90)
        proxy.wait_idle()

        assert job.state is JobState.SUCCEEDED, job.error
        assert job.attempts >= 4
        on_livekit = everything_on_livekit(livekit)
        assert {k: len(v) for k, v in on_livekit.items()} == {
            "inbound": 1, "outbound": 1, "rules": 1}
        assert job.result is not None
        assert on_livekit["outbound"] == [job.result.outbound_trunk_id]
        assert on_livekit["rules"] == [job.result.dispatch_rule_id]
        # The lost outbound response and the timed-out rule were adopted, not re-created.
        assert job.step(StepName.OUTBOUND_TRUNK).adopted
        assert job.step(StepName.DISPATCH_RULE).adopted
        assert proxy.executed("CreateSIPOutboundTrunk") == 1
        assert proxy.executed("CreateSIPDispatchRule") == 1
        errors = [a.error.code for a in job.history if a.error]
        assert "livekit_server_error" in errors
        assert "livekit_timeout" in errors
        assert "livekit_rate_limited" in errors
        assert len(events_for(redis_db, job.job_id)) == 1


def test_same_job_delivered_twice_at_once(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """Two simultaneous deliveries of one job id make one set of objects and one event."""
    worker = worker_factory(start=False, concurrency=4)
    job_id = client.submit(org_id="org_dup", request=SEED_REQUEST)
    for _ in range(3):
        client.app.send_task("trunkline.provision", args=[job_id], queue=client.settings.queue)
    worker.start()
    job = client.wait(job_id, timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    # Every delivery has ended, including duplicates that found the number locked and came
    # back after a countdown: none of them can run or publish anything after this.
    wait_for(lambda: len(worker.tasks("received")) == 4
             and worker.tasks("succeeded") == worker.tasks("received"),
             60, "all four deliveries of the job ended")
    assert worker.received_jobs().count(job_id) >= 4
    job = client.get(job_id)
    assert job.attempts == 1
    assert {k: len(v) for k, v in everything_on_livekit(livekit).items()} == {
        "inbound": 1, "outbound": 1, "rules": 1}
    assert len(events_for(redis_db, job_id)) == 1


@pytest.mark.parametrize(
    ("request_body", "fields"),
    [
        ({**SEED_REQUEST, "number": "+15550100"}, {"number"}),
        ({**SEED_REQUEST, "number": "15551234567"}, {"number"}),
        ({**SEED_REQUEST, "number": "+1555CALLNOW"}, {"number"}),
        ({**SEED_REQUEST, "outboundPstn": "sip:user@host"}, {"outboundPstn"}),
        ({**SEED_REQUEST, "authUserName": "", "authPassword": ""},
         {"authUserName", "authPassword"}),
        ({"name": "x"}, {"number", "outboundPstn", "authUserName", "authPassword"}),
    ],
    ids=["local-only", "no-plus", "letters", "sip-uri", "empty-credentials", "missing"],
)
def test_invalid_requests_store_and_create_nothing(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    redis_db: redis.Redis, request_body: dict[str, str], fields: set[str],
) -> None:
    """Bad input is refused naming each field, before anything is stored, queued or created."""
    worker = worker_factory(concurrency=1)
    with pytest.raises(InvalidRequest) as refused:
        client.submit(org_id="org_bad", request=request_body)
    assert {e.field for e in refused.value.errors} == fields
    assert all(e.message for e in refused.value.errors)
    assert trunkline_keys(redis_db) == []
    # A message the refusal sent would sit ahead of a later job's in the queue: once that
    # job is done, the worker has had every earlier message, and it got only that job's.
    marker = client.submit(org_id="org_bad", request={**SEED_REQUEST, "number": "+15557654321"})
    done = client.wait(marker, timeout=60)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.result is not None
    assert set(worker.received_jobs()) == {marker}
    assert redis_db.llen(client.settings.queue) == 0
    assert everything_on_livekit(livekit) == {
        "inbound": [done.result.inbound_trunk_id], "outbound": [done.result.outbound_trunk_id],
        "rules": [done.result.dispatch_rule_id]}


def test_password_never_stored_or_logged_in_plaintext(
    worker_factory: WorkerFactory, client_factory: Callable[..., ProvisioningClient],
    livekit: LiveKitSIP, redis_db: redis.Redis, stack: Stack,
) -> None:
    """After a success, a failure and retries, the canary password is in no key and no log."""
    with FaultProxy(stack.livekit_url) as proxy:
        proxy.add_rule(Rule(Action.ERROR, method="CreateSIPOutboundTrunk", status=500, times=1))
        worker = worker_factory(LIVEKIT_URL=proxy.url)
        client = client_factory()
        ok = client.submit(org_id="org_c", idempotency_key="k1",
                           request={**SEED_REQUEST, "authPassword": CANARY_PASSWORD})
        livekit.create_inbound_trunk(InboundTrunk(name="foreign", numbers=["+15557654321"]))
        bad = client.submit(org_id="org_c", request={
            **SEED_REQUEST, "number": "+15557654321", "authPassword": CANARY_PASSWORD})
        assert client.wait(ok, 60).state is JobState.SUCCEEDED
        assert client.wait(bad, 60).state is JobState.FAILED
        with pytest.raises(InvalidRequest) as refused:
            client.submit(org_id="org_c", request={
                **SEED_REQUEST, "number": "bad", "authPassword": CANARY_PASSWORD})
        assert CANARY_PASSWORD not in str(refused.value)
        # LiveKit holds it (it must, to authenticate with the provider) ...
        assert any(
            t.auth_password.get_secret_value() == CANARY_PASSWORD
            for t in livekit.list_outbound_trunks()
        )
    # ... and nothing of ours does.
    worker.stop()
    dump = redis_dump(redis_db)
    assert len(dump) > 1000  # the scan really read the jobs, records and stream
    assert CANARY_PASSWORD.encode() not in dump
    assert CANARY_PASSWORD not in worker.read_log()
    for job_id in (ok, bad):
        assert CANARY_PASSWORD not in json.dumps(client.get(job_id).public_view())
