"""Update in place and release: the rest of a number's lifecycle, with creation's guarantees.

Both run under the same per-number lock, count attempts, retry, dead-letter and publish one
event, through the same JobRunner. Their steps reuse the create saga's step names.

* Update applies the new configuration with LiveKit's Update calls (the ids stay), then
  writes the record. Updates are whole-object replacements, so re-applying one after an
  unknown outcome is harmless. If LiveKit refuses a change, the steps already applied are
  put back to the configuration the job found (kept in the job as `previous`), and the
  record is left as it was.
* Release deletes the rule, the outbound trunk, the inbound trunk, then the record. It only
  moves forward: a delete cannot be undone, and every step is idempotent (a trunk or rule
  already gone counts as deleted), so a failed release is retried or replayed to completion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from worker.livekit import LiveKitError, LiveKitNotFound, LiveKitSIP
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

# Which changed fields each LiveKit object has to be told about.
_FIELDS_OF = {
    StepName.OUTBOUND_TRUNK: {"name", "outbound_pstn", "transport", "auth_user_name",
                              "auth_password_ciphertext"},
    StepName.INBOUND_TRUNK: {"name", "allowed_addresses"},
    StepName.DISPATCH_RULE: {"name", "agent_name", "room_prefix", "metadata"},
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
        changed = set(change.fields)
        for name in _UPDATE_ORDER:
            step = job.step(name)
            if step.status is StepStatus.DONE or not changed & _FIELDS_OF[name]:
                continue
            step.status, step.started_at = StepStatus.STARTED, utcnow()
            step.resource_id = _resource_id(record, name)
            checkpoint(job)
            self._apply(name, target)
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
        """Put back the configuration the job found on every object it may have changed."""
        previous = job.previous
        if previous is None:
            return  # failed before touching anything
        failures: list[LiveKitError] = []
        for name in reversed(_UPDATE_ORDER):
            step = job.step(name)
            if step.status not in (StepStatus.STARTED, StepStatus.DONE):
                continue
            try:
                self._apply(name, previous)
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

    def _apply(self, name: StepName, config: PhoneNumberRecord) -> None:
        def tag(step: StepName) -> str:
            # Objects keep the tag of the job that created them, which the record names.
            return make_tag(config.job_id, config.org_id, step, config.number)

        if name is StepName.OUTBOUND_TRUNK:
            password = self.vault.decrypt(config.auth_password_ciphertext)
            self.livekit.update_outbound_trunk(
                config.outbound_trunk_id, outbound_trunk_for(config, tag(name), password))
        elif name is StepName.INBOUND_TRUNK:
            self.livekit.update_inbound_trunk(
                config.inbound_trunk_id, inbound_trunk_for(config, tag(name)))
        else:
            self.livekit.update_dispatch_rule(config.dispatch_rule_id, dispatch_rule_for(
                config, tag(name), inbound_trunk_id=config.inbound_trunk_id,
                org_id=config.org_id, phone_number_id=config.phone_number_id))


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


def _resource_id(record: PhoneNumberRecord, name: StepName) -> str:
    return {
        StepName.INBOUND_TRUNK: record.inbound_trunk_id,
        StepName.OUTBOUND_TRUNK: record.outbound_trunk_id,
        StepName.DISPATCH_RULE: record.dispatch_rule_id,
    }[name]
