"""The provisioning saga: inbound trunk + outbound trunk, then dispatch rule, then the record.

Plain code, no Celery. Each step follows the same recovery discipline:

* before a create call the step is checkpointed as STARTED (a recovery point, written to the
  job record): if the run dies, the next run knows the call may have happened;
* a step found STARTED has an unknown outcome: it lists LiveKit for the object tagged with
  this job and adopts it, and only creates when there is none. A step found PENDING creates
  directly, so the happy path does no listing;
* every created object carries the job id, org id and step in `metadata`.

Compensation walks the steps in reverse (rule first, as LiveKit does not delete a trunk's
rules with it) and deletes only what this job created: recorded ids, or tagged objects for
steps whose outcome is unknown.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from worker.contract import Transport
from worker.livekit import (
    DispatchRule,
    DispatchRuleConflict,
    DispatchRuleIndividual,
    DispatchRuleSpec,
    InboundNumberConflict,
    InboundTrunk,
    LiveKitNotFound,
    LiveKitSIP,
    OutboundTrunk,
    RoomAgentDispatch,
    RoomConfig,
    SIPTransport,
)
from worker.observability import STEP_SECONDS
from worker.records import (
    Job,
    JobResult,
    PhoneNumberRecord,
    StepName,
    StepRecord,
    StepStatus,
    utcnow,
)
from worker.retry import ProvisioningFailure
from worker.store import JobStore, NumberTaken
from worker.vault import Vault

log = logging.getLogger(__name__)

TAG_KEY = "trunkline"

_TRANSPORTS = {
    "auto": SIPTransport.SIP_TRANSPORT_AUTO,
    "udp": SIPTransport.SIP_TRANSPORT_UDP,
    "tcp": SIPTransport.SIP_TRANSPORT_TCP,
    "tls": SIPTransport.SIP_TRANSPORT_TLS,
}


def make_tag(job_id: str, org_id: str, step: StepName, number: str) -> str:
    """The metadata every object we create carries, so a later run can find it."""
    return json.dumps(
        {TAG_KEY: {"job_id": job_id, "org_id": org_id, "step": step.value, "number": number}},
        separators=(",", ":"),
    )


def tag(job: Job, step: StepName) -> str:
    return make_tag(job.job_id, job.org_id, step, job.number)


class TrunkConfig(Protocol):
    """What a stored request and a phone-number record both say about a number's setup."""

    @property
    def name(self) -> str: ...
    @property
    def number(self) -> str: ...
    @property
    def outbound_pstn(self) -> str: ...
    @property
    def transport(self) -> Transport: ...
    @property
    def auth_user_name(self) -> str: ...
    @property
    def auth_password_ciphertext(self) -> str: ...
    @property
    def agent_name(self) -> str | None: ...
    @property
    def allowed_addresses(self) -> tuple[str, ...]: ...
    @property
    def room_prefix(self) -> str: ...
    @property
    def metadata(self) -> dict[str, Any] | None: ...


def inbound_trunk_for(config: TrunkConfig, metadata: str) -> InboundTrunk:
    return InboundTrunk(
        name=config.name,
        metadata=metadata,
        numbers=[config.number],
        allowed_addresses=list(config.allowed_addresses),
    )


def outbound_trunk_for(config: TrunkConfig, metadata: str, password: str) -> OutboundTrunk:
    return OutboundTrunk(
        name=config.name,
        metadata=metadata,
        address=config.outbound_pstn,
        transport=_TRANSPORTS[config.transport.value],
        numbers=[config.number],
        auth_username=config.auth_user_name,
        auth_password=password,
    )


