"""What the job store holds: the job record (the source of truth) and phone-number records.

These models are the versioned contract between producers, workers and ops tools. They never
hold a plaintext password: only its Fernet ciphertext.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.contract import ChangeRequest, ProvisionRequest, Transport
from worker.vault import Vault

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


_JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")


def valid_job_id(text: str) -> bool:
    """Whether `text` has the shape new_job_id makes (checked before touching Redis)."""
    return bool(_JOB_ID.match(text))


def new_phone_number_id() -> str:
    return "pn_" + uuid.uuid4().hex


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


class Phase(StrEnum):
    PROVISION = "provision"
    COMPENSATE = "compensate"


class StepName(StrEnum):
    INBOUND_TRUNK = "inbound_trunk"
    OUTBOUND_TRUNK = "outbound_trunk"
    DISPATCH_RULE = "dispatch_rule"
    PHONE_NUMBER = "phone_number"


STEP_ORDER = (
    StepName.INBOUND_TRUNK,
    StepName.OUTBOUND_TRUNK,
    StepName.DISPATCH_RULE,
    StepName.PHONE_NUMBER,
)


class StepStatus(StrEnum):
    PENDING = "pending"
    # The call may have happened: a redelivered job must look for what it created.
    STARTED = "started"
    DONE = "done"
    COMPENSATED = "compensated"


class StepRecord(BaseModel):
    status: StepStatus = StepStatus.PENDING
    resource_id: str | None = None
    adopted: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobError(BaseModel):
    code: str
    message: str
    retryable: bool
    field: str | None = None


class JobResult(BaseModel):
    number: str
    inbound_trunk_id: str
    outbound_trunk_id: str
    dispatch_rule_id: str
    phone_number_id: str


class StoredRequest(BaseModel):
    """A validated request as stored: the password only as ciphertext."""

    model_config = ConfigDict(frozen=True)

    name: str
    number: str
    outbound_pstn: str
    auth_user_name: str
    auth_password_ciphertext: str
    agent_name: str | None = None
    transport: Transport = Transport.AUTO
    allowed_addresses: tuple[str, ...] = ()
    room_prefix: str = "call-"
    metadata: dict[str, Any] | None = None

    @classmethod
    def seal(cls, request: ProvisionRequest, vault: Vault) -> StoredRequest:
        return cls(
            name=request.name,
            number=request.number,
            outbound_pstn=request.outbound_pstn,
            auth_user_name=request.auth_user_name,
            auth_password_ciphertext=vault.encrypt(request.auth_password.get_secret_value()),
            agent_name=request.agent_name,
            transport=request.transport,
            allowed_addresses=request.allowed_addresses,
            room_prefix=request.room_prefix,
            metadata=request.metadata,
        )


class StoredChange(BaseModel):
    """An update's requested changes (only the fields the producer set), password encrypted."""

    model_config = ConfigDict(frozen=True)

    name: str | None = None
    outbound_pstn: str | None = None
    auth_user_name: str | None = None
    auth_password_ciphertext: str | None = None
    agent_name: str | None = None
    transport: Transport | None = None
    allowed_addresses: tuple[str, ...] | None = None
    room_prefix: str | None = None
    metadata: dict[str, Any] | None = None
    # Which fields were given: `agentName: null` removes the agent, absence keeps it.
    fields: tuple[str, ...] = ()

    @classmethod
    def seal(cls, change: ChangeRequest, vault: Vault) -> StoredChange:
        values = change.values
        stored: dict[str, Any] = {}
        for name in change.fields:
            if name == "auth_password":
                secret = values.auth_password.get_secret_value()
                stored["auth_password_ciphertext"] = vault.encrypt(secret)
            else:
                stored[name] = getattr(values, name)
        return cls(**stored, fields=tuple(sorted(stored)))

    def applied_to(self, record: PhoneNumberRecord) -> PhoneNumberRecord:
        return record.model_copy(update={name: getattr(self, name) for name in self.fields})


class JobKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    RELEASE = "release"

    @property
    def event_type(self) -> str:
        return {"create": "created", "update": "updated", "release": "released"}[self.value]


class Attempt(BaseModel):
    number: int
    started_at: datetime
    finished_at: datetime | None = None
    error: JobError | None = None


# W3C Trace Context (https://www.w3.org/TR/trace-context/), version 00 as OpenTelemetry writes
# it: lower-case hex, neither id all zeros.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE_MEMBER = re.compile(
    r"(?:[a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
TRACESTATE_MAX_MEMBERS = 32
# The specification asks carriers to pass at least 512 characters on; more would only grow
# every job record.
TRACESTATE_MAX_LENGTH = 512


