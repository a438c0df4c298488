"""The dead-letter list `trunkline:dlq`, as the people on call see it.

The list is a sorted set of job ids scored by the time each job was dead-lettered; the job
record (`trunkline:job:<id>`) holds its reason and last error. Replaying goes through
`ProvisioningClient.replay` (same job id, attempts reset, the job leaves this list); purging
removes entries from the list and leaves the job records (state `failed`) in place.

Views never hold a secret: jobs are shown through `Job.public_view()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from worker.records import Job
from worker.store import JobStore, UnreadableRecord, load_job

BATCH = 500


@dataclass(frozen=True)
class DeadLetter:
    job_id: str
    dead_lettered_at: datetime
    # None when the list names a job whose record is gone, or does not load.
    job: Job | None
    # Why the record does not load (then `job` is None): it was quarantined.
    unreadable: str | None = None

    @property
    def org_id(self) -> str | None:
        return self.job.org_id if self.job else None

    @property
    def code(self) -> str | None:
        if self.unreadable is not None:
            return "unreadable_record"
        return self.job.error.code if self.job and self.job.error else None

    def summary(self) -> dict[str, Any]:
        """The list view: who, which number, why, when."""
        view: dict[str, Any] = {
            "job_id": self.job_id,
            "dead_lettered_at": self.dead_lettered_at.isoformat(),
        }
        job = self.job
        if job is None and self.unreadable is not None:
            view.update(unreadable_record=True, error={
                "code": "unreadable_record", "message": f"the job record cannot be read "
                f"({self.unreadable}); it was dead-lettered without running"})
            return view
        if job is None:
            view["missing_record"] = True
            return view
        view.update(
            org_id=job.org_id,
            kind=job.kind.value,
            number=job.number,
            name=job.request.name if job.request else None,
            state=job.state.value,
            attempts=job.attempts,
            run=job.run,
            error=job.error.model_dump(mode="json") if job.error else None,
            leftovers=list(job.leftovers),
            created_at=job.created_at.isoformat(),
        )
        return view

    def detail(self) -> dict[str, Any]:
        """The full job as operators may see it (no ciphertext, no fingerprint)."""
        if self.job is None and self.unreadable is not None:
            view = self.summary()
        else:
            view = self.job.public_view() if self.job else {"job_id": self.job_id,
                                                             "missing_record": True}
        view["dead_lettered_at"] = self.dead_lettered_at.isoformat()
        return view


class DeadLetters:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.redis = store.redis
        self.key = store.keys.dead_letters

    def count(self) -> int:
        return int(self.redis.zcard(self.key))

    def entries(
        self,
        *,
        org: str | None = None,
        code: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Dead letters, newest first, filtered by organisation, error code and age."""
        low: float | str = since.timestamp() if since else "-inf"
        found: list[DeadLetter] = []
        offset = 0
        while True:
            rows = cast(list[tuple[bytes, float]], self.redis.zrevrangebyscore(
                self.key, "+inf", low, start=offset, num=BATCH, withscores=True))
            if not rows:
                return found
            offset += len(rows)
            for letter in self._load(rows):
                if org is not None and letter.org_id != org:
                    continue
                if code is not None and letter.code != code:
                    continue
                found.append(letter)
                if limit is not None and len(found) >= limit:
                    return found

    def get(self, job_id: str) -> DeadLetter | None:
        """The dead letter of a job, or None when the job is not on the list."""
        score = self.redis.zscore(self.key, job_id)
        if score is None:
            return None
        try:
            return DeadLetter(job_id, _at(float(score)), self.store.get(job_id))
        except UnreadableRecord as unreadable:
            return self._unreadable(job_id, float(score), unreadable)

    def purge(self, job_ids: Iterable[str]) -> int:
        """Remove these jobs from the list (their records stay); returns how many were on it."""
        ids = list(job_ids)
        removed = 0
        for start in range(0, len(ids), BATCH):
            removed += int(self.redis.zrem(self.key, *ids[start:start + BATCH]))
        return removed

    def _load(self, rows: list[tuple[bytes, float]]) -> list[DeadLetter]:
        ids = [_text(member) for member, _ in rows]
        raws = cast(list[bytes | None], self.redis.mget([self.store.keys.job(i) for i in ids]))
        return [self._letter(job_id, float(score), raw)
                for job_id, (_, score), raw in zip(ids, rows, raws, strict=True)]

    def _letter(self, job_id: str, score: float, raw: bytes | None) -> DeadLetter:
        if raw is None:
            return DeadLetter(job_id, _at(score), None)
        try:
            return DeadLetter(job_id, _at(score), load_job(job_id, raw))
        except UnreadableRecord as unreadable:
            # One unreadable record must not hide the rest of the list.
            return self._unreadable(job_id, score, unreadable)

    def _unreadable(self, job_id: str, score: float, unreadable: UnreadableRecord) -> DeadLetter:
        reason = self.store.unreadable_reason(job_id) or unreadable.reason
        return DeadLetter(job_id, _at(score), None, unreadable=reason)


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