def dispatch_rule_for(config: TrunkConfig, metadata: str, *, inbound_trunk_id: str,
                      org_id: str, phone_number_id: str) -> DispatchRule:
    agents = []
    if config.agent_name:
        agents.append(RoomAgentDispatch(
            agent_name=config.agent_name,
            metadata=json.dumps({"org_id": org_id, "number": config.number,
                                 "phone_number_id": phone_number_id,
                                 "metadata": config.metadata}, separators=(",", ":")),
        ))
    return DispatchRule(
        name=config.name,
        metadata=metadata,
        trunk_ids=[inbound_trunk_id],
        rule=DispatchRuleSpec(
            dispatch_rule_individual=DispatchRuleIndividual(room_prefix=config.room_prefix)
        ),
        room_config=RoomConfig(agents=agents) if agents else None,
    )


def read_tag(metadata: str) -> dict[str, str] | None:
    """The Trunkline tag in an object's metadata, or None for objects we did not tag."""
    try:
        data = json.loads(metadata) if metadata else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    found = data.get(TAG_KEY)
    return found if isinstance(found, dict) else None


def is_tagged_for(metadata: str, job: Job, step: StepName) -> bool:
    found = read_tag(metadata)
    return bool(found and found.get("job_id") == job.job_id and found.get("step") == step.value)


def phone_number_id_for(job: Job) -> str:
    # Derived from the job so that every run of the job writes the same record id.
    return "pn_" + job.job_id.removeprefix("job_")


# Persists the job (a recovery point); raises LeaseLost when the run lost its lock.
Checkpoint = Callable[[Job], None]


@dataclass
class StepHooks:
    """Points where fault-injection can stop a run (see worker.chaos); no-ops by default."""

    reached: Callable[[str, Job], None] = lambda point, job: None


