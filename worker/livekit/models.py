"""LiveKit SIP objects as pydantic models, named exactly as the Twirp JSON API names them.

The field names are the server's snake_case proto names (``livekit_sip.proto``); LiveKit
silently drops unknown or misspelled fields, so a typo here would lose data without an
error. Only the fields Trunkline uses are modelled: answers carry more (``headers``,
``krisp_enabled``, ``media``, a rule's ``attributes``...), and those are ignored on the way
in. So a typed model is for creating objects and reading what Trunkline uses, never for
writing an existing object back: ``replace`` with one would reset every field not modelled
here.

Existing objects are changed through :class:`LiveKitObject` instead: the object exactly as
the server sent it (every field, whether Trunkline, this module or a Python LiveKit package
knows it or not), with only Trunkline's fields merged in, and sent back whole with
``replace``. The server decodes its own JSON losslessly, so whatever an operator set
survives, and a snapshot taken before a change restores the object exactly.

Reading answers is lenient: unknown keys are ignored and ``null`` strings, lists and
messages read as their empty values.

Passwords are :class:`pydantic.SecretStr`, so ``repr``/``str``/``model_dump()`` and
anything logged from them show ``**********``. Only :meth:`to_wire` - the request body
the client sends - reveals them. ``to_wire`` also leaves out the server-made id
(``sip_trunk_id`` / ``sip_dispatch_rule_id``) and every field still at its default, which
proto3 treats the same as an absent field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
    model_validator,
)

__all__ = [
    "DispatchRule",
    "DispatchRuleCallee",
    "DispatchRuleDirect",
    "DispatchRuleIndividual",
    "DispatchRuleSpec",
    "InboundTrunk",
    "LiveKitObject",
    "ObjectKind",
    "OutboundTrunk",
    "RoomAgentDispatch",
    "RoomConfig",
    "SIPTransport",
    "merged_json",
]

_REVEAL_SECRETS = "reveal_secrets"


def _null_as(empty: Callable[[], Any]) -> BeforeValidator:
    """Read JSON ``null`` as the field's empty value."""

    def replace(value: Any) -> Any:
        return empty() if value is None else value

    return BeforeValidator(replace)


def _serialize_secret(value: SecretStr, info: SerializationInfo) -> str:
    context = info.context
    if isinstance(context, dict) and context.get(_REVEAL_SECRETS) is True:
        return value.get_secret_value()
    return str(value)


Text = Annotated[str, _null_as(str)]
TextList = Annotated[list[str], _null_as(list)]
Password = Annotated[
    SecretStr,
    _null_as(str),
    PlainSerializer(_serialize_secret, return_type=str),
]


class SIPTransport(StrEnum):
    """How LiveKit reaches an outbound trunk's ``address``."""

    SIP_TRANSPORT_AUTO = "SIP_TRANSPORT_AUTO"
    SIP_TRANSPORT_UDP = "SIP_TRANSPORT_UDP"
    SIP_TRANSPORT_TCP = "SIP_TRANSPORT_TCP"
    SIP_TRANSPORT_TLS = "SIP_TRANSPORT_TLS"


