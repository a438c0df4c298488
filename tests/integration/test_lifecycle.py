"""Release, update in place and read, through the real pipeline on the real stack."""

from __future__ import annotations

import json

import pytest
import redis

from producers import NumberNotFound, ProvisioningClient
from tests.integration.conftest import (
    CANARY_PASSWORD,
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    everything_on_livekit,
    stream_events,
)
from tests.support.faultproxy import Action, FaultProxy, Rule
from worker.livekit import LiveKitSIP, SIPTransport
from worker.records import JobResult, JobState
from worker.store import RESULTS_STREAM, IdempotencyConflict, JobStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]


def provision(client: ProvisioningClient, org: str = "org_a", **fields: object) -> JobResult:
    job = client.wait(client.submit(org_id=org, request={**SEED_REQUEST, **fields}), timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None
    return job.result


def snapshot(livekit: LiveKitSIP, ids: JobResult) -> dict[str, object]:
    """Everything LiveKit holds for one number, password included (for comparisons only)."""
    outbound = livekit.get_outbound_trunk(ids.outbound_trunk_id)
    (rule,) = livekit.list_dispatch_rules(rule_ids=[ids.dispatch_rule_id])
    return {
        "inbound": livekit.get_inbound_trunk(ids.inbound_trunk_id).model_dump(mode="json"),
        "outbound": outbound.model_dump(mode="json"),
        "outbound_password": outbound.auth_password.get_secret_value(),
        "rule": rule.model_dump(mode="json"),
    }


def test_release_leaves_nothing_and_a_second_release_is_harmless(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    redis_db: redis.Redis,
) -> None:
    """Release deletes rule, trunks and record; releasing again succeeds and does nothing."""
    worker_factory()
    ids = provision(client)
    job = client.wait(client.release(org_id="org_a", number="+1 555 123 4567"), timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == ids
    assert everything_on_livekit(livekit) == {"inbound": [], "outbound": [], "rules": []}
    assert JobStore(redis_db).get_number("+15551234567") is None
    assert client.list_numbers("org_a") == ([], None)
    (event,) = stream_events(redis_db, RESULTS_STREAM, job.job_id)
    assert json.loads(event["payload"])["type"] == "released"

    # Nothing left to release: refused like any number the organisation does not hold, with
    # no job and no second event.
    with pytest.raises(NumberNotFound):
        client.release(org_id="org_a", number="+15551234567")
    assert redis_db.xlen(RESULTS_STREAM) == 2  # the create's and the release's
    # The number can be set up again afterwards.
    assert provision(client).inbound_trunk_id != ids.inbound_trunk_id


def test_password_rotation_changes_only_the_password_on_the_same_trunk(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    redis_db: redis.Redis,
) -> None:
    """A rotation changes the password LiveKit holds on the same outbound trunk, nothing else."""
    worker_factory()
    ids = provision(client)
    before = snapshot(livekit, ids)
    job = client.wait(client.update(org_id="org_a", number="+15551234567",
                                    changes={"authPassword": CANARY_PASSWORD}), timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == ids
    after = snapshot(livekit, ids)
    assert after["outbound_password"] == CANARY_PASSWORD
    assert before["outbound_password"] == "sip_password"
    assert {k: v for k, v in after.items() if k != "outbound_password"} == {
        k: v for k, v in before.items() if k != "outbound_password"}
    record = client.get_number("org_a", "+15551234567")
    assert client.vault.decrypt(record.auth_password_ciphertext) == CANARY_PASSWORD
    assert record.updated_by_job == job.job_id
    (event,) = stream_events(redis_db, RESULTS_STREAM, job.job_id)
    assert json.loads(event["payload"])["type"] == "updated"
    assert CANARY_PASSWORD not in json.dumps(job.public_view())
    assert CANARY_PASSWORD not in json.dumps(record.public_view())


def test_update_applies_every_field_in_place(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
) -> None:
    """Gateway, transport, user name, agent, prefix and allow-list change; the ids stay."""
    worker_factory()
    ids = provision(client, agentName="first-agent")
    changes = {"outboundPstn": "new.gateway.example:5070", "transport": "tcp",
               "authUserName": "new_user", "agentName": "second-agent", "roomPrefix": "sales-",
               "allowedAddresses": ["192.0.2.0/24"]}
    job = client.wait(client.update(org_id="org_a", number="+15551234567", changes=changes),
                      timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert everything_on_livekit(livekit) == {"inbound": [ids.inbound_trunk_id],
                                              "outbound": [ids.outbound_trunk_id],
                                              "rules": [ids.dispatch_rule_id]}
    outbound = livekit.get_outbound_trunk(ids.outbound_trunk_id)
    assert (outbound.address, outbound.transport, outbound.auth_username) == (
        "new.gateway.example:5070", SIPTransport.SIP_TRANSPORT_TCP, "new_user")
    assert outbound.auth_password.get_secret_value() == "sip_password"
    assert livekit.get_inbound_trunk(ids.inbound_trunk_id).allowed_addresses == ["192.0.2.0/24"]
    (rule,) = livekit.list_dispatch_rules(rule_ids=[ids.dispatch_rule_id])
    assert rule.trunk_ids == [ids.inbound_trunk_id]
    assert rule.rule.dispatch_rule_individual is not None
    assert rule.rule.dispatch_rule_individual.room_prefix == "sales-"
    assert rule.room_config is not None
    assert [a.agent_name for a in rule.room_config.agents] == ["second-agent"]
    record = client.get_number("org_a", "+15551234567")
    assert (record.outbound_pstn, record.agent_name, record.room_prefix) == (
        "new.gateway.example:5070", "second-agent", "sales-")
    page, _ = client.list_numbers("org_a", agent="second-agent")
    assert [r.number for r in page] == ["+15551234567"]
    assert client.list_numbers("org_a", agent="first-agent") == ([], None)


def test_refused_update_keeps_the_previous_configuration(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP,
) -> None:
    """LiveKit refuses the rule update after the password changed: both are as before."""
    direct = worker_factory()
    ids = provision(client)
    direct.stop()
    before = snapshot(livekit, ids)
    record_before = client.get_number("org_a", "+15551234567")
    with FaultProxy(stack.livekit_url) as proxy:
        proxy.add_rule(Rule(Action.ERROR, method="UpdateSIPDispatchRule", status=400,
                            twirp_code="invalid_argument", msg="room prefix refused", times=1))
        worker_factory(LIVEKIT_URL=proxy.url)
        job_id = client.update(org_id="org_a", number="+15551234567",
                               changes={"authPassword": "rotated", "agentName": "new-agent"})
        job = client.wait(job_id, timeout=60)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.code == "livekit_rejected"
    assert "room prefix refused" in job.error.message
    assert snapshot(livekit, ids) == before
    assert client.get_number("org_a", "+15551234567") == record_before


def test_other_organisations_can_neither_read_change_nor_release(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
) -> None:
    """Another organisation's number is not found for reads, updates and releases."""
    worker_factory()
    ids = provision(client, org="org_a")
    with pytest.raises(NumberNotFound):
        client.get_number("org_b", "+15551234567")
    with pytest.raises(NumberNotFound):
        client.update(org_id="org_b", number="+15551234567", changes={"authPassword": "x"})
    with pytest.raises(NumberNotFound):
        client.release(org_id="org_b", number="+15551234567")
    # A number nobody holds is refused exactly alike: the caller cannot tell them apart.
    with pytest.raises(NumberNotFound) as nobodys:
        client.release(org_id="org_b", number="+15551234599")
    assert str(nobodys.value) == "+15551234599 is not provisioned for this organisation"
    assert client.list_numbers("org_b") == ([], None)
    page, cursor = client.list_numbers("org_a")
    assert [r.inbound_trunk_id for r in page] == [ids.inbound_trunk_id]
    assert cursor is None
    views = json.dumps([r.public_view() for r in page])
    assert "sip_password" not in views
    assert "auth_password_ciphertext" not in views
    assert '"has_auth_password": true' in views
    assert everything_on_livekit(livekit)["inbound"] == [ids.inbound_trunk_id]


def test_a_repeated_update_is_answered_by_its_first_job_even_after_a_release(
    worker_factory: WorkerFactory, client: ProvisioningClient,
) -> None:
    """The idempotency key decides, not the number's current state."""
    worker_factory()
    provision(client)
    first = client.update(org_id="org_a", number="+15551234567",
                          changes={"authPassword": "rotated"}, idempotency_key="rot-1")
    assert client.wait(first, 60).state is JobState.SUCCEEDED
    assert client.wait(client.release(org_id="org_a", number="+15551234567"),
                       60).state is JobState.SUCCEEDED
    again = client.update(org_id="org_a", number="+15551234567",
                          changes={"authPassword": "rotated"}, idempotency_key="rot-1")
    assert again == first
    with pytest.raises(IdempotencyConflict):
        client.update(org_id="org_a", number="+15551234567",
                      changes={"authPassword": "other"}, idempotency_key="rot-1")
    with pytest.raises(NumberNotFound):
        client.update(org_id="org_a", number="+15551234567",
                      changes={"authPassword": "rotated"}, idempotency_key="rot-2")
