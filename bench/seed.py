"""Existing numbers for the overhead measurement, written in bulk with the store's own models.

Each seeded number is what a finished job leaves behind: a succeeded job record (in the
organisation's job index), a phone-number record (in the organisation's number index), its
"published" marker and its event on the results stream. They belong to the same organisation
as the measured jobs, so any per-organisation scan on the happy path would show.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from bench.direct import bench_request
from worker.contract import parse_request
from worker.records import (
    Job,
    JobResult,
    JobState,
    PhoneNumberRecord,
    StepName,
    StepRecord,
    StepStatus,
    StoredRequest,
    new_job_id,
    utcnow,
)
from worker.runner import event_payload
from worker.saga import phone_number_id_for
from worker.store import JobStore
from worker.vault import Vault


@dataclass
class Seeded:
    """What seed_numbers wrote, so that unseed() can take exactly that away again."""

    org_id: str
    numbers: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    stream_ids: list[str] = field(default_factory=list)


def seed_numbers(store: JobStore, vault: Vault, org_id: str, numbers: Sequence[str],
                 *, batch: int = 1000,
                 advance: Callable[[int], None] = lambda _n: None) -> Seeded:
    """Write one finished job and its number record per number."""
    seeded = Seeded(org_id)
    if not numbers:
        return seeded
    keys = store.keys
    template = StoredRequest.seal(parse_request(bench_request(numbers[0])), vault)
    for start in range(0, len(numbers), batch):
        pipe = store.redis.pipeline(transaction=False)
        chunk = numbers[start:start + batch]
        for number in chunk:
            request = template.model_copy(update={"number": number})
            finished = utcnow()
            job = Job(job_id=new_job_id(), org_id=org_id, number=number, request=request,
                      request_fingerprint=vault.fingerprint({"seed": number}), source="bench",
                      state=JobState.SUCCEEDED, attempts=1,
                      created_at=finished - timedelta(milliseconds=20),
                      started_at=finished - timedelta(milliseconds=15), finished_at=finished)
            ids = {name: f"SEED_{name.value}_{uuid.uuid4().hex[:12]}" for name in job.steps}
            job.steps = {name: StepRecord(status=StepStatus.DONE, resource_id=ids[name],
                                          started_at=finished, finished_at=finished)
                         for name in job.steps}
            phone_number_id = phone_number_id_for(job)
            job.result = JobResult(number=number,
                                   inbound_trunk_id=ids[StepName.INBOUND_TRUNK],
                                   outbound_trunk_id=ids[StepName.OUTBOUND_TRUNK],
                                   dispatch_rule_id=ids[StepName.DISPATCH_RULE],
                                   phone_number_id=phone_number_id)
            record = PhoneNumberRecord(
                phone_number_id=phone_number_id, org_id=org_id, number=number,
                name=request.name, job_id=job.job_id,
                inbound_trunk_id=job.result.inbound_trunk_id,
                outbound_trunk_id=job.result.outbound_trunk_id,
                dispatch_rule_id=job.result.dispatch_rule_id,
                outbound_pstn=request.outbound_pstn, transport=request.transport,
                auth_user_name=request.auth_user_name,
                auth_password_ciphertext=request.auth_password_ciphertext,
                agent_name=request.agent_name, room_prefix=request.room_prefix,
            )
            created = job.created_at.timestamp()
            pipe.set(keys.job(job.job_id), job.model_dump_json())
            pipe.zadd(keys.jobs_by_org(org_id), {job.job_id: created})
            pipe.set(keys.number(number), record.model_dump_json())
            pipe.zadd(keys.numbers_by_org(org_id), {number: created})
            payload = json.dumps(event_payload(job), separators=(",", ":"), default=str)
            pipe.xadd(keys.results, {"job_id": job.job_id, "org_id": org_id,
                                     "status": job.state.value, "payload": payload},
                      maxlen=store.results_maxlen, approximate=True)
            pipe.set(keys.published(job.job_id, job.run), "seeded")
            seeded.numbers.append(number)
            seeded.job_ids.append(job.job_id)
        replies = pipe.execute()
        # Six commands per number; the fifth is the XADD, whose reply is the entry id.
        seeded.stream_ids += [_text(replies[i]) for i in range(4, len(replies), 6)]
        advance(len(chunk))
    return seeded


def unseed(store: JobStore, seeded: Seeded, *, batch: int = 1000) -> None:
    """Delete what seed_numbers wrote (and nothing else)."""
    keys = store.keys
    for start in range(0, len(seeded.numbers), batch):
        numbers = seeded.numbers[start:start + batch]
        job_ids = seeded.job_ids[start:start + batch]
        pipe = store.redis.pipeline(transaction=False)
        pipe.delete(*[keys.job(job_id) for job_id in job_ids],
                    *[keys.published(job_id, 1) for job_id in job_ids],
                    *[keys.number(number) for number in numbers])
        pipe.zrem(keys.jobs_by_org(seeded.org_id), *job_ids)
        pipe.zrem(keys.numbers_by_org(seeded.org_id), *numbers)
        stream_ids = seeded.stream_ids[start:start + batch]
        if stream_ids:
            pipe.xdel(keys.results, *stream_ids)
        pipe.execute()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