class TraceContext(BaseModel):
    """The trace a job belongs to, as W3C `traceparent`/`tracestate` headers would carry it.

    The broker message carries only the job id, so the context travels in the record.
    """

    model_config = ConfigDict(frozen=True)

    traceparent: str
    tracestate: str | None = None

    @field_validator("traceparent")
    @classmethod
    def _valid_traceparent(cls, value: str) -> str:
        if not _TRACEPARENT.fullmatch(value):
            raise ValueError("traceparent must be a W3C version-00 traceparent "
                             "(00-<32 hex>-<16 hex>-<2 hex>, ids not all zeros)")
        return value

    @field_validator("tracestate")
    @classmethod
    def _valid_tracestate(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) > TRACESTATE_MAX_LENGTH:
            raise ValueError(f"tracestate is longer than {TRACESTATE_MAX_LENGTH} characters")
        members = [member.strip(" \t") for member in value.split(",")]
        members = [member for member in members if member]
        if not members or len(members) > TRACESTATE_MAX_MEMBERS:
            raise ValueError(f"tracestate must hold 1 to {TRACESTATE_MAX_MEMBERS} members")
        if not all(_TRACESTATE_MEMBER.fullmatch(member) for member in members):
            raise ValueError("tracestate must be W3C list-members (key=value, comma-separated)")
        return value


class Job(BaseModel):
    schema_version: int = SCHEMA_VERSION
    job_id: str
    org_id: str
    kind: JobKind = JobKind.CREATE
    number: str
    state: JobState = JobState.QUEUED
    phase: Phase = Phase.PROVISION
    run: int = 1
    attempts: int = 0
    compensation_attempts: int = 0
    request: StoredRequest | None = None
    change: StoredChange | None = None
    request_fingerprint: str
    idempotency_key: str | None = None
    source: str = "client"
    steps: dict[StepName, StepRecord] = Field(
        default_factory=lambda: {name: StepRecord() for name in STEP_ORDER}
    )
    history: list[Attempt] = Field(default_factory=list)
    result: JobResult | None = None
    error: JobError | None = None
    dead_lettered: bool = False
    # Update/release: the record as the job first found it (an update's rollback target).
    previous: PhoneNumberRecord | None = None
    # Update: each LiveKit object as the job first found it, every field (LiveKitObject's
    # JSON), encrypted with the vault as it holds passwords; a rollback puts it back whole.
    livekit_before: dict[StepName, str] = Field(default_factory=dict)
    # Objects a compensation could not delete; reconcile and operators see them here.
    leftovers: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    # The submit's trace: every delivery's run span continues it (worker/tracing.py).
    trace_context: TraceContext | None = None

    @model_validator(mode="before")
    @classmethod
    def _number_from_request(cls, data: Any) -> Any:
        if isinstance(data, dict) and "number" not in data:
            request = data.get("request")
            if isinstance(request, StoredRequest):
                data = {**data, "number": request.number}
            elif isinstance(request, dict) and "number" in request:
                data = {**data, "number": request["number"]}
        return data

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> Job:
        if self.kind is JobKind.CREATE and self.request is None:
            raise ValueError("a create job needs its request")
        if self.kind is JobKind.UPDATE and self.change is None:
            raise ValueError("an update job needs its change")
        return self

    @property
    def create_request(self) -> StoredRequest:
        if self.request is None:
            raise ValueError(f"job {self.job_id} is a {self.kind.value} job, not a create")
        return self.request

    def step(self, name: StepName) -> StepRecord:
        return self.steps[name]

    def for_replay(self) -> Job:
        """A new run of a dead-lettered job: same id, attempts reset, a new event to come.

        Steps whose objects were compensated start over; steps left `started`/`done` (a
        compensation that gave up) are kept, so the new run adopts what still exists.
        """
        steps = {
            name: StepRecord() if step.status is StepStatus.COMPENSATED else step.model_copy()
            for name, step in self.steps.items()
        }
        return self.model_copy(update={
            "state": JobState.QUEUED,
            "phase": Phase.PROVISION,
            "run": self.run + 1,
            "attempts": 0,
            "compensation_attempts": 0,
            "steps": steps,
            "result": None,
            "error": None,
            "dead_lettered": False,
            "leftovers": [],
            "started_at": None,
            "finished_at": None,
            "next_attempt_at": None,
            "updated_at": utcnow(),
        })

    def public_view(self) -> dict[str, Any]:
        """The job as shown to its organisation and to operators: no ciphertext, no hashes."""
        data = self.model_dump(mode="json", exclude={"request_fingerprint", "livekit_before"})
        for part in ("request", "change", "previous"):
            if data.get(part) is not None:
                ciphertext = data[part].pop("auth_password_ciphertext", None)
                data[part]["has_auth_password"] = ciphertext is not None
        if self.kind is JobKind.UPDATE and self.change is not None:
            # Name the changed fields as the request did: the password field, not its cipher.
            data["change"]["has_auth_password"] = "auth_password_ciphertext" in self.change.fields
            data["change"]["fields"] = [
                "auth_password" if name == "auth_password_ciphertext" else name
                for name in self.change.fields
            ]
        return data


class PhoneNumberRecord(BaseModel):
    phone_number_id: str
    org_id: str
    number: str
    name: str
    job_id: str
    inbound_trunk_id: str
    outbound_trunk_id: str
    dispatch_rule_id: str
    outbound_pstn: str
    transport: Transport
    auth_user_name: str
    auth_password_ciphertext: str
    agent_name: str | None = None
    room_prefix: str
    allowed_addresses: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    # The last update job applied to this record: a re-run of that job knows it is done.
    updated_by_job: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def public_view(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"auth_password_ciphertext"})
        data["has_auth_password"] = bool(self.auth_password_ciphertext)
        return data


Job.model_rebuild()
