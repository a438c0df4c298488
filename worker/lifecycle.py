"""Update in place and release: the rest of a number's lifecycle, with creation's guarantees.

Both run under the same per-number lock, count attempts, retry, dead-letter and publish one
event, through the same JobRunner. Their steps reuse the create saga's step names.

* Update changes only the fields it was asked to change (the ids stay), then writes the
  record. Each object is read whole, Trunkline's changed fields are merged into LiveKit's
  own JSON of it, and it is written back whole (read-modify-write with `replace`): every
  field set outside Trunkline (noise cancellation, headers, media encryption, a rule's pin,
  attributes or room settings...) is sent back exactly as LiveKit gave it. Re-applying after
  an unknown outcome reads and merges again, so it is harmless.
* Why not LiveKit's field-wise `update`: it cannot change a rule's agent dispatch
  (`room_config` is not in `SIPDispatchRuleUpdate`) and its `rule` replaces the whole rule
  kind (a pin is lost), and v1.13.5 rewrites the media encryption fields of any trunk it
  touches. Why not `livekit-protocol`'s generated messages: a Python package older than
  the server drops or refuses the fields it does not know. The server's own JSON carries
  every field of the server in front of us, with no schema and no new dependency. The cost:
  a change made in LiveKit between our read and our write (milliseconds) would be lost; the
  per-number lock keeps Trunkline's own jobs from racing.
* Before its first write to an object, the job saves that object as it found it (encrypted:
  it holds passwords) in `livekit_before`. If LiveKit refuses a change, every object the job
  may have changed is written back from that copy, so it is exactly what it was; the record
  is left as it was (`previous`).
* Release deletes the rule, the outbound trunk, the inbound trunk, then the record. It only
  moves forward: a delete cannot be undone, and every step is idempotent (a trunk or rule
  already gone counts as deleted), so a failed release is retried or replayed to completion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from worker.livekit import (
    DispatchRule,
    LiveKitError,
    LiveKitNotFound,
    LiveKitObject,
    LiveKitSIP,
    ObjectKind,
)
from worker.livekit.models import merged_json
from worker.records import (
    Job,
    JobResult,
    PhoneNumberRecord,
    StepName,
    StepStatus,
    utcnow,
)
from worker.retry import ProvisioningFailure
from worker.saga import (
    Checkpoint,
    dispatch_rule_for,
    inbound_trunk_for,
    make_tag,
    outbound_trunk_for,
)
from worker.store import JobStore
from worker.vault import Vault

# Per LiveKit object: the record fields it reflects, and the object's fields each one sets.
_WIRE_FIELDS: dict[StepName, dict[str, set[str]]] = {
    StepName.OUTBOUND_TRUNK: {
        "name": {"name"}, "outbound_pstn": {"address"}, "transport": {"transport"},
        "auth_user_name": {"auth_username"}, "auth_password_ciphertext": {"auth_password"},
    },
    StepName.INBOUND_TRUNK: {"name": {"name"}, "allowed_addresses": {"allowed_addresses"}},
    StepName.DISPATCH_RULE: {
        "name": {"name"}, "room_prefix": {"rule"}, "agent_name": {"room_config"},
        "metadata": {"room_config"},  # it travels in the agent's dispatch metadata
    },
}
_KIND_OF = {
    StepName.OUTBOUND_TRUNK: ObjectKind.OUTBOUND_TRUNK,
    StepName.INBOUND_TRUNK: ObjectKind.INBOUND_TRUNK,
    StepName.DISPATCH_RULE: ObjectKind.DISPATCH_RULE,
}
_UPDATE_ORDER = (StepName.OUTBOUND_TRUNK, StepName.INBOUND_TRUNK, StepName.DISPATCH_RULE)


def _result(record: PhoneNumberRecord) -> JobResult:
    return JobResult(
        number=record.number,
        inbound_trunk_id=record.inbound_trunk_id,
        outbound_trunk_id=record.outbound_trunk_id,
        dispatch_rule_id=record.dispatch_rule_id,
        phone_number_id=record.phone_number_id,
    )


def _not_found(job: Job) -> ProvisioningFailure:
    # Another organisation's number is reported exactly like a missing one.
    return ProvisioningFailure(
        "number_not_found", f"{job.number} is not provisioned for this organisation",
        field="number",
    )


class UpdateSaga:
    def __init__(self, livekit: LiveKitSIP, store: JobStore, vault: Vault) -> None:
        self.livekit = livekit
        self.store = store
        self.vault = vault

    def forward(self, job: Job, token: str, checkpoint: Checkpoint) -> JobResult:
        record = self.store.get_number(job.number)
        if record is None or record.org_id != job.org_id:
            raise _not_found(job)
        if record.updated_by_job == job.job_id:
            return _result(record)  # an earlier run of this job finished the update
        if job.previous is None:
            job.previous = record
            checkpoint(job)
        change = job.change
        if change is None:
            raise ValueError(f"update job {job.job_id} has no change")
        target = change.applied_to(record)
        for name in _UPDATE_ORDER:
            step = job.step(name)
            fields = _changed_fields(job, name)
            if step.status is StepStatus.DONE or not fields:
                continue
            current = self.livekit.read_object(_KIND_OF[name], _resource_id(record, name))
            if step.status is not StepStatus.STARTED:
                # Saved before the first write: a later run would read our own change.
                job.livekit_before[name] = self.vault.encrypt(current.to_json())
                step.status, step.started_at = StepStatus.STARTED, utcnow()
                step.resource_id = current.object_id
                checkpoint(job)
            self.livekit.replace_object(current.merged(self._changes(name, target, fields,
                                                                     current)))
            step.status, step.finished_at = StepStatus.DONE, utcnow()
            checkpoint(job)
        final = target.model_copy(update={"updated_by_job": job.job_id, "updated_at": utcnow()})
        self.store.replace_number(final, token)
        record_step = job.step(StepName.PHONE_NUMBER)
        record_step.status, record_step.resource_id = StepStatus.DONE, final.phone_number_id
        record_step.finished_at = utcnow()
        checkpoint(job)
        return _result(final)

    def backward(self, job: Job, token: str, checkpoint: Checkpoint) -> None:
        """Put back every object the job may have changed exactly as the job found it."""
        previous = job.previous
        if previous is None:
            return  # failed before touching anything
        failures: list[LiveKitError] = []
        for name in reversed(_UPDATE_ORDER):
            step = job.step(name)
            if step.status not in (StepStatus.STARTED, StepStatus.DONE):
                continue
            try:
                self._restore(job, name, previous)
            except LiveKitError as exc:
                failures.append(exc)  # still restore the other objects
                continue
            step.status, step.finished_at = StepStatus.COMPENSATED, utcnow()
            checkpoint(job)
        if failures:
            # A transient failure first, so that the runner retries the rollback.
            raise sorted(failures, key=lambda e: not e.retryable)[0]

    def leftovers(self, job: Job) -> list[str]:
        return [
            f"{name.value}:{step.resource_id or 'unknown'} (new configuration left applied)"
            for name, step in job.steps.items()
            if step.status in (StepStatus.STARTED, StepStatus.DONE)
            and name is not StepName.PHONE_NUMBER
        ]

    def _restore(self, job: Job, name: StepName, previous: PhoneNumberRecord) -> None:
        sealed = job.livekit_before.get(name)
        if sealed is not None:
            self.livekit.replace_object(LiveKitObject.from_json(self.vault.decrypt(sealed)))
            return
        # Started by a Trunkline that kept no copy: put back only what this job changed, as
        # the record had it; everything else on the object is left as it is.
        current = self.livekit.read_object(_KIND_OF[name], _resource_id(previous, name))
        fields = _changed_fields(job, name)
        self.livekit.replace_object(current.merged(self._changes(name, previous, fields,
                                                                 current)))

    def _changes(self, name: StepName, config: PhoneNumberRecord, fields: set[str],
                 current: LiveKitObject) -> dict[str, Any]:
        """The object's fields that Trunkline's `fields` set, with `config`'s values."""
        wire = set().union(*(_WIRE_FIELDS[name][field] for field in fields))
        # Built as creation builds them; `metadata` (the creating job's tag) is never changed.
        tag = make_tag(config.job_id, config.org_id, name, config.number)
        if name is StepName.OUTBOUND_TRUNK:
            password = (self.vault.decrypt(config.auth_password_ciphertext)
                        if "auth_password" in wire else "")
            return outbound_trunk_for(config, tag, password).wire_values(wire)
        if name is StepName.INBOUND_TRUNK:
            return inbound_trunk_for(config, tag).wire_values(wire)
        rule = dispatch_rule_for(config, tag, inbound_trunk_id=config.inbound_trunk_id,
                                 org_id=config.org_id, phone_number_id=config.phone_number_id)
        changes = rule.wire_values(wire - {"rule", "room_config"})
        if "rule" in wire:
            # Only the prefix is Trunkline's: a pin or no_randomness set in LiveKit stays. The
            # rule kinds are a oneof: another kind chosen in LiveKit gives way to Trunkline's.
            changes["rule"] = {"dispatch_rule_individual": {"room_prefix": config.room_prefix},
                               "dispatch_rule_direct": None, "dispatch_rule_callee": None}
        if "room_config" in wire:
            changes["room_config"] = {"agents": _agents(rule, current)}
        return changes


