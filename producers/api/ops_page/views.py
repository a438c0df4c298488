"""What the operators' page shows, read from the job store: pages of dead letters and jobs, a
job's timeline, a number's history. Plain data for the templates; never a secret (jobs and
records go through their `public_view`, which drops ciphertexts and fingerprints)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from ops.dlq import DeadLetter, DeadLetters
from ops.paging import Page, decode_cursor, encode_cursor, zset_page
from worker.records import Job, JobState, StepRecord, StepStatus
from worker.store import JobStore, UnreadableRecord, load_job, raw_field

MAX_PAGE = 100
# A number's history reads job records in batches of SCAN_BATCH, at most SCAN_LIMIT a request,
# then offers to search older ones.
SCAN_BATCH = 500
SCAN_LIMIT = 20_000


@dataclass(frozen=True)
class JobRow:
    """One line of a job list: the job, or why its record does not load."""

    job_id: str
    job: Job | None
    unreadable: str | None = None


@dataclass(frozen=True)
class Search:
    """A page of a search that reads every job: what matched, where to go on, how many were
    read this time."""

    items: list[JobRow]
    next_cursor: str | None
    scanned: int


@dataclass(frozen=True)
class StepLine:
    name: str
    status: str
    # What the step did: created, adopted (found on LiveKit from an earlier run), ...
    outcome: str
    resource_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None
    # The attempt (its number in the job's history) that finished, or last started, the step.
    attempt: int | None


@dataclass(frozen=True)
class AttemptLine:
    number: int
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None
    # Since the previous attempt ended: the backoff, or the time until a replay.
    waited: float | None
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True)
class Bar:
    """One row of the timeline drawing, in the drawing's units (0-1000 across): an attempt
    spans the width; its steps are placed in it by their share of its time."""

    label: str
    kind: str
    x: float
    width: float
    y: int


@dataclass(frozen=True)
class Timeline:
    steps: list[StepLine]
    attempts: list[AttemptLine]
    bars: list[Bar]
    start: datetime
    end: datetime
    height: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


# The drawing: labels on the left, bars from LABEL_WIDTH to DRAWING_WIDTH.
DRAWING_WIDTH = 1000
LABEL_WIDTH = 260
ROW_HEIGHT = 26


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else max(0.0, (end - start).total_seconds())


def _outcome(name: str, step: StepRecord) -> str:
    made = "found on LiveKit and adopted" if step.adopted else "created"
    if name == "phone_number" and not step.adopted:
        made = "record written"
    if step.status is StepStatus.DONE:
        return made
    if step.status is StepStatus.COMPENSATED:
        return f"{made}, then deleted by compensation"
    if step.status is StepStatus.STARTED:
        return "started; outcome not known yet (a later run looks for it before creating)"
    return "not run"


def _attempt_of(moment: datetime | None, job: Job) -> int | None:
    """The attempt during which `moment` fell: the last one that had started by then."""
    if moment is None:
        return None
    found = None
    for attempt in job.history:
        if attempt.started_at <= moment:
            found = attempt.number
    return found


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "running"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def timeline(job: Job, now: datetime | None = None) -> Timeline:
    """The job's steps and attempts in time, with a drawing: one band per attempt, its steps
    placed within it (a step takes milliseconds, a backoff between attempts seconds, so one
    scale for the whole job would show the steps as slivers)."""
    now = now or datetime.now(UTC)
    steps = [
        StepLine(name=name.value, status=step.status.value, outcome=_outcome(name.value, step),
                 resource_id=step.resource_id, started_at=step.started_at,
                 finished_at=step.finished_at,
                 seconds=_seconds(step.started_at, step.finished_at),
                 attempt=_attempt_of(step.finished_at or step.started_at, job))
        for name, step in job.steps.items()
    ]
    attempts = [
        AttemptLine(number=attempt.number, started_at=attempt.started_at,
                    finished_at=attempt.finished_at,
                    seconds=_seconds(attempt.started_at, attempt.finished_at),
                    waited=_seconds(before.finished_at, attempt.started_at) if before else None,
                    error_code=attempt.error.code if attempt.error else None,
                    error_message=attempt.error.message if attempt.error else None)
        for before, attempt in zip([None, *job.history], job.history, strict=False)
    ]
    moments = [job.finished_at, job.updated_at, *(a.finished_at for a in attempts),
               *(s.finished_at for s in steps), *(s.started_at for s in steps)]
    end = max([m for m in moments if m is not None] + [job.created_at])
    if not job.state.terminal:
        end = max(end, now)
    width = DRAWING_WIDTH - LABEL_WIDTH
    bars: list[Bar] = []
    for line in attempts:
        begin, finish = line.started_at, line.finished_at or end
        span = max((finish - begin).total_seconds(), 0.001)
        bars.append(Bar(label=f"attempt {line.number} · {_duration(line.seconds)}",
                        kind="attempt-failed" if line.error_code else "attempt",
                        x=LABEL_WIDTH, width=width, y=len(bars) * ROW_HEIGHT))
        for step in steps:
            if step.attempt != line.number or step.started_at is None:
                continue
            offset = min(max(0.0, (step.started_at - begin).total_seconds()) / span, 1.0)
            share = (step.seconds or 0.0) / span
            kind = "step-adopted" if "adopted" in step.outcome else f"step-{step.status}"
            bars.append(Bar(label=f"  {step.name} · {_duration(step.seconds)}", kind=kind,
                            x=round(LABEL_WIDTH + offset * width, 1),
                            width=round(max(2.0, min(share, 1.0 - offset) * width), 1),
                            y=len(bars) * ROW_HEIGHT))
    return Timeline(steps=steps, attempts=attempts, bars=bars, start=job.created_at, end=end,
                    height=max(1, len(bars)) * ROW_HEIGHT)


class OpsData:
    """The store, as the page reads it: a page at a time, newest first."""

    def __init__(self, store: JobStore, *, scan_limit: int = SCAN_LIMIT) -> None:
        self.store = store
        self.letters = DeadLetters(store)
        self.scan_limit = scan_limit

    def dead_letters(self, cursor: str | None, limit: int) -> Page[DeadLetter]:
        """Dead letters, newest first; ops.paging.BadCursor for a cursor not made here."""
        def load(ids: list[str]) -> list[DeadLetter | None]:
            # A job replayed since the page was listed has left the list: get() is None.
            return [self.letters.get(job_id) for job_id in ids]

        return zset_page(self.store.redis, [self.store.keys.dead_letters], cursor=cursor,
                         limit=limit, load=load)

    def dead_letter_count(self) -> int:
        return self.letters.count()

    def _job_indexes(self, org: str | None) -> list[str]:
        if org:
            return [self.store.keys.jobs_by_org(org)]
        pattern = self.store.keys.jobs_by_org("*")
        return sorted(_text(key) for key in self.store.redis.scan_iter(match=pattern, count=500))

    def _raws(self, ids: list[str]) -> list[tuple[str, bytes] | None]:
        raws = cast(list[bytes | None],
                    self.store.redis.mget([self.store.keys.job(i) for i in ids]))
        return [None if raw is None else (job_id, raw)
                for job_id, raw in zip(ids, raws, strict=True)]

    def _row(self, job_id: str, raw: bytes) -> JobRow:
        try:
            return JobRow(job_id, load_job(job_id, raw))
        except UnreadableRecord as unreadable:
            return JobRow(job_id, None, unreadable.reason)

    def jobs(self, cursor: str | None, limit: int, *, org: str | None = None,
             state: JobState | None = None) -> Page[JobRow]:
        """Every organisation's jobs (or one's), newest first."""
        def load(ids: list[str]) -> list[JobRow | None]:
            rows = [None if found is None else self._row(*found) for found in self._raws(ids)]
            if state is None:
                return rows
            # An unreadable record has no state: it matches no state filter.
            return [row if row is not None and row.job is not None and row.job.state is state
                    else None for row in rows]

        return zset_page(self.store.redis, self._job_indexes(org), cursor=cursor, limit=limit,
                         load=load)

    def number_jobs(self, number: str, cursor: str | None, limit: int) -> Search:
        """Jobs for `number`, whichever organisation sent them, newest first.

        There is no index by number, so this reads the newest `scan_limit` entries of every
        organisation's job index (after the cursor), then their records in batches (matching
        the number in the stored bytes before parsing) until `limit` jobs are found; the
        cursor goes on from the last job read. ops.paging.BadCursor for a forged cursor.
        """
        position = decode_cursor(cursor) if cursor else None
        top: float | str = position[0] if position else "+inf"
        entries: list[tuple[float, str]] = []
        for index in self._job_indexes(None):
            rows = cast(list[tuple[bytes, float]], self.store.redis.zrevrangebyscore(
                index, top, "-inf", start=0, num=self.scan_limit, withscores=True))
            entries += [entry for entry in ((float(s), _text(m)) for m, s in rows)
                        if position is None or entry < position]
        entries.sort(reverse=True)
        entries = entries[:self.scan_limit]
        found: list[JobRow] = []
        read = 0
        for start in range(0, len(entries), SCAN_BATCH):
            batch = entries[start:start + SCAN_BATCH]
            for loaded in self._raws([member for _, member in batch]):
                if loaded is not None and raw_field(loaded[1], "number") == number:
                    found.append(self._row(*loaded))
            read += len(batch)
            if len(found) >= limit:
                break
        more = read < len(entries) or len(entries) == self.scan_limit
        return Search(found, encode_cursor(entries[read - 1]) if more and read else None, read)

    def job(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def number_record(self, number: str) -> dict[str, Any] | None:
        record = self.store.get_number(number)
        return None if record is None else record.public_view()

    def in_flight(self, number: str) -> list[str]:
        return self.store.jobs_in_flight(number)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
