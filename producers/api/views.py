"""What the API shows of stored things: built from an allow-list, so a field added to a record
later is not shown until someone decides it may be. Never a password or its ciphertext."""

from __future__ import annotations

from typing import Any

from worker.records import JobResult, PhoneNumberRecord

# Wire name -> record attribute, in the order a response lists them. The wire names are the
# seed's request fields (camelCase) and the LiveKit ids; `hasAuthPassword` stands in for the
# password.
_NUMBER_FIELDS = (
    ("number", "number"),
    ("name", "name"),
    ("outboundPstn", "outbound_pstn"),
    ("transport", "transport"),
    ("authUserName", "auth_user_name"),
    ("hasAuthPassword", None),
    ("agentName", "agent_name"),
    ("roomPrefix", "room_prefix"),
    ("allowedAddresses", "allowed_addresses"),
    ("metadata", "metadata"),
    ("inboundTrunkId", "inbound_trunk_id"),
    ("outboundTrunkId", "outbound_trunk_id"),
    ("dispatchRuleId", "dispatch_rule_id"),
    ("phoneNumberId", "phone_number_id"),
    ("createdAt", "created_at"),
    ("updatedAt", "updated_at"),
)
NUMBER_VIEW_FIELDS = tuple(wire for wire, _ in _NUMBER_FIELDS)


def number_view(record: PhoneNumberRecord) -> dict[str, Any]:
    """A phone number as its organisation sees it (JSON-native, camelCase)."""
    data = record.model_dump(mode="json", include={a for _, a in _NUMBER_FIELDS if a})
    return {wire: bool(record.auth_password_ciphertext) if attribute is None else data[attribute]
            for wire, attribute in _NUMBER_FIELDS}


def release_view(number: str, result: JobResult | None) -> dict[str, Any]:
    """What a finished release says: the number, and whether there was anything to delete."""
    already = result is None or not result.phone_number_id
    return {
        "number": number,
        "released": True,
        "alreadyReleased": already,
        "phoneNumberId": None if already or result is None else result.phone_number_id,
    }