class ReleaseSaga:
    def __init__(self, livekit: LiveKitSIP, store: JobStore) -> None:
        self.livekit = livekit
        self.store = store

    def forward(self, job: Job, token: str, checkpoint: Checkpoint) -> JobResult:
        record = self.store.get_number(job.number)
        if record is None:
            if job.previous is not None:  # an earlier run of this job deleted it
                return _result(job.previous)
            return JobResult(number=job.number, inbound_trunk_id="", outbound_trunk_id="",
                             dispatch_rule_id="", phone_number_id="")
        if record.org_id != job.org_id:
            raise _not_found(job)
        if job.previous is None:
            job.previous = record
            checkpoint(job)
        deletions: list[tuple[StepName, str, Callable[[str], None]]] = [
            (StepName.DISPATCH_RULE, record.dispatch_rule_id, self._delete_rule),
            (StepName.OUTBOUND_TRUNK, record.outbound_trunk_id, self.livekit.delete_trunk),
            (StepName.INBOUND_TRUNK, record.inbound_trunk_id, self.livekit.delete_trunk),
        ]
        for name, resource_id, delete in deletions:
            step = job.step(name)
            if step.status is StepStatus.DONE:
                continue
            step.status, step.resource_id, step.started_at = (
                StepStatus.STARTED, resource_id, utcnow())
            checkpoint(job)
            delete(resource_id)
            step.status, step.finished_at = StepStatus.DONE, utcnow()
            checkpoint(job)
        self.store.delete_number_if_owned(job.number, record.org_id, record.job_id, token)
        record_step = job.step(StepName.PHONE_NUMBER)
        record_step.status, record_step.resource_id = StepStatus.DONE, record.phone_number_id
        record_step.finished_at = utcnow()
        checkpoint(job)
        return _result(record)

    def backward(self, job: Job, token: str, checkpoint: Checkpoint) -> None:
        """Nothing to undo: a release only moves forward (see the module docstring)."""

    def leftovers(self, job: Job) -> list[str]:
        return [
            f"{name.value}:{step.resource_id or 'unknown'} (not yet deleted)"
            for name, step in job.steps.items()
            if step.status is not StepStatus.DONE
        ]

    def _delete_rule(self, rule_id: str) -> None:
        with contextlib.suppress(LiveKitNotFound):  # already gone is what we want
            self.livekit.delete_dispatch_rule(rule_id)


