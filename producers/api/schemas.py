"""OpenAPI-only models: what /openapi.json documents. Requests are validated by the job
contract (worker.contract), never by these, so that every field error is reported at once in
the envelope and the seed's curl (form content type, JSON body) keeps working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class CreateSipTrunkDispatchRequest(BaseModel):
    """The seed's body plus the job contract's optional fields."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Descriptive name for the SIP "
                      "trunk", examples=["Main Office SIP Trunk"])
    number: str = Field(min_length=8, max_length=16, pattern=r"^\+[1-9][0-9]{6,14}$",
                        description="Phone number in E.164 format", examples=["+15551234567"])
    outboundPstn: str = Field(  # noqa: N815 - the seed's wire name
        min_length=1, max_length=260,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
        r"[A-Za-z0-9])?)*(:[1-9][0-9]{0,3})?$",
        description="Outbound PSTN gateway address (hostname or IP, optional :port; no sip: URI)",
        examples=["sip.gateway.com"])
    authUserName: str = Field(  # noqa: N815 - the seed's wire name
        min_length=1, max_length=128, pattern=r"^[!-~]+$",
        description="SIP authentication username", examples=["sip_user"])
    authPassword: str = Field(  # noqa: N815 - the seed's wire name
        min_length=1, max_length=128, description="SIP authentication password (write-only: "
        "never returned)", examples=["sip_password"], json_schema_extra={"writeOnly": True,
                                                                         "format": "password"})
    agentName: str | None = Field(  # noqa: N815 - the contract's wire name
        default=None, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Agent dispatched into the room for inbound calls")
    transport: Literal["auto", "udp", "tcp", "tls"] = Field(
        default="auto", description="SIP transport to the gateway")
    allowedAddresses: list[str] = Field(  # noqa: N815 - the contract's wire name
        default_factory=list, max_length=32, description="Provider IPs or CIDR blocks allowed "
        "to send inbound calls")
    roomPrefix: str = Field(  # noqa: N815 - the contract's wire name
        default="call-", max_length=64, pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Prefix of the room each inbound call gets")
    metadata: dict[str, Any] | None = Field(default=None, description="Your own JSON (at most "
                                            "2048 bytes), kept with the job")


class PhoneNumber(BaseModel):
    """A provisioned number: its configuration and LiveKit ids, never the password."""

    number: str = Field(examples=["+15551234567"])
    name: str
    outboundPstn: str  # noqa: N815 - the seed's wire name
    transport: Literal["auto", "udp", "tcp", "tls"]
    authUserName: str  # noqa: N815 - the seed's wire name
    hasAuthPassword: bool = Field(  # noqa: N815 - camelCase like the request fields
        description="Whether a SIP password is set (the password itself is never returned)")
    agentName: str | None  # noqa: N815 - the contract's wire name
    roomPrefix: str  # noqa: N815 - the contract's wire name
    allowedAddresses: list[str]  # noqa: N815 - the contract's wire name
    metadata: dict[str, Any] | None
    inboundTrunkId: str = Field(examples=["ST_a1b2c3d4e5f6"])  # noqa: N815 - camelCase
    outboundTrunkId: str  # noqa: N815 - camelCase like the request fields
    dispatchRuleId: str  # noqa: N815 - camelCase like the request fields
    phoneNumberId: str  # noqa: N815 - camelCase like the request fields
    createdAt: str = Field(description="ISO 8601")  # noqa: N815 - camelCase
    updatedAt: str = Field(description="ISO 8601")  # noqa: N815 - camelCase


class PhoneNumberEnvelope(BaseModel):
    message: str
    status: Literal["success"]
    error: None = None
    data: PhoneNumber


class PhoneNumberListEnvelope(BaseModel):
    message: str
    status: Literal["success"]
    error: None = None
    data: list[PhoneNumber]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on "
                                    "the last page")


class Released(BaseModel):
    number: str
    released: Literal[True]
    alreadyReleased: bool = Field(  # noqa: N815 - camelCase like the request fields
        description="True when there was nothing left to delete")
    phoneNumberId: str | None  # noqa: N815 - camelCase like the request fields


class ReleasedEnvelope(BaseModel):
    message: str
    status: Literal["success"]
    error: None = None
    data: Released


class ErrorObject(BaseModel):
    code: str = Field(description="Machine-readable error code", examples=["validation_error"])
    message: str
    field: str | None = Field(default=None, description="The offending field, if any")
    retryable: bool = Field(description="Whether the same request may succeed later")
    details: list[dict[str, str]] | None = Field(
        default=None, description="Every field error (validation errors only)")
    job_id: str | None = Field(default=None, description="The job that failed, if one ran")


class ErrorEnvelope(BaseModel):
    message: str
    status: Literal["error"]
    error: ErrorObject
    data: None = None


class CreatedEnvelope(BaseModel):
    message: str = Field(examples=["Phone number created successfully"])
    status: Literal["success"]
    error: None = None
    data: str = Field(description="The inbound trunk ID created by LiveKit",
                      examples=["ST_a1b2c3d4e5f6"])


class AcceptedData(BaseModel):
    job_id: str
    state: str
    location: str
    duplicate: bool = False


class AcceptedEnvelope(BaseModel):
    message: str
    status: Literal["pending"]
    error: None = None
    data: AcceptedData


class JobEnvelope(BaseModel):
    message: str
    status: Literal["success"]
    error: None = None
    data: dict[str, Any] = Field(description="The job: state, steps, attempts, result or "
                                 "error; the request without its password")


class HealthEnvelope(BaseModel):
    message: str
    status: str
    error: ErrorObject | None = None
    data: dict[str, Any] | None = None


def update_request_schema() -> dict[str, Any]:
    """PATCH's body: the create request's fields but `number`, none required, at least one."""
    schema = CreateSipTrunkDispatchRequest.model_json_schema()
    properties = {name: {k: v for k, v in spec.items() if k != "default"}
                  for name, spec in schema["properties"].items() if name != "number"}
    return {
        "title": "UpdatePhoneNumberRequest",
        "description": "Any subset of the request's fields except `number`; absent fields keep "
        "their value, `agentName: null` removes the agent and `metadata: null` clears it.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "minProperties": 1,
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed JSON or invalid fields (every field error in error.details)",
        401: "Missing or wrong credentials, or a bad webhook signature",
        404: "No such job, phone number or webhook source (or another organisation's)",
        409: "The number is provisioned already or a job for it is in flight",
        413: "Body larger than TRUNKLINE_API_MAX_BODY",
        415: "Body is not JSON",
        422: "Idempotency key reused with another request, or LiveKit refused the change",
        429: "Organisation over its rate limit (see Retry-After)",
        502: "LiveKit kept failing; the job failed",
        503: "Redis unreachable; nothing was stored",
    }
    return {status: {"model": ErrorEnvelope, "description": descriptions[status]}
            for status in statuses}
