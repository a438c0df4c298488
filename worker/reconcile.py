"""Reconciliation: LiveKit's tagged trunks and rules against our phone-number records.

Every object the saga creates carries `{"trunkline": {job_id, org_id, step, number}}` in its
metadata (`worker.saga.tag`). Objects without that tag belong to someone else and are never
looked at. A run reports three kinds of findings:

* **orphans** - a tagged object that no phone-number record refers to, whose job is failed
  (`job_failed`), unknown to the job store (`job_unknown`: never stored here, or its finished
  record deleted by retention), or succeeded while its record is gone (`no_record`) or refers
  to other objects (`not_in_record`, e.g. a duplicate from a race). An object any record
  refers to is owned, whatever became of its job: retention deletes old job records but keeps
  the numbers' records. An object whose job is still `queued` or `running` is never an
  orphan: that job may be mid-saga; it is counted as `in_flight`.
* **missing** - a record whose inbound trunk, outbound trunk or dispatch rule is gone from
  LiveKit (confirmed by a direct read, so an object created after the listing is not one).
* **drifted** - an object a record refers to that was changed outside Trunkline: outbound
  address, numbers, transport, auth username or password (compared with the record's
  decrypted ciphertext; neither value is ever reported), inbound numbers and allowed
  addresses, dispatch rule trunk ids, room prefix and agent.

Every finding names the LiveKit id, the number and the job.

`delete_orphans()` removes orphans only, dispatch rules before trunks. For each number it
holds the per-number lock the worker uses, so no job for that number runs meanwhile, and it
checks again, under the lock, that each object is still an orphan. It refuses to delete
more than `max_deletions` objects at once: many "unknown job" orphans usually mean another
Trunkline deployment (another Redis) shares this LiveKit project.

Scheduling: `Reconciler(livekit, store, vault).run()` returns a `Report`; `Report.counts()`
gives the numbers to export as metrics. The beat task and `trunkline reconcile` keep the last
report's findings in Redis (`save_report`); `latest_report(redis)` reads them back.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from redis import Redis

from worker.livekit import (
    DispatchRule,
    InboundTrunk,
    LiveKitNotFound,
    LiveKitSIP,
    OutboundTrunk,
    SIPTransport,
)
from worker.observability import RECONCILE_FINDINGS
from worker.records import Job, JobState, PhoneNumberRecord
from worker.saga import read_tag
from worker.store import JobStore, Keys, UnreadableRecord, load_job, raw_field
from worker.vault import Vault, VaultError

log = logging.getLogger(__name__)

DEFAULT_MAX_DELETIONS = 50
LOCK_SECONDS = 60.0
# A saved report keeps this many findings per category (its summary keeps the true counts):
# a LiveKit project shared by mistake can hold thousands of orphans.
MAX_SAVED_FINDINGS = 500


class Kind(StrEnum):
    INBOUND_TRUNK = "inbound_trunk"
    OUTBOUND_TRUNK = "outbound_trunk"
    DISPATCH_RULE = "dispatch_rule"


class Category(StrEnum):
    ORPHAN = "orphan"
    MISSING = "missing"
    DRIFTED = "drifted"


# Deletion order: a rule before the trunks it routes.
_DELETE_ORDER = {Kind.DISPATCH_RULE: 0, Kind.OUTBOUND_TRUNK: 1, Kind.INBOUND_TRUNK: 2}


@dataclass(frozen=True)
class FieldDrift:
    field: str
    expected: Any = None
    actual: Any = None
    # Secret fields carry no values, only the fact that they differ.
    secret: bool = False

    def as_json(self) -> dict[str, Any]:
        if self.secret:
            return {"field": self.field, "secret": True, "changed": True}
        return {"field": self.field, "expected": self.expected, "actual": self.actual}

    def describe(self) -> str:
        if self.secret:
            return f"{self.field}: changed"
        return f"{self.field}: {self.expected!r} -> {self.actual!r}"


@dataclass(frozen=True)
class Finding:
    category: Category
    kind: Kind
    livekit_id: str
    number: str | None
    job_id: str | None
    org_id: str | None
    reason: str
    phone_number_id: str | None = None
    job_state: str | None = None
    name: str | None = None
    fields: tuple[FieldDrift, ...] = ()

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind.value,
            "livekit_id": self.livekit_id,
            "number": self.number,
            "job_id": self.job_id,
            "org_id": self.org_id,
            "reason": self.reason,
        }
        if self.phone_number_id is not None:
            data["phone_number_id"] = self.phone_number_id
        if self.category is Category.ORPHAN:
            data["job_state"] = self.job_state
            data["name"] = self.name
        if self.category is Category.DRIFTED:
            data["fields"] = [f.as_json() for f in self.fields]
        return data


@dataclass
class Report:
    orphans: list[Finding] = field(default_factory=list)
    missing: list[Finding] = field(default_factory=list)
    drifted: list[Finding] = field(default_factory=list)
    # Tagged objects of jobs still queued or running: not judged this time.
    in_flight: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration_seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.orphans or self.missing or self.drifted)

    def counts(self) -> dict[str, int]:
        """Findings by category, for metrics and summaries."""
        return {"orphans": len(self.orphans), "missing": len(self.missing),
                "drifted": len(self.drifted), "in_flight": len(self.in_flight)}

    def as_json(self) -> dict[str, Any]:
        return {
            "orphans": [f.as_json() for f in self.orphans],
            "missing": [f.as_json() for f in self.missing],
            "drifted": [f.as_json() for f in self.drifted],
            "summary": {
                **self.counts(),
                "checked": dict(self.checked),
                "warnings": list(self.warnings),
                "started_at": self.started_at.isoformat(),
                "duration_seconds": round(self.duration_seconds, 3),
            },
        }


@dataclass(frozen=True)
class Deletion:
    finding: Finding
    deleted: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {**self.finding.as_json(), "deleted": self.deleted, "detail": self.detail}


class TooManyDeletions(RuntimeError):
    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(
            f"refusing to delete {count} orphans at once (the limit is {limit}): is another "
            "Trunkline deployment using this LiveKit project? Check a few by hand, then raise "
            "the limit"
        )


_LiveKitObject = InboundTrunk | OutboundTrunk | DispatchRule


@dataclass
class _Snapshot:
    inbound: dict[str, InboundTrunk]
    outbound: dict[str, OutboundTrunk]
    rules: dict[str, DispatchRule]

    def objects(self) -> Iterator[tuple[Kind, str, _LiveKitObject]]:
        for trunk_id, inbound in self.inbound.items():
            yield Kind.INBOUND_TRUNK, trunk_id, inbound
        for trunk_id, outbound in self.outbound.items():
            yield Kind.OUTBOUND_TRUNK, trunk_id, outbound
        for rule_id, rule in self.rules.items():
            yield Kind.DISPATCH_RULE, rule_id, rule

    def has(self, kind: Kind, object_id: str) -> bool:
        if kind is Kind.INBOUND_TRUNK:
            return object_id in self.inbound
        if kind is Kind.OUTBOUND_TRUNK:
            return object_id in self.outbound
        return object_id in self.rules


def record_ids(record: PhoneNumberRecord) -> dict[Kind, str]:
    return {Kind.INBOUND_TRUNK: record.inbound_trunk_id,
            Kind.OUTBOUND_TRUNK: record.outbound_trunk_id,
            Kind.DISPATCH_RULE: record.dispatch_rule_id}


def _result_ids(job: Job) -> dict[Kind, str]:
    if job.result is None:
        return {}
    return {Kind.INBOUND_TRUNK: job.result.inbound_trunk_id,
            Kind.OUTBOUND_TRUNK: job.result.outbound_trunk_id,
            Kind.DISPATCH_RULE: job.result.dispatch_rule_id}


class Reconciler:
    """Compare LiveKit with the job store; report, and on request delete orphans.

    `vault` decrypts stored passwords for the credential comparison; without it passwords
    are not compared (the report says so in its warnings).
    """

    def __init__(
        self,
        livekit: LiveKitSIP,
        store: JobStore,
        vault: Vault | None = None,
        *,
        max_deletions: int = DEFAULT_MAX_DELETIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.livekit = livekit
        self.store = store
        self.vault = vault
        self.max_deletions = max_deletions
        self.clock = clock

    # --- report -------------------------------------------------------------------------

    def run(self) -> Report:
        started = self.clock()
        report = Report()
        # LiveKit first, our records second: a record written meanwhile refers to objects
        # the listing may lack, which the direct read in _confirm_missing sorts out.
        snapshot = _Snapshot(
            inbound={t.sip_trunk_id: t for t in self.livekit.list_inbound_trunks()},
            outbound={t.sip_trunk_id: t for t in self.livekit.list_outbound_trunks()},
            rules={r.sip_dispatch_rule_id: r for r in self.livekit.list_dispatch_rules()},
        )
        records = list(self._records())
        # A number with a queued or running job may be mid-change (create, update, release):
        # nothing about it is judged this time.
        busy = self._busy_numbers()
        tagged = self._judge_objects(snapshot, records, busy, report)
        self._find_missing(snapshot, records, busy, report)
        report.checked = {
            "records": len(records),
            "inbound_trunks": len(snapshot.inbound),
            "outbound_trunks": len(snapshot.outbound),
            "dispatch_rules": len(snapshot.rules),
            "tagged_unreferenced": tagged,
        }
        report.duration_seconds = self.clock() - started
        return report

    def _judge_objects(self, snapshot: _Snapshot, records: list[PhoneNumberRecord],
                       busy: set[str], report: Report) -> int:
        """Drift for the objects records use, orphans among the other tagged ones."""
        owner: dict[str, tuple[Kind, PhoneNumberRecord]] = {}
        for record in records:
            for kind, object_id in record_ids(record).items():
                owner[object_id] = (kind, record)
        referenced = set(owner)
        jobs: dict[str, Job | None] = {}
        tagged = 0
        for kind, object_id, obj in snapshot.objects():
            owned = owner.get(object_id)
            if owned is not None and owned[0] is kind:
                record = owned[1]
                if record.number in busy:
                    report.in_flight.append(object_id)
                    continue
                drift = self._drift(obj, record, report)
                if drift:
                    report.drifted.append(_finding(
                        Category.DRIFTED, kind, object_id, record=record,
                        reason="changed_outside_trunkline", fields=drift))
                continue
            found = read_tag(obj.metadata)
            if found is None:
                continue  # not ours
            tagged += 1
            orphan = self._judge_unreferenced(kind, object_id, obj, found=found, jobs=jobs,
                                              busy=busy, referenced=referenced)
            if orphan is None:
                continue
            if orphan.reason == "in_flight":
                report.in_flight.append(object_id)
            else:
                report.orphans.append(orphan)
        return tagged

    def _find_missing(self, snapshot: _Snapshot, records: list[PhoneNumberRecord],
                      busy: set[str], report: Report) -> None:
        for record in records:
            if record.number in busy:
                continue
            for kind, object_id in record_ids(record).items():
                if not snapshot.has(kind, object_id) and self._confirm_missing(kind, object_id):
                    report.missing.append(_finding(Category.MISSING, kind, object_id,
                                                   record=record, reason="gone_from_livekit"))

    def _records(self) -> Iterator[PhoneNumberRecord]:
        pattern = f"{self.store.keys.prefix}:number:*"
        batch: list[bytes] = []
        for key in self.store.redis.scan_iter(match=pattern, count=500):
            batch.append(cast(bytes, key))
            if len(batch) >= 500:
                yield from self._load_records(batch)
                batch = []
        yield from self._load_records(batch)

    def _load_records(self, keys: list[bytes]) -> Iterator[PhoneNumberRecord]:
        if not keys:
            return
        for key, raw in zip(keys, cast(list[bytes | None], self.store.redis.mget(keys)),
                            strict=True):
            if raw is None:
                continue
            try:
                yield PhoneNumberRecord.model_validate_json(raw)
            except ValueError:
                # Skipped, not fatal: one bad record must not hide every other finding.
                log.error("reconcile skips %s: the record does not load", key)

    def _busy_numbers(self) -> set[str]:
        """Numbers that have a queued or running job (the active index)."""
        busy: set[str] = set()
        ids = [_text(i) for i in cast(list[bytes],
                                      self.store.redis.zrange(self.store.keys.active, 0, -1))]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            raws = cast(list[bytes | None], self.store.redis.mget(
                [self.store.keys.job(i) for i in chunk]))
            for job_id, raw in zip(chunk, raws, strict=True):
                if raw is not None:
                    try:
                        job = load_job(job_id, raw)
                    except UnreadableRecord:
                        # Its number may be mid-saga for all we can tell: leave it alone.
                        if (number := raw_field(raw, "number")) is not None:
                            busy.add(number)
                        continue
                    if not job.state.terminal:
                        busy.add(job.number)
        return busy

    def _job(self, job_id: str | None, cache: dict[str, Job | None]) -> Job | None:
        if not job_id:
            return None
        if job_id not in cache:
            try:
                cache[job_id] = self.store.get(job_id)
            except UnreadableRecord:
                cache[job_id] = None
        return cache[job_id]

    def _judge_unreferenced(
        self, kind: Kind, object_id: str, obj: _LiveKitObject, *, found: dict[str, str],
        jobs: dict[str, Job | None], busy: set[str], referenced: set[str],
    ) -> Finding | None:
        """An orphan finding, an in-flight marker (reason `in_flight`) or None (owned after all)."""
        job_id = found.get("job_id") or None
        number = found.get("number") or None
        org_id = found.get("org_id") or None
        job = self._job(job_id, jobs)
        reason = self._orphan_reason(kind, object_id, job, number, busy=busy,
                                     referenced=referenced)
        if reason is None:
            return None
        return Finding(
            category=Category.ORPHAN, kind=kind, livekit_id=object_id,
            number=number or (job.number if job else None), job_id=job_id,
            org_id=org_id or (job.org_id if job else None), reason=reason,
            job_state=job.state.value if job else None, name=obj.name,
        )

    def _orphan_reason(self, kind: Kind, object_id: str, job: Job | None,
                       number: str | None, *, busy: set[str],
                       referenced: set[str]) -> str | None:
        """`referenced`: the ids every phone-number record refers to, as last read."""
        number = number or (job.number if job else None)
        if number in busy or (job is not None and not job.state.terminal):
            return "in_flight"
        if object_id in referenced or self._referenced(kind, object_id, number):
            return None
        if job is None:
            return "job_unknown"
        if job.state is JobState.FAILED:
            return "job_failed"
        if number is None or self.store.get_number(number) is None:
            return "no_record"
        return "not_in_record"

    def _referenced(self, kind: Kind, object_id: str, number: str | None) -> bool:
        """Read the record again: a job may have finished since the records were read."""
        record = self.store.get_number(number) if number else None
        return record is not None and record_ids(record).get(kind) == object_id

    def _confirm_missing(self, kind: Kind, object_id: str) -> bool:
        try:
            if kind is Kind.INBOUND_TRUNK:
                self.livekit.get_inbound_trunk(object_id)
            elif kind is Kind.OUTBOUND_TRUNK:
                self.livekit.get_outbound_trunk(object_id)
            else:
                return not self.livekit.list_dispatch_rules(rule_ids=[object_id])
        except LiveKitNotFound:
            return True
        return False

    # --- drift --------------------------------------------------------------------------

    def _drift(self, obj: _LiveKitObject, record: PhoneNumberRecord,
               report: Report) -> list[FieldDrift]:
        if isinstance(obj, InboundTrunk):
            return _inbound_drift(obj, record)
        if isinstance(obj, OutboundTrunk):
            return self._outbound_drift(obj, record, report)
        return _rule_drift(obj, record)

    def _outbound_drift(self, trunk: OutboundTrunk, record: PhoneNumberRecord,
                        report: Report) -> list[FieldDrift]:
        drift: list[FieldDrift] = []
        _compare(drift, "address", record.outbound_pstn, trunk.address)
        _compare(drift, "numbers", [record.number], list(trunk.numbers))
        expected_transport = SIPTransport(f"SIP_TRANSPORT_{record.transport.value.upper()}")
        _compare(drift, "transport", expected_transport.value, trunk.transport.value)
        _compare(drift, "auth_username", record.auth_user_name, trunk.auth_username)
        if self.vault is None:
            _warn_once(report, "passwords were not compared: TRUNKLINE_SECRET_KEYS is not set")
            return drift
        try:
            expected = self.vault.decrypt(record.auth_password_ciphertext)
        except VaultError:
            _warn_once(report, "some stored passwords cannot be decrypted with "
                               "TRUNKLINE_SECRET_KEYS; they were not compared")
            return drift
        actual = trunk.auth_password.get_secret_value()
        if not hmac.compare_digest(expected.encode(), actual.encode()):
            drift.append(FieldDrift("auth_password", secret=True))
        return drift

    # --- deletion -----------------------------------------------------------------------

    def delete_orphans(self, report: Report | None = None) -> list[Deletion]:
        """Delete the orphans of `report` (a fresh run when None), rules before trunks.

        Raises TooManyDeletions when there are more than `max_deletions` orphans.
        """
        report = report if report is not None else self.run()
        orphans = report.orphans
        if len(orphans) > self.max_deletions:
            raise TooManyDeletions(len(orphans), self.max_deletions)
        if not orphans:
            return []
        # Read again: a record written since the report (a replay that adopted the object,
        # a number of another tag) makes its objects owned.
        referenced = {object_id for record in self._records()
                      for object_id in record_ids(record).values()}
        by_number: dict[str | None, list[Finding]] = {}
        for orphan in orphans:
            by_number.setdefault(orphan.number, []).append(orphan)
        done: list[Deletion] = []
        for number, group in by_number.items():
            group.sort(key=lambda f: _DELETE_ORDER[f.kind])
            with self._number_lock(number) as locked:
                for orphan in group:
                    if not locked:
                        done.append(Deletion(orphan, False, f"{number} is locked by a running "
                                                            "job; run reconcile again later"))
                        continue
                    done.append(self._delete_one(orphan, referenced))
        # Report rules first overall too, in the order they were handled within a number.
        done.sort(key=lambda d: _DELETE_ORDER[d.finding.kind])
        return done

    @contextlib.contextmanager
    def _number_lock(self, number: str | None) -> Iterator[bool]:
        if not number:
            yield True
            return
        token = f"reconcile:{uuid.uuid4().hex}"
        if not self.store.acquire_number_lock(number, token, LOCK_SECONDS):
            yield False
            return
        try:
            yield True
        finally:
            self.store.release_number_lock(number, token)

    def _delete_one(self, orphan: Finding, referenced: set[str]) -> Deletion:
        # Checked again under the number lock: a job for the number may have been submitted,
        # or this one replayed, since the report.
        number = orphan.number
        busy = {number} if number and self.store.jobs_in_flight(number) else set()
        try:
            job = self.store.get(orphan.job_id) if orphan.job_id else None
        except UnreadableRecord:
            return Deletion(orphan, False, "its job record does not load; left alone")
        if self._orphan_reason(orphan.kind, orphan.livekit_id, job, orphan.number, busy=busy,
                               referenced=referenced) in (None, "in_flight"):
            return Deletion(orphan, False, "no longer an orphan (its job or record changed)")
        if orphan.kind is Kind.DISPATCH_RULE:
            try:
                self.livekit.delete_dispatch_rule(orphan.livekit_id)
            except LiveKitNotFound:
                return Deletion(orphan, True, "already gone")
        else:
            self.livekit.delete_trunk(orphan.livekit_id)  # unknown ids answer 200
        log.info("reconcile deleted %s %s (job %s, %s)", orphan.kind.value, orphan.livekit_id,
                 orphan.job_id, orphan.reason)
        return Deletion(orphan, True, "deleted")


def _finding(category: Category, kind: Kind, object_id: str, *, record: PhoneNumberRecord,
             reason: str, fields: list[FieldDrift] | None = None) -> Finding:
    return Finding(
        category=category, kind=kind, livekit_id=object_id, number=record.number,
        job_id=record.job_id, org_id=record.org_id, reason=reason,
        phone_number_id=record.phone_number_id, fields=tuple(fields or ()),
    )


def _compare(drift: list[FieldDrift], name: str, expected: Any, actual: Any) -> None:
    if expected != actual:
        drift.append(FieldDrift(name, expected, actual))


def _warn_once(report: Report, message: str) -> None:
    if message not in report.warnings:
        report.warnings.append(message)


def _inbound_drift(trunk: InboundTrunk, record: PhoneNumberRecord) -> list[FieldDrift]:
    drift: list[FieldDrift] = []
    _compare(drift, "numbers", [record.number], list(trunk.numbers))
    _compare(drift, "allowed_addresses", sorted(record.allowed_addresses),
             sorted(trunk.allowed_addresses))
    return drift


def _rule_drift(rule: DispatchRule, record: PhoneNumberRecord) -> list[FieldDrift]:
    drift: list[FieldDrift] = []
    _compare(drift, "trunk_ids", [record.inbound_trunk_id], list(rule.trunk_ids))
    individual = rule.rule.dispatch_rule_individual
    if individual is None:
        actual_kind = ("dispatch_rule_direct" if rule.rule.dispatch_rule_direct is not None
                       else "dispatch_rule_callee" if rule.rule.dispatch_rule_callee is not None
                       else None)
        drift.append(FieldDrift("rule", "dispatch_rule_individual", actual_kind))
    else:
        _compare(drift, "room_prefix", record.room_prefix, individual.room_prefix)
    expected_agents = [record.agent_name] if record.agent_name else []
    actual_agents = [a.agent_name for a in rule.room_config.agents] if rule.room_config else []
    _compare(drift, "agents", expected_agents, actual_agents)
    return drift


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the latest report, kept in Redis -------------------------------------------------------


def latest_report_key(keys: Keys) -> str:
    return f"{keys.prefix}:reconcile:latest"


def save_report(store: JobStore, report: Report, *, source: str,
                deletions: Sequence[Deletion] = (),
                clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Keep `report` as the latest one (replacing the previous) and return what was kept.

    The document is `Report.as_json()` (findings name ids, numbers, jobs and field names;
    a changed password only as `secret: true`), with `source` (`beat`, `cli`), `saved_at`
    and, after `--delete`, what was deleted. Each list keeps its first MAX_SAVED_FINDINGS
    entries; `summary` keeps the full counts and `truncated` says which lists were cut.
    """
    document = report.as_json()
    if deletions:
        document["deleted"] = [d.as_json() for d in deletions]
    truncated = [name for name in ("orphans", "missing", "drifted", "deleted")
                 if len(document.get(name, ())) > MAX_SAVED_FINDINGS]
    for name in truncated:
        document[name] = document[name][:MAX_SAVED_FINDINGS]
    document["truncated"] = truncated
    document["source"] = source
    document["saved_at"] = datetime.fromtimestamp(clock(), UTC).isoformat()
    store.redis.set(latest_report_key(store.keys), json.dumps(document, separators=(",", ":")))
    return document


def scheduled_reconcile(livekit: LiveKitSIP, store: JobStore, vault: Vault) -> dict[str, int]:
    """The beat task's work: a report, exported as metrics and kept as the latest one."""
    report = Reconciler(livekit, store, vault).run()
    save_report(store, report, source="beat")
    counts = report.counts()
    for kind, value in counts.items():
        RECONCILE_FINDINGS.labels(kind).set(value)
    return counts


def latest_report(redis: Redis, keys: Keys | None = None) -> dict[str, Any] | None:
    """The last saved report (`save_report`'s document), or None when none was saved or it
    does not load (a report is advice, never worth failing a page over)."""
    raw = redis.get(latest_report_key(keys or Keys()))
    if raw is None:
        return None
    try:
        document = json.loads(cast(bytes, raw))
    except ValueError:
        log.error("the saved reconcile report does not load; run reconcile again")
        return None
    return document if isinstance(document, dict) else None