def _changed_fields(job: Job, name: StepName) -> set[str]:
    """The update's fields that the LiveKit object of step `name` reflects."""
    if job.change is None:
        raise ValueError(f"update job {job.job_id} has no change")
    return set(job.change.fields) & _WIRE_FIELDS[name].keys()


def _agents(rule: DispatchRule, current: LiveKitObject) -> list[dict[str, Any]]:
    """Trunkline's agents, each merged into LiveKit's entry for the same agent name, so what
    was set there (a restart policy, attributes) stays; agents Trunkline no longer names go."""
    room_config = current.fields.get("room_config")
    entries = room_config.get("agents") if isinstance(room_config, dict) else None
    held = {entry.get("agent_name"): entry for entry in entries or [] if isinstance(entry, dict)}
    ours = rule.room_config.agents if rule.room_config is not None else []
    return [merged_json(held.get(agent.agent_name, {}),
                        agent.wire_values({"agent_name", "metadata"})) for agent in ours]


def _resource_id(record: PhoneNumberRecord, name: StepName) -> str:
    return {
        StepName.INBOUND_TRUNK: record.inbound_trunk_id,
        StepName.OUTBOUND_TRUNK: record.outbound_trunk_id,
        StepName.DISPATCH_RULE: record.dispatch_rule_id,
    }[name]