class ProvisioningSaga:
    def __init__(self, livekit: LiveKitSIP, store: JobStore, vault: Vault,
                 hooks: StepHooks | None = None) -> None:
        self.livekit = livekit
        self.store = store
        self.vault = vault
        self.hooks = hooks or StepHooks()
        # The inbound and outbound trunks are independent and created at once: one on the
        # run's own thread, the other here (threads start only as runs overlap: one per run
        # slot under a threads pool, a single one in a prefork child).
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="trunkline-saga")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- forward -----------------------------------------------------------------------

    def forward(self, job: Job, token: str, checkpoint: Checkpoint) -> JobResult:
        return self.provision(job, token, checkpoint)

    def provision(self, job: Job, token: str, checkpoint: Checkpoint, *,
                  current: Callable[[], PhoneNumberRecord | None] | None = None,
                  defer_record: bool = False) -> JobResult:
        """Run every step. `current` gives the number's record when the caller has read it
        under the lock; with `defer_record` the record step only marks itself done and the
        caller writes `record_for(job)` (JobRunner does, atomically with the job's end)."""
        self._check_ownership(job, current)
        self.hooks.reached("before_trunks", job)
        self._trunks(job, checkpoint)
        self.hooks.reached("after_trunks", job)
        self._dispatch_rule(job, checkpoint)
        self.hooks.reached("after_rule", job)
        record = self.record_for(job)
        if defer_record:
            _mark_started(job.step(StepName.PHONE_NUMBER))
            _mark_done(job.step(StepName.PHONE_NUMBER), record.phone_number_id)
        else:
            record = self._record(job, token, record)
        self.hooks.reached("after_record", job)
        return JobResult(
            number=record.number,
            inbound_trunk_id=record.inbound_trunk_id,
            outbound_trunk_id=record.outbound_trunk_id,
            dispatch_rule_id=record.dispatch_rule_id,
            phone_number_id=record.phone_number_id,
        )

    def _check_ownership(self, job: Job,
                         current: Callable[[], PhoneNumberRecord | None] | None) -> None:
        existing = current() if current is not None else self.store.get_number(job.number)
        if existing is None or existing.job_id == job.job_id:
            return
        raise number_taken_failure(job, existing)

    def _trunks(self, job: Job, checkpoint: Checkpoint) -> None:
        inbound, outbound = job.step(StepName.INBOUND_TRUNK), job.step(StepName.OUTBOUND_TRUNK)
        # Outcome unknown from an earlier run: adopt before creating anything.
        if inbound.status is StepStatus.STARTED:
            self._adopt(inbound, self._find_inbound(job))
        if outbound.status is StepStatus.STARTED:
            self._adopt(outbound, self._find_outbound(job))
        todo = [s for s in (inbound, outbound) if s.status is not StepStatus.DONE]
        if not todo:
            return
        for step in todo:
            _mark_started(step)
        checkpoint(job)

        creates: list[tuple[StepName, Callable[[Job], tuple[str, bool]]]] = []
        if inbound.status is StepStatus.STARTED:
            creates.append((StepName.INBOUND_TRUNK, self._create_inbound))
        if outbound.status is StepStatus.STARTED:
            creates.append((StepName.OUTBOUND_TRUNK, self._create_outbound))
        # All but the first go to the pool; the first runs on this thread meanwhile (one
        # thread hand-off per job instead of two). copy_context: the pool thread logs with
        # this job's bound ids.
        futures = [(name, self._pool.submit(contextvars.copy_context().run, create, job))
                   for name, create in creates[1:]]
        first_error: BaseException | None = None
        name, create = creates[0]
        try:
            _mark_done(job.step(name), *create(job))
        except BaseException as exc:
            first_error = exc
        for name, future in futures:
            try:
                _mark_done(job.step(name), *future.result())
            except BaseException as exc:
                first_error = first_error or exc
        if first_error is not None:
            checkpoint(job)  # record what did get created, for compensation
            raise first_error
        # On success the next recovery point (the rule's) records both ids: one write fewer.

    def _create_inbound(self, job: Job) -> tuple[str, bool]:
        """Create the inbound trunk; returns (id, adopted)."""
        trunk = inbound_trunk_for(job.create_request, tag(job, StepName.INBOUND_TRUNK))
        try:
            with STEP_SECONDS.labels(StepName.INBOUND_TRUNK.value).time():
                return self.livekit.create_inbound_trunk(trunk).sip_trunk_id, False
        except InboundNumberConflict as conflict:
            return self._resolve_inbound_conflict(job, conflict), True

    def _resolve_inbound_conflict(self, job: Job, conflict: InboundNumberConflict) -> str:
        holder = conflict.conflicting_id
        if holder:
            try:
                existing = self.livekit.get_inbound_trunk(holder)
            except LiveKitNotFound:
                existing = None
            if existing is not None and is_tagged_for(existing.metadata, job,
                                                      StepName.INBOUND_TRUNK):
                return existing.sip_trunk_id
        owner = read_tag(existing.metadata) if holder and existing is not None else None
        whose = (
            f"Trunkline job {owner.get('job_id')}" if owner else "something other than Trunkline"
        )
        raise ProvisioningFailure(
            "number_conflict",
            f"{job.number} is already routed by LiveKit inbound trunk {holder or '?'}, "
            f"created by {whose}; delete that trunk or release the number, then replay this job",
            field="number",
        )

    def _create_outbound(self, job: Job) -> tuple[str, bool]:
        request = job.create_request
        trunk = outbound_trunk_for(request, tag(job, StepName.OUTBOUND_TRUNK),
                                   self.vault.decrypt(request.auth_password_ciphertext))
        with STEP_SECONDS.labels(StepName.OUTBOUND_TRUNK.value).time():
            return self.livekit.create_outbound_trunk(trunk).sip_trunk_id, False

    def _dispatch_rule(self, job: Job, checkpoint: Checkpoint) -> None:
        step = job.step(StepName.DISPATCH_RULE)
        if step.status is StepStatus.STARTED:
            self._adopt(step, self._find_rules(job))
        if step.status is StepStatus.DONE:
            return
        _mark_started(step)
        checkpoint(job)
        _mark_done(step, *self._create_rule(job))
        # No write here: the record and the job's terminal write follow, and a run that dies
        # in between finds the rule `started` and adopts it.

    def _rule_definition(self, job: Job) -> DispatchRule:
        return dispatch_rule_for(
            job.create_request, tag(job, StepName.DISPATCH_RULE),
            inbound_trunk_id=_require_id(job, StepName.INBOUND_TRUNK), org_id=job.org_id,
            phone_number_id=phone_number_id_for(job),
        )

    def _create_rule(self, job: Job) -> tuple[str, bool]:
        """Create the dispatch rule; returns (id, adopted)."""
        try:
            with STEP_SECONDS.labels(StepName.DISPATCH_RULE.value).time():
                created = self.livekit.create_dispatch_rule(self._rule_definition(job))
            return created.sip_dispatch_rule_id, False
        except DispatchRuleConflict as conflict:
            holder = conflict.conflicting_id
            if holder:
                for rule in self.livekit.list_dispatch_rules(rule_ids=[holder]):
                    if is_tagged_for(rule.metadata, job, StepName.DISPATCH_RULE):
                        return rule.sip_dispatch_rule_id, True
            raise ProvisioningFailure(
                "dispatch_rule_conflict",
                f"LiveKit dispatch rule {holder or '?'} already routes calls of inbound trunk "
                f"{_require_id(job, StepName.INBOUND_TRUNK)}; it was not created by this job",
            ) from None

    def record_for(self, job: Job) -> PhoneNumberRecord:
        """The phone-number record of a job whose LiveKit steps are done."""
        request = job.create_request
        return PhoneNumberRecord(
            phone_number_id=phone_number_id_for(job),
            org_id=job.org_id,
            number=request.number,
            name=request.name,
            job_id=job.job_id,
            inbound_trunk_id=_require_id(job, StepName.INBOUND_TRUNK),
            outbound_trunk_id=_require_id(job, StepName.OUTBOUND_TRUNK),
            dispatch_rule_id=_require_id(job, StepName.DISPATCH_RULE),
            outbound_pstn=request.outbound_pstn,
            transport=request.transport,
            auth_user_name=request.auth_user_name,
            auth_password_ciphertext=request.auth_password_ciphertext,
            agent_name=request.agent_name,
            room_prefix=request.room_prefix,
            allowed_addresses=request.allowed_addresses,
            metadata=request.metadata,
        )

    def _record(self, job: Job, token: str, record: PhoneNumberRecord) -> PhoneNumberRecord:
        step = job.step(StepName.PHONE_NUMBER)
        # put_number is atomic and idempotent for this job, and compensation deletes the record
        # whatever this step's status says, so no recovery point is needed around it.
        _mark_started(step)
        try:
            with STEP_SECONDS.labels(StepName.PHONE_NUMBER.value).time():
                stored = self.store.put_number(record, token)
        except NumberTaken as taken:
            raise number_taken_failure(job, taken.record) from None
        _mark_done(step, stored.phone_number_id)
        return stored

    # --- adoption ----------------------------------------------------------------------

    def _find_inbound(self, job: Job) -> list[str]:
        found = self.livekit.list_inbound_trunks(numbers=[job.number])
        return _ids_tagged(found, job, StepName.INBOUND_TRUNK)

    def _find_outbound(self, job: Job) -> list[str]:
        found = self.livekit.list_outbound_trunks(numbers=[job.number])
        return _ids_tagged(found, job, StepName.OUTBOUND_TRUNK)

    def _find_rules(self, job: Job) -> list[str]:
        inbound_id = job.step(StepName.INBOUND_TRUNK).resource_id
        rules = self.livekit.list_dispatch_rules(trunk_ids=[inbound_id] if inbound_id else [])
        return sorted(r.sip_dispatch_rule_id for r in rules
                      if is_tagged_for(r.metadata, job, StepName.DISPATCH_RULE))

    def _adopt(self, step: StepRecord, found: list[str]) -> None:
        if not found:
            # Nothing was created: the step is back to not-started and will create.
            step.status = StepStatus.PENDING
            return
        # The per-number lock makes two tagged objects impossible in normal operation; if an
        # operator replays around it, keep the oldest id and leave the rest to reconcile.
        if len(found) > 1:
            log.warning("several objects carry this job's tag; adopting %s", found[0])
        step.status = StepStatus.DONE
        step.resource_id = found[0]
        step.adopted = True
        step.finished_at = utcnow()

    # --- backward ----------------------------------------------------------------------

    def backward(self, job: Job, token: str, checkpoint: Checkpoint) -> None:
        self.compensate(job, token, checkpoint)

    def compensate(self, job: Job, token: str, checkpoint: Checkpoint) -> None:
        """Delete what this job created, newest first. Idempotent; raises on transient errors."""
        record = job.step(StepName.PHONE_NUMBER)
        if record.status is not StepStatus.COMPENSATED:
            # The record's step is not checkpointed (see _record): delete it if it is ours,
            # whatever the status says.
            self.store.delete_number_if_owned(job.number, job.org_id, job.job_id, token)
            if record.status is not StepStatus.PENDING:
                _mark_compensated(record)
                checkpoint(job)

        rule = job.step(StepName.DISPATCH_RULE)
        if rule.status in (StepStatus.STARTED, StepStatus.DONE):
            ids = [rule.resource_id] if rule.resource_id else self._find_rules(job)
            for rule_id in ids:
                # Already gone is what compensation wants.
                with contextlib.suppress(LiveKitNotFound):
                    self.livekit.delete_dispatch_rule(rule_id)
            _mark_compensated(rule)
            checkpoint(job)

        for name, finder in (
            (StepName.OUTBOUND_TRUNK, self._find_outbound),
            (StepName.INBOUND_TRUNK, self._find_inbound),
        ):
            step = job.step(name)
            if step.status in (StepStatus.STARTED, StepStatus.DONE):
                ids = [step.resource_id] if step.resource_id else finder(job)
                for trunk_id in ids:
                    self.livekit.delete_trunk(trunk_id)  # unknown ids answer 200
                _mark_compensated(step)
                checkpoint(job)

    def leftovers(self, job: Job) -> list[str]:
        """Objects a failed compensation may have left behind, for the dead-letter entry."""
        return [
            f"{name.value}:{step.resource_id or 'unknown'}"
            for name, step in job.steps.items()
            if step.status in (StepStatus.STARTED, StepStatus.DONE)
        ]


