"""The HTTP producer end to end: a real uvicorn on loopback -> Redis -> a real worker ->
the real livekit-server. Requests are real HTTP (httpx, curl, schemathesis)."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from producers.keys import ApiKeys
from producers.webhooks import sign
from tests.integration.apiserver import (
    ApiServer,
    assert_error,
    job_keys,
    start_api,
    wait_for_job,
)
from tests.integration.conftest import (
    CANARY_PASSWORD,
    REPO,
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    everything_on_livekit,
    redis_dump,
)
from worker.livekit import LiveKitSIP
from worker.store import RESULTS_STREAM

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

CREATE = "/api/sio/createSipTrunkDispatch"
SEED_FILE = REPO.parent / "shared" / "seed" / "createSipTrunkDispatch.txt"
# The seed's curl example, byte for byte (the test checks it against SEED_FILE when present).
SEED_CURL = """curl -X POST "https://api.zudu.ai/api/sio/createSipTrunkDispatch" \\
-H "X-API-KEY: sk_Abc123Def456..." \\
-H "X-API-SECRET: s3cr3t_Xyz789..." \\
-d '{
"name": "Main Office SIP Trunk",
"number": "+15551234567",
"outboundPstn": "sip.gateway.com",
"authUserName": "sip_user",
"authPassword": "sip_password"
}'"""
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
RATE_LIMIT = 40
OK_STATUSES = {200, 202}


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One API for the module: webhooks from source `crm`, a limit of 40 requests a minute."""
    sources = {"crm": {"secret": WEBHOOK_SECRET, "org_id": "org_crm", "default_region": "US"}}
    server = start_api(stack, tmp_path_factory.mktemp("api") / "api.log",
                       TRUNKLINE_API_RATE_LIMIT=str(RATE_LIMIT),
                       TRUNKLINE_WEBHOOK_SOURCES=json.dumps(sources))
    yield server
    server.stop()


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=60) as client:
        yield client


@pytest.fixture
def api_keys(redis_db: redis.Redis) -> ApiKeys:
    return ApiKeys(redis_db)


Credentials = Callable[[str], dict[str, str]]


@pytest.fixture
def creds(api_keys: ApiKeys) -> Credentials:
    """X-API-KEY/X-API-SECRET headers of a fresh key for an organisation."""
    made: dict[str, dict[str, str]] = {}

    def make(org: str) -> dict[str, str]:
        if org not in made:
            key = api_keys.create(org)
            made[org] = {"X-API-KEY": key.api_key, "X-API-SECRET": key.api_secret}
        return made[org]

    return make


# --------------------------------------------------------------------------- the seed


def test_seed_curl_verbatim_creates_an_inbound_trunk(
    api: ApiServer, stack: Stack, worker_factory: WorkerFactory, livekit: LiveKitSIP,
) -> None:
    """The seed's curl example, run by curl against the API, answers success with a trunk id
    that exists on LiveKit (the key comes from `trunkline keys create --json`)."""
    if SEED_FILE.exists():
        assert SEED_CURL in SEED_FILE.read_text(), "the seed's curl example changed"
    assert shutil.which("curl"), "curl is needed for this test"
    worker_factory()
    created = subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", "keys", "create", "--org",
         "org_seed", "--json"], cwd=REPO, env=stack.env(), capture_output=True, text=True,
        check=True)
    key = json.loads(created.stdout)
    assert set(key) == {"api_key", "api_secret", "org_id"}
    assert key["api_key"].startswith("sk_") and key["org_id"] == "org_seed"
    command = (SEED_CURL.replace("https://api.zudu.ai", api.url)
               .replace("sk_Abc123Def456...", key["api_key"])
               .replace("s3cr3t_Xyz789...", key["api_secret"]))
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True,
                         timeout=120)
    body = json.loads(ran.stdout)
    assert body["status"] == "success", body
    assert body["message"] == "Phone number created successfully"
    assert body["error"] is None
    assert re.fullmatch(r"ST_\w+", body["data"])
    inbound = livekit.get_inbound_trunk(body["data"])
    assert inbound.numbers == ["+15551234567"]
    assert inbound.name == "Main Office SIP Trunk"
    on_livekit = everything_on_livekit(livekit)
    assert [len(v) for v in on_livekit.values()] == [1, 1, 1]

    listed = subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", "keys", "list", "--json"],
        cwd=REPO, env=stack.env(), capture_output=True, text=True, check=True)
    assert key["api_secret"] not in listed.stdout
    assert [k["api_key"] for k in json.loads(listed.stdout)] == [key["api_key"]]
    revoked = subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", "keys", "revoke",
         key["api_key"], "--json"], cwd=REPO, env=stack.env(), capture_output=True, text=True,
        check=True)
    assert json.loads(revoked.stdout)["revoked"] is True
    again = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    assert json.loads(again.stdout)["error"]["code"] == "invalid_credentials"


# --------------------------------------------------------------------------- async, jobs


def test_async_job_then_poll_and_cross_org_404(
    http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    redis_db: redis.Redis,
) -> None:
    """respond-async: 202 at once with Location; the job is readable by its organisation
    only, never with its password; a short wait with no worker answers 202 as well."""
    mine = creds("org_a")
    body = {**SEED_REQUEST, "authPassword": CANARY_PASSWORD}
    timed_out = http.post(CREATE, json=body, headers={**mine, "Prefer": "wait=1"})
    assert timed_out.status_code == 202, timed_out.text
    job_id = timed_out.json()["data"]["job_id"]
    assert timed_out.headers["location"] == f"/api/jobs/{job_id}"

    replay = http.post(CREATE, json=body, headers={**mine, "Prefer": "respond-async"})
    assert_error(replay, 409, "setup_in_flight")  # same number, no key: refused, not queued
    assert len(job_keys(redis_db)) == 1

    other = http.get(f"/api/jobs/{job_id}", headers=creds("org_b"))
    assert_error(other, 404, "job_not_found")
    assert CANARY_PASSWORD not in other.text

    worker_factory()
    data = wait_for_job(http, mine, job_id)
    assert data["state"] == "succeeded", data
    assert data["org_id"] == "org_a"
    assert data["request"]["has_auth_password"] is True
    assert data["result"]["inbound_trunk_id"].startswith("ST_")
    assert all(step["status"] == "done" for step in data["steps"].values())
    view = http.get(f"/api/jobs/{job_id}", headers=mine).text
    assert CANARY_PASSWORD not in view
    assert "ciphertext" not in view

    accepted = http.post(CREATE, json={**SEED_REQUEST, "number": "+15551234599"},
                         headers={**mine, "Prefer": "respond-async"})
    assert accepted.status_code == 202
    assert accepted.headers["preference-applied"] == "respond-async"
    assert accepted.json()["data"]["job_id"] != job_id


# --------------------------------------------------------------------------- error classes


def test_each_error_class_and_no_job_for_a_rejection(
    api: ApiServer, http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    redis_db: redis.Redis, livekit: LiveKitSIP,
) -> None:
    """400 (fields, JSON), 401, 404, 409 (taken, other org), 413, 415, 422 (key reuse),
    429 — each with the error envelope, none creating a job."""
    a, b = creds("org_a"), creds("org_b")
    error = assert_error(http.post(CREATE, json={"number": "15551234567",
                                                 "outboundPstn": "sip:u@h"}, headers=a),
                         400, "validation_error")
    assert {d["field"] for d in error["details"]} == {
        "name", "number", "outboundPstn", "authUserName", "authPassword"}
    assert_error(http.post(CREATE, content=b"{oops", headers=a), 400, "malformed_json")
    assert_error(http.post(CREATE, json=SEED_REQUEST), 401, "missing_credentials")
    assert_error(http.post(CREATE, json=SEED_REQUEST,
                           headers={**a, "X-API-SECRET": "s3cr3t_wrong"}),
                 401, "invalid_credentials")
    assert_error(http.get("/api/jobs/job_" + "0" * 32, headers=a), 404, "job_not_found")
    assert_error(http.get("/no/such/route", headers=a), 404, "not_found")
    big = json.dumps({**SEED_REQUEST, "metadata": {"x": "y" * (1024 * 1024)}})
    assert_error(http.post(CREATE, content=big, headers=a), 413, "payload_too_large")
    assert_error(http.post(CREATE, content=json.dumps(SEED_REQUEST),
                           headers={**a, "Content-Type": "application/xml"}),
                 415, "unsupported_media_type")
    assert job_keys(redis_db) == []

    worker_factory()
    first = http.post(CREATE, json=SEED_REQUEST, headers={**a, "Idempotency-Key": "k1"})
    assert first.status_code == 200, first.text
    changed = http.post(CREATE, json={**SEED_REQUEST, "name": "Other"},
                        headers={**a, "Idempotency-Key": "k1"})
    assert_error(changed, 422, "idempotency_key_reused")
    mine_again = http.post(CREATE, json=SEED_REQUEST, headers=a)
    assert_error(mine_again, 409, "number_already_provisioned")
    theirs = http.post(CREATE, json=SEED_REQUEST, headers=b)
    error = assert_error(theirs, 409, "number_owned_by_other_org")
    assert error["field"] == "number"
    assert len(job_keys(redis_db)) == 1
    assert [len(v) for v in everything_on_livekit(livekit).values()] == [1, 1, 1]

    limited = creds("org_limited")
    statuses = [http.get("/api/jobs/job_" + "0" * 32, headers=limited).status_code
                for _ in range(RATE_LIMIT + 1)]
    assert statuses == [404] * RATE_LIMIT + [429]
    refused = http.post(CREATE, json={**SEED_REQUEST, "number": "+15551230000"},
                        headers=limited)
    error = assert_error(refused, 429, "rate_limited")
    assert error["retryable"] is True
    assert int(refused.headers["retry-after"]) >= 1
    assert len(job_keys(redis_db)) == 1
    assert CANARY_PASSWORD not in api.log()
    assert "Traceback" not in api.log()


def test_redis_unreachable_is_503(stack: Stack, tmp_path: Path) -> None:
    """An API whose Redis is down answers 503 redis_unavailable (retryable), and not ready."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    server = start_api(stack, tmp_path / "api-down.log", REDIS_URL=f"redis://127.0.0.1:{dead}/0")
    try:
        headers = {"X-API-KEY": "sk_" + "0" * 32, "X-API-SECRET": "s3cr3t_x"}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            error = assert_error(client.post(CREATE, json=SEED_REQUEST, headers=headers),
                                 503, "redis_unavailable")
            assert error["retryable"] is True
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["data"]["redis"].startswith("unreachable")
            assert ready.json()["data"]["livekit"] == "ok"
            assert client.get("/healthz").status_code == 200
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_failed_authentications_are_limited(
    stack: Stack, tmp_path: Path, creds: Credentials, redis_db: redis.Redis,
) -> None:
    """Past TRUNKLINE_API_AUTH_FAILURE_LIMIT failures from one address, the real API answers
    429 without checking secrets, even the right one, and says when to retry."""
    server = start_api(stack, tmp_path / "api-auth.log", TRUNKLINE_API_AUTH_FAILURE_LIMIT="3")
    try:
        good = creds("org_a")
        wrong = {**good, "X-API-SECRET": "s3cr3t_wrong"}
        path = "/api/jobs/job_" + "0" * 32
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(3):
                assert_error(client.get(path, headers=wrong), 401, "invalid_credentials")
            refused = client.get(path, headers=good)
            error = assert_error(refused, 429, "too_many_failed_authentications")
            assert error["retryable"] is True
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert job_keys(redis_db) == []
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_readyz_and_openapi(http: httpx.Client) -> None:
    """readyz checks Redis and LiveKit; the OpenAPI document and docs page are served."""
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["data"] == {"redis": "ok", "livekit": "ok"}
    spec = http.get("/openapi.json").json()
    assert "/api/sio/createSipTrunkDispatch" in spec["paths"]
    assert http.get("/docs").status_code == 200