class _WireModel(BaseModel):
    """Base for every LiveKit object: lenient reads, secret-aware request bodies."""

    model_config = ConfigDict(extra="ignore")

    _server_id_field: ClassVar[str | None] = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object to send: real passwords, no server-made id, no default fields."""
        exclude = {self._server_id_field} if self._server_id_field else None
        return self.model_dump(
            mode="json",
            exclude=exclude,
            exclude_defaults=True,
            context={_REVEAL_SECRETS: True},
        )

    def wire_values(self, names: set[str]) -> dict[str, Any]:
        """The named fields as the server spells them, defaults included (an empty list
        is a value to set), real passwords: a change to merge into a
        :class:`LiveKitObject`."""
        unknown = names - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no field {sorted(unknown)}")
        return self.model_dump(mode="json", include=names, context={_REVEAL_SECRETS: True})


class InboundTrunk(_WireModel):
    """``SIPInboundTrunkInfo``: which calls LiveKit accepts from a provider."""

    _server_id_field: ClassVar[str | None] = "sip_trunk_id"

    sip_trunk_id: Text = ""
    name: Text = ""
    metadata: Text = ""
    numbers: TextList = Field(default_factory=list)
    allowed_addresses: TextList = Field(default_factory=list)
    allowed_numbers: TextList = Field(default_factory=list)
    auth_username: Text = ""
    auth_password: Password = SecretStr("")


class OutboundTrunk(_WireModel):
    """``SIPOutboundTrunkInfo``: how LiveKit places calls through a provider."""

    _server_id_field: ClassVar[str | None] = "sip_trunk_id"

    sip_trunk_id: Text = ""
    name: Text = ""
    metadata: Text = ""
    address: Text = ""
    transport: Annotated[SIPTransport, _null_as(lambda: SIPTransport.SIP_TRANSPORT_AUTO)] = (
        SIPTransport.SIP_TRANSPORT_AUTO
    )
    numbers: TextList = Field(default_factory=list)
    auth_username: Text = ""
    auth_password: Password = SecretStr("")


class DispatchRuleIndividual(_WireModel):
    """A new room per caller, named ``room_prefix`` + caller + random suffix."""

    room_prefix: Text = ""
    pin: Text = ""
    no_randomness: Annotated[bool, _null_as(bool)] = False


class DispatchRuleDirect(_WireModel):
    """Every caller into one existing room."""

    room_name: Text = ""
    pin: Text = ""


class DispatchRuleCallee(_WireModel):
    """A room per called number."""

    room_prefix: Text = ""
    pin: Text = ""
    randomize: Annotated[bool, _null_as(bool)] = False


class DispatchRuleSpec(_WireModel):
    """``SIPDispatchRule``: a proto ``oneof``, so at most one member may be set."""

    dispatch_rule_individual: DispatchRuleIndividual | None = None
    dispatch_rule_direct: DispatchRuleDirect | None = None
    dispatch_rule_callee: DispatchRuleCallee | None = None

    @model_validator(mode="after")
    def _one_of(self) -> DispatchRuleSpec:
        chosen = [
            member
            for member in (
                self.dispatch_rule_individual,
                self.dispatch_rule_direct,
                self.dispatch_rule_callee,
            )
            if member is not None
        ]
        if len(chosen) > 1:
            raise ValueError("a dispatch rule sets exactly one of its rule kinds")
        return self


class RoomAgentDispatch(_WireModel):
    """A named agent LiveKit dispatches into every room the rule creates."""

    agent_name: Text
    metadata: Text = ""


class RoomConfig(_WireModel):
    """The part of ``RoomConfiguration`` Trunkline uses: agent dispatch."""

    agents: Annotated[list[RoomAgentDispatch], _null_as(list)] = Field(default_factory=list)


class DispatchRule(_WireModel):
    """``SIPDispatchRuleInfo``: routes calls arriving on ``trunk_ids`` into rooms.

    Leave ``trunk_ids`` empty only on purpose: an empty list matches every trunk.
    """

    _server_id_field: ClassVar[str | None] = "sip_dispatch_rule_id"

    sip_dispatch_rule_id: Text = ""
    name: Text = ""
    metadata: Text = ""
    trunk_ids: TextList = Field(default_factory=list)
    rule: Annotated[DispatchRuleSpec, _null_as(dict)]
    room_config: RoomConfig | None = None
    hide_phone_number: Annotated[bool, _null_as(bool)] = False


class ObjectKind(StrEnum):
    """The three kinds of LiveKit SIP object, named by their id field."""

    INBOUND_TRUNK = "inbound_trunk"
    OUTBOUND_TRUNK = "outbound_trunk"
    DISPATCH_RULE = "dispatch_rule"

    @property
    def id_field(self) -> str:
        return "sip_dispatch_rule_id" if self is ObjectKind.DISPATCH_RULE else "sip_trunk_id"


@dataclass(frozen=True, repr=False)
class LiveKitObject:
    """One object exactly as LiveKit answered it: every field, modelled here or not.

    ``fields`` holds passwords in clear, so ``repr`` shows only the kind and the id, and
    :meth:`to_json` is for encrypting, never for logging.
    """

    kind: ObjectKind
    fields: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.fields.get(self.kind.id_field), str) or not self.object_id:
            raise ValueError(f"a LiveKit {self.kind.value} needs its {self.kind.id_field}")

    def __repr__(self) -> str:
        return f"LiveKitObject({self.kind.value}, {self.object_id!r})"

    @property
    def object_id(self) -> str:
        return str(self.fields[self.kind.id_field])

    def merged(self, changes: Mapping[str, Any]) -> LiveKitObject:
        """A copy with ``changes`` merged in: nested objects merge key by key (a rule's
        ``pin`` survives a new ``room_prefix``), any other value replaces what was there."""
        if self.kind.id_field in changes:
            raise ValueError("an object's id is the server's, not a field to change")
        return LiveKitObject(self.kind, merged_json(self.fields, changes))

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind.value, "fields": self.fields},
                          separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> LiveKitObject:
        data = json.loads(text)
        return cls(ObjectKind(data["kind"]), data["fields"])


def merged_json(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``changes`` merged in, as :meth:`LiveKitObject.merged`."""
    result = copy.deepcopy(dict(base))
    for key, value in changes.items():
        current = result.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            result[key] = merged_json(current, value)
        else:
            result[key] = copy.deepcopy(value)
    return result
