"""Adversarial input on the real stack: schemathesis, from /openapi.json, against a real
`trunkline api` process and a real worker: at least 10,000 generated requests.

Every request carries a valid API key and secret, so validation is exercised past
authentication; most webhook deliveries are signed, so they get past verification. A canary
SIP password is written into generated bodies wherever a password field fits. After the run:

* no answer was a 5xx and no request failed at the network level;
* every job in the store (`trunkline:job:*`) was named by an answer: a 2xx, or the failure
  answer of a job that ran and failed (its own error code and `error.job_id`). A request the
  API rejected made no job;
* every job ended, none failed because of its input (only by losing its number to a release
  of the run), and LiveKit holds exactly the objects the phone-number records name;
* the canary is in no answer, not in the API's log or the worker's log, not on the results
  stream and nowhere in a dump of the Redis database, while it did reach LiveKit.

The run is seeded (no example database), so its requests are the same from run to run up to
the order the worker threads send them in. It takes about 4 minutes on an otherwise idle
2-core machine; it is CPU-bound (schemathesis' generation, and the API's PBKDF2 check of the
API secret on every request), so it takes longer on a busy one.

Schemathesis generates in Python threads (one core at most per process), so the operations are
split between two schemathesis processes that run at once. This module is also their hooks
file: they load it through SCHEMATHESIS_HOOKS, and the hooks, installed only when RECORD_ENV
names a file, record one JSON line per request sent (the request count comes from there).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from producers.keys import ApiKeys
from producers.webhooks import sign
from tests.integration.apiserver import job_keys, start_api, wait_for_job
from tests.integration.conftest import (
    REPO,
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    everything_on_livekit,
    redis_dump,
)
from worker.config import Settings
from worker.contract import parse_request
from worker.livekit import LiveKitSIP
from worker.records import Job, JobState, StoredRequest, new_job_id
from worker.store import RESULTS_STREAM, JobStore
from worker.vault import Vault

CANARY = "canary-Adv-Pw-3b7d5e91"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"trunkline-adversarial-webhook-key!").decode()
WEBHOOK_SOURCE = "crm"
ORG = "org_adv"
HOOK_ORG = "org_adv_hooks"
CREATE = "/api/sio/createSipTrunkDispatch"
RECORD_ENV = "TRUNKLINE_ADVERSARIAL_RECORD"
MIN_REQUESTS = 10_000
# Test cases per operation in the fuzzing phase. Seven operations take generated input (the
# others have none, or only a fixed parameter); with the examples and coverage phases this
# comes to about 10,500 requests. The variable can raise it, never lower it: fewer cases
# cannot reach MIN_REQUESTS, and a run that cannot pass should not take minutes to say so.
EXAMPLES_FLOOR = 1400
EXAMPLES = os.environ.get("TRUNKLINE_ADVERSARIAL_EXAMPLES", str(EXAMPLES_FLOOR))
SEED = os.environ.get("TRUNKLINE_ADVERSARIAL_SEED", "20261127")
OPERATIONS = {
    "POST /api/sio/createSipTrunkDispatch", "POST /api/sip/createSipTrunkDispatch",
    "GET /api/phone-numbers", "GET /api/phone-numbers/{number}",
    "PATCH /api/phone-numbers/{number}", "DELETE /api/phone-numbers/{number}",
    "GET /api/jobs/{job_id}", "POST /webhooks/crm/{source}", "GET /healthz", "GET /readyz",
}
# Why an accepted job may fail here: a release of the run got to its number first.
RACES = {"number_not_found"}
# Hostile values the fuzzer seldom builds, put into every third API request (not webhooks),
# round-robin over what fits the operation. Each must be refused with a 4xx naming it. Header
# values stay printable Latin-1: the HTTP client itself refuses anything else before sending.
HOSTILE_PREFER = ["wait=\u00b2", "wait=abc", "respond-async,,", "wait=-1", "wait=1.5", '"',
                  "=x", "respond async"]
HOSTILE_IDEMPOTENCY_KEYS = ["k" * 300, "cl\u00e9", "a b\tc"]
# (text/plain and form-urlencoded without a charset are accepted on purpose: curl -d.)
HOSTILE_CONTENT_TYPES = ["application/json; charset=utf-16", "application/xml",
                         "application/x-www-form-urlencoded; charset=latin1"]
HOSTILE_CURSORS = [base64.urlsafe_b64encode(text.encode()).decode().rstrip("=") for text in (
    "nan +15551234567", "1e999 +15551234567", "1.0 15551234567", "1.0 +1\u0661\u0662")
] + ["%%%", "A" * 199]


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


HOSTILE_FIELDS: list[tuple[str, Any]] = [
    ("metadata", {"x": _nested(250)}), ("metadata", {"x": "\ud800"}),
    ("metadata", {f"k{i}": i for i in range(100)}), ("metadata", {"x": 2**70}),
    ("metadata", {"x": _nested(9)}), ("name", "Main\r\nOffice"), ("name", "\x1b[31mred"),
    ("name", "\ud83d"), ("authUserName", 'us"er'), ("authUserName", "a,b:c"),
    ("outboundPstn", "169.254.169.254"), ("outboundPstn", "[::ffff:127.0.0.1]:5060"),
    ("outboundPstn", "0x7f000001"), ("outboundPstn", "metadata.google.internal"),
]
# Two halves of about the same size, one schemathesis process each.
PARTS = {
    "intake": ("createSipTrunkDispatch", "createSipTrunkDispatchSip", "crmWebhook", "getJob",
               "healthz", "readyz"),
    "lifecycle": ("listPhoneNumbers", "getPhoneNumber", "updatePhoneNumber",
                  "releasePhoneNumber"),
}


# ------------------------------------------------------------------ inside schemathesis


def named_jobs(status: int, headers: dict[str, list[str]], body: Any) -> dict[str, list[str]]:
    """The job ids an answer names: accepted (a 2xx) or a job that ran and failed (else)."""
    named: list[str] = list(headers.get("trunkline-job-id", []))
    if isinstance(body, dict):
        data, error = body.get("data"), body.get("error")
        if isinstance(data, dict) and isinstance(data.get("job_id"), str):
            named.append(data["job_id"])
        if isinstance(error, dict) and isinstance(error.get("job_id"), str):
            named.append(error["job_id"])
    ids = sorted(set(named))
    return {"accepted": ids, "failed": []} if 200 <= status < 300 else {
        "accepted": [], "failed": ids}


def signup(serial: int) -> dict[str, Any]:
    """A valid CRM signup payload (a number of its own, the canary as its password)."""
    return {"type": "signup.created", "data": {
        **SEED_REQUEST, "name": f"Adversarial signup {serial}",
        "number": f"+1555{7000000 + serial:07d}", "authPassword": CANARY}}


def make_hostile(case: Any, serial: int) -> str | None:
    """Put one hostile value into `case`; returns what it was (None if nothing fitted)."""
    method, path = case.method.upper(), case.operation.path
    choices: list[str] = []
    if method in ("POST", "PATCH", "DELETE"):
        choices += ["prefer", "idempotency-key"]
    if method in ("POST", "PATCH") and isinstance(case.body, dict):
        choices += ["content-type", "field", "field", "field"]
    if method == "GET" and path == "/api/phone-numbers":
        choices += ["cursor"]
    if not choices:
        return None
    kind = choices[serial % len(choices)]
    pick = serial // len(choices)
    if kind == "cursor":
        case.query = {**(case.query or {}), "cursor": HOSTILE_CURSORS[pick % len(
            HOSTILE_CURSORS)]}
        return kind
    if kind == "field":
        name, value = HOSTILE_FIELDS[pick % len(HOSTILE_FIELDS)]
        case.body[name] = value
        return f"field:{name}"
    header, values = {"prefer": ("Prefer", HOSTILE_PREFER),
                      "idempotency-key": ("Idempotency-Key", HOSTILE_IDEMPOTENCY_KEYS),
                      "content-type": ("Content-Type", HOSTILE_CONTENT_TYPES)}[kind]
    case.headers = {**(case.headers or {}), header: values[pick % len(values)]}
    return kind


def _serialise_ast_parse() -> None:
    """One run here died of `SystemError: AST constructor recursion depth mismatch`, raised
    by CPython 3.11.7 in hypothesis' lambda-source parsing: the C AST builder keeps its
    recursion depth in state shared by all threads (CPython gh-106905), and every schemathesis
    worker thread parses sources. One parse at a time avoids it."""
    lock = threading.Lock()
    parse = ast.parse

    def serialised(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return parse(*args, **kwargs)

    ast.parse = serialised


def install_hooks(record_path: Path) -> None:  # pragma: no cover - runs inside schemathesis
    import schemathesis  # noqa: PLC0415 - only the schemathesis process needs it

    _serialise_ast_parse()
    lock = threading.Lock()
    counter: Counter[str] = Counter()
    hostile: dict[int, str] = {}  # id(case) -> what was put into it
    part = record_path.stem

    def tick(name: str) -> int:
        with lock:
            counter[name] += 1
            return counter[name]

    def write(line: dict[str, Any]) -> None:
        text = json.dumps(line) + "\n"
        with lock, record_path.open("a") as out:
            out.write(text)

    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        body = case.body
        if case.operation.path.startswith("/webhooks/"):
            serial = tick("webhook")
            if serial % 4 == 0:
                return  # sent as generated: with whatever signature headers were made up
            if serial % 4 == 1 and isinstance(body, dict):
                case.body = signup(serial)
            elif isinstance(body, dict):
                target = body["data"] if isinstance(body.get("data"), dict) else body
                target["authPassword"] = CANARY
            if case.media_type not in (None, "application/json"):
                return
            try:  # the bytes requests sends for `json=`
                raw = json.dumps(case.body, allow_nan=False).encode()
            except (TypeError, ValueError):
                return
            webhook_id, stamp = f"msg_{part}_{serial}", int(time.time())
            case.headers = {**(case.headers or {}), "webhook-id": webhook_id,
                            "webhook-timestamp": str(stamp),
                            "webhook-signature": sign(WEBHOOK_SECRET, webhook_id, stamp, raw)}
        else:
            if (isinstance(body, dict) and case.method.upper() in ("POST", "PATCH")
                    and tick("password") % 2 == 0):
                body["authPassword"] = CANARY
            serial = tick("hostile")
            if serial % 3 == 0 and (kind := make_hostile(case, serial // 3)) is not None:
                with lock:
                    hostile[id(case)] = kind

    def after_call(context: Any, case: Any, response: Any) -> None:
        text = response.content.decode("utf-8", "replace")
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        headers = {k.lower(): list(v) for k, v in response.headers.items()}
        sent = response.request.body or b""
        sent = sent if isinstance(sent, bytes) else str(sent).encode()
        error = body.get("error") if isinstance(body, dict) else None
        with lock:
            kind = hostile.pop(id(case), None)
        header = {"prefer": "Prefer", "idempotency-key": "Idempotency-Key",
                  "content-type": "Content-Type"}.get(kind or "")
        if header is not None and response.request.headers.get(header) != case.headers[header]:
            kind = None  # the client sent something else: this request proves nothing hostile
        write({
            "hostile": kind,
            "method": case.method.upper(), "path": case.operation.path,
            "status": response.status_code, "elapsed": response.elapsed,
            "code": error.get("code") if isinstance(error, dict) else None,
            **named_jobs(response.status_code, headers, body),
            "canary_sent": CANARY.encode() in sent,
            "canary_answered": CANARY in text or CANARY in json.dumps(headers),
            "body": text[:500] if response.status_code >= 500 or CANARY in text else "",
        })

    def after_network_error(context: Any, case: Any, request: Any) -> None:
        with lock:
            hostile.pop(id(case), None)
        write({"hostile": None, "method": case.method.upper(), "path": case.operation.path,
               "status": 0,
               "elapsed": 0.0, "code": "network_error", "accepted": [], "failed": [],
               "canary_sent": False, "canary_answered": False, "body": ""})

    schemathesis.hook("before_call")(before_call)
    schemathesis.hook("after_call")(after_call)
    schemathesis.hook("after_network_error")(after_network_error)


if os.environ.get(RECORD_ENV):  # pragma: no cover - only inside a schemathesis process
    install_hooks(Path(os.environ[RECORD_ENV]))


# ------------------------------------------------------------------ the test

# Every wait of the test is bounded, and the bounds add up to the cap:
#   setup     120 s  worker ready 30 + API up 30 + seed request 30 + seed job 30
#   fuzzing   720 s  both schemathesis processes, one shared deadline (CPU-bound, so
#                    slower on a loaded machine)
#   drain     150 s  the worker finishes the jobs the run queued
#   teardown   70 s  schemathesis killed 2 x 10 + API stopped 20 + worker stopped 30
#   after      60 s  a normal job, and an overdue one the sweeper (every 15 s) must re-send
#   checks     20 s  scans of Redis, LiveKit and the logs (a few seconds in practice)
#   total    1140 s  = the cap. The whole test takes about 4 minutes on an idle machine.
SETUP_WAIT, FUZZ_WAIT, DRAIN_WAIT, AFTER_WAIT = 30, 720, 150, 30
pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("clean"), pytest.mark.timeout(1140)]


def all_jobs(db: redis.Redis) -> dict[str, Job]:
    client: Any = db
    jobs: dict[str, Job] = {}
    for key in job_keys(db):
        raw = client.get(key)
        if raw is not None:
            job = Job.model_validate_json(raw)
            jobs[job.job_id] = job
    return jobs


def lost_message_job(db: redis.Redis, stack: Stack, number: str) -> str:
    """A valid job stored without its message (as if the broker lost it), already overdue."""
    settings = Settings.from_env(stack.env())
    vault = Vault(settings.secret_keys)
    parsed = parse_request({**SEED_REQUEST, "number": number})
    job = Job(job_id=new_job_id(), org_id=ORG, number=parsed.number,
              request=StoredRequest.seal(parsed, vault),
              request_fingerprint=vault.fingerprint(parsed.fingerprint_material()))
    job_id, _ = JobStore(db).create(job, deadline=time.time() - 1)
    return job_id


def wait_until(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(1)


def test_schemathesis_10k_requests_no_5xx_no_job_from_a_rejection_no_canary(
    stack: Stack, tmp_path: Path, worker_factory: WorkerFactory, redis_db: redis.Redis,
    livekit: LiveKitSIP,
) -> None:
    """>= 10,000 generated requests over every operation: no 5xx, no job for a rejected
    request, the canary password in no answer, log, event or Redis value."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    assert schemathesis.exists(), "schemathesis is a dev dependency (pip install -e '.[dev]')"
    if not EXAMPLES.isdigit() or int(EXAMPLES) < EXAMPLES_FLOOR:
        pytest.fail(f"TRUNKLINE_ADVERSARIAL_EXAMPLES={EXAMPLES!r}: at least {EXAMPLES_FLOOR} "
                    f"test cases per operation are needed for {MIN_REQUESTS} requests")
    started = time.monotonic()
    # A 120 s visibility timeout makes the worker's sweeper pass every 15 s (checked after).
    worker = worker_factory(concurrency=2, TRUNKLINE_VISIBILITY_TIMEOUT="120")
    sources = {WEBHOOK_SOURCE: {"secret": WEBHOOK_SECRET, "org_id": HOOK_ORG,
                                "default_region": "US"}}
    api = start_api(stack, tmp_path / "api.log", TRUNKLINE_API_WAIT_SECONDS="0.5",
                    TRUNKLINE_API_RATE_LIMIT="0", TRUNKLINE_WEBHOOK_SOURCES=json.dumps(sources))
    key = ApiKeys(redis_db).create(ORG)
    headers = {"X-API-KEY": key.api_key, "X-API-SECRET": key.api_secret}
    runs: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    try:
        # A provisioned number and a real job, so that the number and job operations get
        # past 404 (until the fuzzer releases the number).
        seeded = httpx.post(api.url + CREATE, json={**SEED_REQUEST, "authPassword": CANARY},
                            headers={**headers, "Prefer": "respond-async"}, timeout=SETUP_WAIT)
        assert seeded.status_code == 202, seeded.text
        seed_job = seeded.json()["data"]["job_id"]
        with httpx.Client(base_url=api.url, timeout=10) as client:
            seed_state = wait_for_job(client, headers, seed_job, timeout=SETUP_WAIT)["state"]
            assert seed_state == "succeeded"
        config = tmp_path / "schemathesis.toml"
        config.write_text(f'[parameters]\nsource = "{WEBHOOK_SOURCE}"\n'
                          f'"path.number" = "{SEED_REQUEST["number"]}"\n')
        fuzz_started = time.monotonic()
        for part, operations in PARTS.items():
            record = tmp_path / f"{part}.jsonl"
            record.touch()
            selection = [arg for op in operations for arg in ("--include-operation-id", op)]
            runs[part] = (subprocess.Popen(
                [str(schemathesis), "--config-file", str(config), "run",
                 f"{api.url}/openapi.json", *selection,
                 "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing",
                 "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "4",
                 "--request-timeout", "30", "--no-color", "--generation-database", "none",
                 "--suppress-health-check", "all", "--generation-with-security-parameters",
                 "false", "--continue-on-failure",
                 "-H", f"X-API-KEY: {key.api_key}", "-H", f"X-API-SECRET: {key.api_secret}"],
                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, RECORD_ENV: str(record), "SCHEMATHESIS_HOOKS": __file__,
                     "PYTHONPATH": str(REPO)}), record)
        outputs = {part: proc.communicate(timeout=max(1.0, fuzz_started + FUZZ_WAIT
                                                      - time.monotonic()))[0]
                   for part, (proc, _) in runs.items()}
        fuzz_seconds = time.monotonic() - fuzz_started
        lines = [json.loads(line) for _, record in runs.values()
                 for line in record.read_text().splitlines()]
        # Let the worker finish what the run queued, so its log and the results stream are
        # complete before they are searched.
        wait_until(lambda: all(j.state.terminal for j in all_jobs(redis_db).values()),
                   DRAIN_WAIT)
        jobs = all_jobs(redis_db)
        # The pipeline still works for everyone: a normal request afterwards succeeds, and
        # the sweeper still re-sends an overdue job whose message was lost.
        normal = httpx.post(api.url + CREATE, json={**SEED_REQUEST, "number": "+15553339999"},
                            headers=headers, timeout=AFTER_WAIT)
        assert normal.status_code == 200, normal.text
        lost = lost_message_job(redis_db, stack, "+15553339998")
        wait_until(lambda: (job := JobStore(redis_db).get(lost)) is not None
                   and job.state is JobState.SUCCEEDED, AFTER_WAIT)
        assert (after := JobStore(redis_db).get(lost)) is not None
        assert after.state is JobState.SUCCEEDED, after
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        api.stop()
    worker.stop()

    statuses = Counter(line["status"] for line in lines)
    per_operation = Counter(f"{line['method']} {line['path']}" for line in lines)
    per_operation = Counter({op: n for op, n in per_operation.items() if op in OPERATIONS})
    report = "\n".join(f"--- {part} (exit {proc.returncode})\n{outputs[part][-5000:]}"
                       for part, (proc, _) in runs.items())
    print(report)
    print(f"requests={len(lines)} in {fuzz_seconds:.0f}s; statuses {sorted(statuses.items())}")
    print(f"per operation: {dict(per_operation)}")
    print(f"jobs={len(jobs)}: {Counter((j.kind.value, j.state.value) for j in jobs.values())}")

    # At least 10,000 generated requests, on every operation.
    assert len(lines) >= MIN_REQUESTS, report
    assert set(per_operation) == OPERATIONS, per_operation
    # No 5xx, no request that failed at the network level, no failed schemathesis check.
    server_errors = [line for line in lines if line["status"] >= 500 or line["status"] == 0]
    assert not server_errors, server_errors[:20]
    assert all(proc.returncode == 0 for proc, _ in runs.values()), report
    assert "Traceback" not in api.log()

    # The hostile values went out, on every kind, and each was refused with a 4xx.
    hostile = [line for line in lines if line.get("hostile")]
    kinds = Counter(str(line["hostile"]).split(":")[0] for line in hostile)
    print(f"hostile requests: {len(hostile)} {dict(kinds)}")
    assert len(hostile) >= 1000, kinds
    assert set(kinds) == {"prefer", "idempotency-key", "content-type", "field", "cursor"}, kinds
    let_through = [line for line in hostile if not 400 <= line["status"] < 500]
    assert not let_through, let_through[:10]

    # Validation was exercised past authentication, and webhooks past their signatures.
    refused = Counter(line["code"] for line in lines
                      if line["status"] == 401 and not line["path"].startswith("/webhooks"))
    assert not refused, refused
    verified = Counter(line["code"] for line in lines if line["path"].startswith("/webhooks")
                       and line["code"] not in ("missing_signature", "invalid_signature",
                                                "stale_webhook"))
    assert verified.total() >= 100, verified

    # Every job was named by an answer: accepted, or a job that ran and failed. A request the
    # API rejected (any other 4xx) made none.
    accepted = {job_id for line in lines for job_id in line["accepted"]}
    ran_and_failed = {(job_id, line["code"]) for line in lines for job_id in line["failed"]}
    unexplained = set(jobs) - accepted - {seed_job} - {job_id for job_id, _ in ran_and_failed}
    assert not unexplained, [
        jobs[j].model_dump(mode="json", include={"job_id", "kind", "state", "source", "number"})
        for j in sorted(unexplained)[:10]]
    for job_id, code in ran_and_failed:
        job = jobs.get(job_id)
        assert job is not None, f"an answer named job {job_id}, which is not in the store"
        assert job.state is JobState.FAILED and job.error is not None, job
        assert job.error.code == code, (job.job_id, job.error, code)
    print(f"jobs accepted={len(accepted)}, answered as failed after running="
          f"{len(ran_and_failed)}, unfinished={sum(not j.state.terminal for j in jobs.values())}")
    # Every accepted job ended, and none failed because of its input: accepted input neither
    # breaks the worker nor is refused by LiveKit. (A job may still lose a race for its number
    # to another request of the run.)
    assert all(job.state.terminal for job in jobs.values()), Counter(
        job.state.value for job in jobs.values())
    failures = Counter(job.error.code for job in jobs.values()
                       if job.state is JobState.FAILED and job.error is not None)
    assert set(failures) <= RACES, failures
    db: Any = redis_db
    assert "Traceback" not in worker.read_log()
    # LiveKit holds exactly what the phone-number records name: creates, updates and releases
    # racing on the same numbers left no orphan and lost no object.
    store = JobStore(redis_db)
    records = [store.get_number(k.decode().removeprefix("trunkline:number:"))
               for k in db.scan_iter(match="trunkline:number:*", count=500)]
    assert everything_on_livekit(livekit) == {
        "inbound": sorted(r.inbound_trunk_id for r in records if r),
        "outbound": sorted(r.outbound_trunk_id for r in records if r),
        "rules": sorted(r.dispatch_rule_id for r in records if r)}

    # The canary went in, and came out nowhere but on LiveKit.
    assert sum(line["canary_sent"] for line in lines) >= len(lines) // 10
    leaked = [line for line in lines if line["canary_answered"]]
    assert not leaked, leaked[:5]
    assert CANARY not in api.log()
    assert CANARY not in worker.read_log()
    events = db.xrange(RESULTS_STREAM)
    assert events, "no job finished: the scans below prove nothing"
    assert not [fields for _, fields in events if CANARY.encode() in b"".join(fields.values())]
    assert CANARY.encode() not in redis_dump(redis_db)
    holding = [t.sip_trunk_id for t in livekit.list_outbound_trunks()
               if t.auth_password.get_secret_value() == CANARY]
    assert len(holding) >= 10, "the canary hardly reached LiveKit: the scans prove little"
    print(f"outbound trunks holding the canary on LiveKit: {len(holding)}; "
          f"test took {time.monotonic() - started:.0f}s")