# --------------------------------------------------------------------------- idempotency


def test_twenty_concurrent_identical_requests_make_one_set(
    http: httpx.Client, api: ApiServer, creds: Credentials, worker_factory: WorkerFactory,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """20 concurrent identical requests with one Idempotency-Key: one job, one set of LiveKit
    objects, twenty identical successful answers."""
    worker_factory()
    headers = {**creds("org_burst"), "Idempotency-Key": "burst-" + secrets.token_hex(4)}

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=api.url, timeout=90) as client:
            return client.post(CREATE, json=SEED_REQUEST, headers=headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(one, range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert len({a.json()["data"] for a in answers}) == 1
    assert len({a.headers["trunkline-job-id"] for a in answers}) == 1
    on_livekit = everything_on_livekit(livekit)
    assert [len(v) for v in on_livekit.values()] == [1, 1, 1]
    assert on_livekit["inbound"] == [answers[0].json()["data"]]
    assert len(job_keys(redis_db)) == 1
    client: Any = redis_db
    assert len(client.xrange(RESULTS_STREAM)) == 1


# --------------------------------------------------------------------------- webhooks


def _signed(body: bytes, webhook_id: str, *, secret: str = WEBHOOK_SECRET,
            timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": webhook_id, "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, webhook_id, stamp, body),
            "Content-Type": "application/json"}


def test_webhooks_verified_deduplicated_and_provisioned(
    http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """Bad, stale and tampered signatures are refused with no job; a signed signup (national
    number, default region US) is provisioned; its replayed webhook-id makes no second job."""
    body = json.dumps({"type": "signup.created", "data": {
        **SEED_REQUEST, "number": "(555) 123-4567"}}).encode()
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    refused = [
        (_signed(body, "msg_bad", secret=other), body, "invalid_signature"),
        (_signed(body, "msg_old", timestamp=int(time.time()) - 3600), body, "stale_webhook"),
        (_signed(body, "msg_tamper"), body.replace(b"Main", b"Evil"), "invalid_signature"),
        ({"Content-Type": "application/json"}, body, "missing_signature"),
    ]
    for headers, content, code in refused:
        assert_error(http.post("/webhooks/crm/crm", content=content, headers=headers), 401, code)
    assert_error(http.post("/webhooks/crm/nope", content=body, headers=_signed(body, "m")),
                 404, "unknown_webhook_source")
    assert job_keys(redis_db) == []

    worker_factory()
    headers = _signed(body, "msg_signup_1")
    first = http.post("/webhooks/crm/crm", content=body, headers=headers)
    assert first.status_code == 202, first.text
    job_id = first.json()["data"]["job_id"]
    replayed = http.post("/webhooks/crm/crm", content=body, headers=headers)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["data"]["job_id"] == job_id
    assert replayed.json()["data"]["duplicate"] is True

    data = wait_for_job(http, creds("org_crm"), job_id)
    assert data["state"] == "succeeded", data
    assert data["request"]["number"] == "+15551234567"
    assert data["source"] == "webhook:crm"
    again = http.post("/webhooks/crm/crm", content=body, headers=headers)
    assert again.status_code == 200
    assert len(job_keys(redis_db)) == 1
    assert [len(v) for v in everything_on_livekit(livekit).values()] == [1, 1, 1]


# --------------------------------------------------------------------------- secrets


def test_no_password_in_redis_responses_or_logs(
    api: ApiServer, http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    redis_db: redis.Redis,
) -> None:
    """A canary password and an API secret appear nowhere: Redis, answers, API and worker logs."""
    worker = worker_factory()
    headers = creds("org_canary")
    answer = http.post(CREATE, json={**SEED_REQUEST, "authPassword": CANARY_PASSWORD},
                       headers=headers)
    assert answer.status_code == 200, answer.text
    job = http.get(f"/api/jobs/{answer.headers['trunkline-job-id']}", headers=headers)
    dump = redis_dump(redis_db)
    for secret in (CANARY_PASSWORD, headers["X-API-SECRET"]):
        assert secret.encode() not in dump
        assert secret not in answer.text + job.text
        assert secret not in api.log()
        assert secret not in worker.read_log()


# --------------------------------------------------------------------------- schemathesis

# TRUNKLINE_FUZZ_EXAMPLES raises the test cases per operation; below the floor a green run
# would prove too little, so the test refuses it.
FUZZ_EXAMPLES_DEFAULT, FUZZ_EXAMPLES_FLOOR = 200, 100
# schemathesis' own budget: the run took 392 s on 2 cores hogged by stress-ng (load average 9).
SCHEMATHESIS_WAIT = 600


# Every wait below is bounded, and the bounds add up to the cap:
#   setup 150 s (worker ready 30 + API up 30 + seed request 30 + seed job 60)
#   + schemathesis 600 s + teardown 50 s (API stopped 20 + worker stopped 30)
#   + checks 20 s = 820 s.
@pytest.mark.timeout(150 + SCHEMATHESIS_WAIT + 50 + 20)
def test_schemathesis_finds_no_server_error(
    stack: Stack, tmp_path: Path, creds: Credentials, worker_factory: WorkerFactory,
) -> None:
    """schemathesis, from /openapi.json, with valid credentials: no 5xx on any operation,
    the phone-number lifecycle (list, get, PATCH, DELETE) on a provisioned number included."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    assert schemathesis.exists(), "schemathesis is a dev dependency (pip install -e '.[dev]')"
    examples = os.environ.get("TRUNKLINE_FUZZ_EXAMPLES", str(FUZZ_EXAMPLES_DEFAULT))
    if not examples.isdigit() or int(examples) < FUZZ_EXAMPLES_FLOOR:
        pytest.fail(f"TRUNKLINE_FUZZ_EXAMPLES={examples!r}: use at least "
                    f"{FUZZ_EXAMPLES_FLOOR} test cases per operation (default "
                    f"{FUZZ_EXAMPLES_DEFAULT}); fewer would make a green run meaningless")
    worker_factory()
    server = start_api(stack, tmp_path / "api-fuzz.log", TRUNKLINE_API_WAIT_SECONDS="0.5",
                       TRUNKLINE_API_RATE_LIMIT="0", TRUNKLINE_WEBHOOK_SOURCES=json.dumps(
                           {"crm": {"secret": WEBHOOK_SECRET, "org_id": "org_fuzz"}}))
    headers = creds("org_fuzz")
    try:
        # A real job, a provisioned number and the configured webhook source, so those
        # operations get past 404 (until the fuzzer releases the number).
        seeded = httpx.post(server.url + CREATE, json=SEED_REQUEST, timeout=30,
                            headers={**headers, "Prefer": "respond-async"})
        assert seeded.status_code == 202, seeded.text
        job_id = seeded.json()["data"]["job_id"]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert wait_for_job(client, headers, job_id)["state"] == "succeeded"
        config = tmp_path / "schemathesis.toml"
        config.write_text(f'[parameters]\nsource = "crm"\njob_id = "{job_id}"\n'
                          f'"path.number" = "{SEED_REQUEST["number"]}"\n')
        # One worker: with two, hypothesis parses lambdas' source from two threads at once,
        # which CPython 3.11.7 can fail ("AST constructor recursion depth mismatch").
        ran = subprocess.run(
            [str(schemathesis), "--config-file", str(config), "run",
             f"{server.url}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", examples,
             "--phases", "examples,coverage,fuzzing", "--seed", "20240601",
             "--workers", "1", "--request-timeout", "30", "--no-color",
             "--generation-database", "none", "--suppress-health-check", "all",
             "-H", f"X-API-KEY: {headers['X-API-KEY']}",
             "-H", f"X-API-SECRET: {headers['X-API-SECRET']}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=SCHEMATHESIS_WAIT,
            check=False,
        )
        report = ran.stdout[-6000:] + ran.stderr[-2000:]
        print(ran.stdout)  # the run's summary, shown with -s or on failure
        assert ran.returncode == 0, report
        assert re.search(r"\b\d+ passed\b", ran.stdout), report
        assert "Traceback" not in server.log()
        for operation in ("GET /api/phone-numbers", "GET /api/phone-numbers/",
                          "PATCH /api/phone-numbers/", "DELETE /api/phone-numbers/"):
            assert operation in server.log(), f"schemathesis never sent {operation}"
    finally:
        server.stop()