def number_taken_failure(job: Job, existing: PhoneNumberRecord) -> ProvisioningFailure:
    """Why `job` cannot have its number: another job's record holds it."""
    if existing.org_id != job.org_id:
        return ProvisioningFailure(
            "number_owned_by_other_org",
            f"{job.number} is provisioned by another organisation",
            field="number",
        )
    return ProvisioningFailure(
        "number_already_provisioned",
        f"{job.number} is already provisioned for this organisation "
        f"({existing.phone_number_id}, job {existing.job_id}); release it first to set it up again",
        field="number",
    )


def _ids_tagged(items: Iterable[Any], job: Job, step: StepName) -> list[str]:
    return sorted(t.sip_trunk_id for t in items if is_tagged_for(t.metadata, job, step))


def _require_id(job: Job, name: StepName) -> str:
    resource_id = job.step(name).resource_id
    if not resource_id:
        raise RuntimeError(f"step {name.value} has no id yet")
    return resource_id


def _mark_started(step: StepRecord) -> None:
    step.status = StepStatus.STARTED
    step.started_at = utcnow()


def _mark_done(step: StepRecord, resource_id: str, adopted: bool = False) -> None:
    step.status = StepStatus.DONE
    step.resource_id = resource_id
    step.adopted = step.adopted or adopted
    step.finished_at = utcnow()


def _mark_compensated(step: StepRecord) -> None:
    step.status = StepStatus.COMPENSATED
    step.finished_at = utcnow()
