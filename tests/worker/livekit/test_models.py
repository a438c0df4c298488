"""Unit tests for LiveKitObject (an object as the server sent it) and wire_values."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import SecretStr

from worker.livekit import (
    LiveKitObject,
    ObjectKind,
    OutboundTrunk,
    RoomAgentDispatch,
    SIPTransport,
)

PASSWORD = "obj-canary-pw-4417"


def rule_fields() -> dict[str, Any]:
    return {
        "sip_dispatch_rule_id": "SDR_x",
        "name": "rule",
        "rule": {"dispatch_rule_individual": {"room_prefix": "call-", "pin": "4321",
                                              "no_randomness": True}},
        "room_config": {"empty_timeout": 30, "agents": [{"agent_name": "a", "metadata": "m",
                                                         "restart_policy": "JRP_NEVER"}]},
        "attributes": {"team": "sales"},
        "trunk_ids": ["ST_a"],
    }


def test_merge_keeps_nested_siblings_and_replaces_the_rest() -> None:
    """Nested objects merge key by key; lists, scalars and nulls replace what was there."""
    rule = LiveKitObject(ObjectKind.DISPATCH_RULE, rule_fields())
    merged = rule.merged({
        "name": "renamed",
        "rule": {"dispatch_rule_individual": {"room_prefix": "sales-"},
                 "dispatch_rule_direct": None},
        "room_config": {"agents": [{"agent_name": "b"}]},
        "trunk_ids": [],
    })
    assert merged.fields == {
        "sip_dispatch_rule_id": "SDR_x",
        "name": "renamed",
        "rule": {"dispatch_rule_individual": {"room_prefix": "sales-", "pin": "4321",
                                              "no_randomness": True},
                 "dispatch_rule_direct": None},
        "room_config": {"empty_timeout": 30, "agents": [{"agent_name": "b"}]},
        "attributes": {"team": "sales"},
        "trunk_ids": [],
    }
    assert rule.fields == rule_fields()  # the original is untouched


def test_merge_into_a_null_message_sets_it() -> None:
    rule = LiveKitObject(ObjectKind.DISPATCH_RULE, {**rule_fields(), "room_config": None})
    merged = rule.merged({"room_config": {"agents": []}})
    assert merged.fields["room_config"] == {"agents": []}


def test_merged_copies_share_nothing() -> None:
    """Changing what a merge was given, or returned, changes neither object."""
    changes = {"room_config": {"agents": [{"agent_name": "b"}]}}
    rule = LiveKitObject(ObjectKind.DISPATCH_RULE, rule_fields())
    merged = rule.merged(changes)
    changes["room_config"]["agents"].append({"agent_name": "c"})
    merged.fields["attributes"]["team"] = "support"
    assert merged.fields["room_config"]["agents"] == [{"agent_name": "b"}]
    assert rule.fields["attributes"] == {"team": "sales"}


def test_the_id_is_not_a_field_to_change() -> None:
    rule = LiveKitObject(ObjectKind.DISPATCH_RULE, rule_fields())
    with pytest.raises(ValueError, match="id"):
        rule.merged({"sip_dispatch_rule_id": "SDR_other"})


@pytest.mark.parametrize(("kind", "fields"), [
    (ObjectKind.INBOUND_TRUNK, {"sip_dispatch_rule_id": "SDR_x"}),
    (ObjectKind.DISPATCH_RULE, {"sip_dispatch_rule_id": ""}),
    (ObjectKind.OUTBOUND_TRUNK, {"sip_trunk_id": None}),
])
def test_an_object_needs_its_own_id(kind: ObjectKind, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=kind.id_field):
        LiveKitObject(kind, fields)


def test_json_round_trip_and_repr_without_secrets() -> None:
    trunk = LiveKitObject(ObjectKind.OUTBOUND_TRUNK, {
        "sip_trunk_id": "ST_o", "auth_password": PASSWORD, "headers": {"X-A": "é"},
        "max_call_duration": "600s", "transport": "SIP_TRANSPORT_TLS"})
    assert LiveKitObject.from_json(trunk.to_json()) == trunk
    assert repr(trunk) == "LiveKitObject(outbound_trunk, 'ST_o')"
    assert PASSWORD not in f"{trunk!r} {trunk}"


def test_wire_values_include_defaults_and_real_passwords() -> None:
    """An empty value is a value to set; passwords are revealed for the request body only."""
    trunk = OutboundTrunk(address="gw.example", transport=SIPTransport.SIP_TRANSPORT_AUTO,
                          auth_password=SecretStr(PASSWORD))
    assert trunk.wire_values({"name", "transport", "numbers", "auth_password"}) == {
        "name": "", "transport": "SIP_TRANSPORT_AUTO", "numbers": [], "auth_password": PASSWORD}
    assert PASSWORD not in repr(trunk)
    agent = RoomAgentDispatch(agent_name="a")
    assert agent.wire_values({"agent_name", "metadata"}) == {"agent_name": "a", "metadata": ""}


def test_wire_values_refuse_unknown_names() -> None:
    """A misspelt field would be silently dropped by LiveKit: refuse it here."""
    with pytest.raises(ValueError, match="adress"):
        OutboundTrunk().wire_values({"adress"})


def test_merge_accepts_a_deep_copy_of_itself() -> None:
    rule = LiveKitObject(ObjectKind.DISPATCH_RULE, rule_fields())
    assert rule.merged(copy.deepcopy({k: v for k, v in rule.fields.items()
                                      if k != "sip_dispatch_rule_id"})) == rule
