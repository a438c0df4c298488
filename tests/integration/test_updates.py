"""Updates keep what others set, on the real livekit-server and a real worker (#15 item 2).

An operator sets fields Trunkline does not model directly through LiveKit's API (noise
cancellation, custom headers and their attributes, media encryption, timeouts, inbound
digest auth, a rule's pin, attributes and room settings...). An update through Trunkline
changes only the fields it was asked to change, and a refused update puts all three objects
back exactly as they were, every field compared.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from producers import ProvisioningClient
from tests.integration.conftest import SEED_REQUEST, Stack, WorkerFactory
from tests.support.faultproxy import Action, FaultProxy, Rule
from worker.livekit import LiveKitObject, LiveKitSIP, ObjectKind
from worker.livekit.models import merged_json
from worker.records import JobResult, JobState, StepName, StepStatus

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

NUMBER = "+15551234567"
ROTATED = "Rotated-Canary-Pw-3c7d"
# Set through LiveKit's API, as an operator's console or script would; none of it is modelled
# by Trunkline. Values differ from the server's defaults, so a reset would show.
OPERATOR_FIELDS: dict[ObjectKind, dict[str, Any]] = {
    ObjectKind.INBOUND_TRUNK: {
        "krisp_enabled": True,
        "headers": {"X-Tenant": "acme"},
        "headers_to_attributes": {"X-Call-Ref": "call.ref"},
        "attributes_to_headers": {"agent.lang": "X-Lang"},
        "include_headers": "SIP_X_HEADERS",
        "ringing_timeout": "12s",
        "max_call_duration": "600s",
        "auth_username": "inbound-user",
        "auth_password": "Inbound-Canary-Pw-91a0",
        "media": {"only_listed_codecs": False, "codecs": [],
                  "encryption": "SIP_MEDIA_ENCRYPT_ALLOW"},
    },
    ObjectKind.OUTBOUND_TRUNK: {
        "headers": {"X-Route": "eu"},
        "headers_to_attributes": {"X-Carrier": "carrier"},
        "include_headers": "SIP_ALL_HEADERS",
        "destination_country": "DE",
        "from_host": "from.acme.example",
        # The deprecated spelling: a field-wise update would add `media` beside it.
        "media_encryption": "SIP_MEDIA_ENCRYPT_REQUIRE",
    },
    ObjectKind.DISPATCH_RULE: {
        "attributes": {"team": "sales"},
        "hide_phone_number": True,
        "krisp_enabled": True,
        "room_preset": "preset-a",
        "rule": {"dispatch_rule_individual": {"pin": "4321", "no_randomness": True}},
        "room_config": {"empty_timeout": 30, "max_participants": 3},  # + an agent setting
        "media": {"only_listed_codecs": False, "codecs": [],
                  "encryption": "SIP_MEDIA_ENCRYPT_ALLOW"},
    },
}


def provision(client: ProvisioningClient) -> JobResult:
    job = client.wait(client.submit(org_id="org_a", request={
        **SEED_REQUEST, "agentName": "agent-one", "metadata": {"plan": "basic"}}), timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result is not None
    return job.result


def read_all(livekit: LiveKitSIP, ids: JobResult) -> dict[ObjectKind, LiveKitObject]:
    return {
        ObjectKind.INBOUND_TRUNK: livekit.read_object(ObjectKind.INBOUND_TRUNK,
                                                      ids.inbound_trunk_id),
        ObjectKind.OUTBOUND_TRUNK: livekit.read_object(ObjectKind.OUTBOUND_TRUNK,
                                                       ids.outbound_trunk_id),
        ObjectKind.DISPATCH_RULE: livekit.read_object(ObjectKind.DISPATCH_RULE,
                                                      ids.dispatch_rule_id),
    }


def operator_edits(livekit: LiveKitSIP, ids: JobResult) -> dict[ObjectKind, LiveKitObject]:
    """Set OPERATOR_FIELDS on all three objects, and check LiveKit stored them as sent."""
    edited = {}
    for obj in read_all(livekit, ids).values():
        changes = OPERATOR_FIELDS[obj.kind]
        if obj.kind is ObjectKind.DISPATCH_RULE:
            (agent,) = obj.fields["room_config"]["agents"]
            changes = merged_json(changes, {"room_config": {
                "agents": [{**agent, "restart_policy": "JRP_NEVER"}]}})
        sent = obj.merged(changes)
        livekit.replace_object(sent)
        edited[obj.kind] = livekit.read_object(obj.kind, obj.object_id)
        assert edited[obj.kind] == sent
    return edited


def test_an_update_changes_only_the_asked_fields(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
) -> None:
    """Every field an operator set reads back unchanged after an update of every field
    Trunkline models; the asked-for fields changed, on the same three objects."""
    worker_factory()
    ids = provision(client)
    before = operator_edits(livekit, ids)
    job = client.wait(client.update(org_id="org_a", number=NUMBER, changes={
        "name": "Renamed line", "authPassword": ROTATED, "outboundPstn": "gw2.example:5070",
        "transport": "tcp", "authUserName": "new_user", "allowedAddresses": ["192.0.2.0/24"],
        "roomPrefix": "sales-", "metadata": {"plan": "gold"}}), timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == ids
    after = read_all(livekit, ids)

    assert after[ObjectKind.INBOUND_TRUNK] == before[ObjectKind.INBOUND_TRUNK].merged(
        {"name": "Renamed line", "allowed_addresses": ["192.0.2.0/24"]})
    assert after[ObjectKind.OUTBOUND_TRUNK] == before[ObjectKind.OUTBOUND_TRUNK].merged(
        {"name": "Renamed line", "auth_password": ROTATED, "address": "gw2.example:5070",
         "transport": "SIP_TRANSPORT_TCP", "auth_username": "new_user"})
    (agent,) = after[ObjectKind.DISPATCH_RULE].fields["room_config"]["agents"]
    assert json.loads(agent["metadata"])["metadata"] == {"plan": "gold"}
    (agent_before,) = before[ObjectKind.DISPATCH_RULE].fields["room_config"]["agents"]
    assert after[ObjectKind.DISPATCH_RULE] == before[ObjectKind.DISPATCH_RULE].merged({
        "name": "Renamed line",
        "rule": {"dispatch_rule_individual": {"room_prefix": "sales-"}},
        "room_config": {"agents": [{**agent_before, "metadata": agent["metadata"]}]},
    })


def test_a_new_agent_replaces_the_old_one_and_keeps_the_room_settings(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
) -> None:
    """Another agent takes the old one's place; the rule's room settings stay."""
    worker_factory()
    ids = provision(client)
    before = operator_edits(livekit, ids)
    job = client.wait(client.update(org_id="org_a", number=NUMBER,
                                    changes={"agentName": "agent-two"}), timeout=60)
    assert job.state is JobState.SUCCEEDED, job.error
    after = read_all(livekit, ids)
    rule = after[ObjectKind.DISPATCH_RULE].fields
    assert [a["agent_name"] for a in rule["room_config"]["agents"]] == ["agent-two"]
    assert {k: v for k, v in rule["room_config"].items() if k != "agents"} == {
        k: v for k, v in before[ObjectKind.DISPATCH_RULE].fields["room_config"].items()
        if k != "agents"}
    assert {k: v for k, v in rule.items() if k != "room_config"} == {
        k: v for k, v in before[ObjectKind.DISPATCH_RULE].fields.items() if k != "room_config"}
    assert after[ObjectKind.INBOUND_TRUNK] == before[ObjectKind.INBOUND_TRUNK]
    assert after[ObjectKind.OUTBOUND_TRUNK] == before[ObjectKind.OUTBOUND_TRUNK]


def test_a_refused_rule_write_puts_both_trunks_back_exactly(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    livekit: LiveKitSIP,
) -> None:
    """LiveKit refuses the rule's write after both trunks were changed: the three objects
    are what they were, every field (passwords and operator fields) compared; so is the
    record."""
    direct = worker_factory()
    ids = provision(client)
    direct.stop()
    before = operator_edits(livekit, ids)
    record_before = client.get_number("org_a", NUMBER)
    with FaultProxy(stack.livekit_url) as proxy:
        proxy.add_rule(Rule(Action.ERROR, method="UpdateSIPDispatchRule", status=400,
                            twirp_code="invalid_argument", msg="room prefix refused", times=1))
        worker_factory(LIVEKIT_URL=proxy.url)
        job = client.wait(client.update(org_id="org_a", number=NUMBER, changes={
            "name": "Renamed line", "authPassword": ROTATED,
            "allowedAddresses": ["192.0.2.0/24"], "roomPrefix": "sales-"}), timeout=60)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.code == "livekit_rejected"
    assert "room prefix refused" in job.error.message
    assert {job.step(name).status for name in (
        StepName.OUTBOUND_TRUNK, StepName.INBOUND_TRUNK, StepName.DISPATCH_RULE)} == {
        StepStatus.COMPENSATED}
    assert read_all(livekit, ids) == before
    assert client.get_number("org_a", NUMBER) == record_before


def test_a_rule_deleted_in_livekit_fails_the_update_and_the_trunks_go_back(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
) -> None:
    """The server itself refuses the last step (the rule is gone): both trunks, already
    changed, are put back exactly; the record is unchanged."""
    worker_factory()
    ids = provision(client)
    before = operator_edits(livekit, ids)
    livekit.delete_dispatch_rule(ids.dispatch_rule_id)
    record_before = client.get_number("org_a", NUMBER)
    job = client.wait(client.update(org_id="org_a", number=NUMBER, changes={
        "name": "Renamed line", "authPassword": ROTATED, "allowedAddresses": ["192.0.2.0/24"],
    }), timeout=60)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.code == "livekit_not_found"
    assert job.step(StepName.OUTBOUND_TRUNK).status is StepStatus.COMPENSATED
    assert job.step(StepName.INBOUND_TRUNK).status is StepStatus.COMPENSATED
    after = {kind: obj for kind, obj in before.items() if kind is not ObjectKind.DISPATCH_RULE}
    assert {kind: livekit.read_object(kind, obj.object_id) for kind, obj in after.items()} == (
        after)
    assert client.get_number("org_a", NUMBER) == record_before
