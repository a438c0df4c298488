"""Unit tests for the HTTP producer's routes, through httpx's ASGITransport and fakeredis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping
from typing import Any

import fakeredis
import httpx
import pytest

from producers.api.inputs import prefers_async
from producers.keys import ApiKeys
from tests.producers.conftest import (
    CANARY,
    CREATE,
    Harness,
    HarnessFactory,
    Response,
    redis_bytes,
    run,
    seed,
)
from worker.contract import Transport
from worker.records import JobState, PhoneNumberRecord
from worker.store import NotReplicated

# --------------------------------------------------------------------------- success paths


def test_seed_body_succeeds_with_the_inbound_trunk_id(harness: Harness) -> None:
    """The seed's body answers the seed's envelope with the inbound trunk id as data."""
    answer = harness.create()
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "success"
    assert answer.body["message"] == "Phone number created successfully"
    assert answer.body["error"] is None
    assert answer.body["data"].startswith("ST_")
    assert answer.headers["trunkline-job-id"] in harness.job_ids()


def test_seed_curl_content_type_is_accepted(harness: Harness) -> None:
    """curl -d sends JSON labelled application/x-www-form-urlencoded; it still works."""
    answer = harness.request("POST", CREATE, content=json.dumps(seed()).encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 200, answer.body


def test_both_spellings_of_the_path_are_served(harness: Harness) -> None:
    """/api/sip/... is served as well as the seed's /api/sio/...."""
    answer = harness.request("POST", "/api/sip/createSipTrunkDispatch", json_body=seed())
    assert answer.status == 200, answer.body


def test_wait_timeout_answers_202_with_the_job(make_harness: HarnessFactory) -> None:
    """A job still queued after the wait: 202, the job id and its Location."""
    harness = make_harness(outcome=None, wait_seconds=0.05)
    answer = harness.create()
    assert answer.status == 202
    assert answer.body["status"] == "pending"
    job_id = answer.body["data"]["job_id"]
    assert answer.headers["location"] == f"/api/jobs/{job_id}"
    assert answer.body["data"]["location"] == f"/api/jobs/{job_id}"
    assert answer.body["data"]["state"] == "queued"


def test_prefer_respond_async_answers_at_once(make_harness: HarnessFactory) -> None:
    """Prefer: respond-async answers 202 without waiting, and says so."""
    harness = make_harness(outcome=None, wait_seconds=30)
    answer = harness.create(headers={"Prefer": "respond-async"})
    assert answer.status == 202
    assert answer.headers["preference-applied"] == "respond-async"
    assert answer.headers["location"] == f"/api/jobs/{answer.body['data']['job_id']}"


def test_prefer_parsing() -> None:
    """respond-async and wait=N are read from a Prefer header with other preferences."""
    assert prefers_async(None) == (False, None)
    assert prefers_async("return=minimal, respond-async; foo=bar") == (True, None)
    assert prefers_async("wait=3") == (False, 3.0)
    assert prefers_async('wait="7", wait=1') == (False, 7.0)
    assert prefers_async("wait=99999") == (False, 600.0)
    assert prefers_async("Respond-Async ;x , handling=lenient") == (True, None)


# Each was a 500 after the job had been stored (`wait=²` passed str.isdigit, then int()).
MALFORMED_PREFER = ["wait=²", "wait=abc", "wait=", "wait=-1", "wait=1.5", "respond-async,,",
                    "respond async", "wait=1\x00", "caf\u00e9", "; wait=1", "=x",
                    'wait="1', "a;" + " ;" * 2000 + "\x01"]


@pytest.mark.parametrize("prefer", MALFORMED_PREFER)
def test_malformed_prefer_is_a_400_that_creates_nothing(harness: Harness, prefer: str) -> None:
    """A Prefer header is parsed before the job is stored: a bad one names the header."""
    answer = harness.request("POST", CREATE, json_body=seed(),
                             headers={"Prefer": prefer.encode("utf-8")})
    assert answer.status == 400, answer.body
    assert answer.body["error"]["code"] == "invalid_header"
    assert answer.body["error"]["field"] == "Prefer"
    assert harness.all_job_keys() == []


def test_prefer_wait_shortens_the_wait(make_harness: HarnessFactory) -> None:
    """Prefer: wait=0 returns 202 at once even with a long configured wait."""
    harness = make_harness(outcome=None, wait_seconds=30)
    assert harness.create(headers={"Prefer": "wait=0"}).status == 202


def test_failed_job_maps_to_its_status_and_code(make_harness: HarnessFactory) -> None:
    """A job that failed on a LiveKit number conflict answers 409 with its code and job id."""
    harness = make_harness(outcome="number_conflict")
    answer = harness.create()
    assert answer.status == 409
    error = answer.body["error"]
    assert answer.body["status"] == "error"
    assert error["code"] == "number_conflict"
    assert error["field"] == "number"
    assert error["retryable"] is False
    assert error["job_id"] == answer.headers["trunkline-job-id"]


@pytest.mark.parametrize(("code", "status"), [
    ("livekit_rejected", 422), ("livekit_unavailable", 502), ("internal_error", 500),
    ("worker_lost", 503), ("number_owned_by_other_org", 409),
])
def test_failure_status_table(make_harness: HarnessFactory, code: str, status: int) -> None:
    """Each failure code of a finished job has its HTTP status."""
    assert make_harness(outcome=code).create().status == status


# --------------------------------------------------------------------------- 400


def test_validation_reports_every_field_and_stores_nothing(harness: Harness) -> None:
    """All field errors at once, in error.details, with status error; no job is stored."""
    answer = harness.create({"number": "15551234567", "outboundPstn": "sip:user@host",
                             "authUserName": "", "extra": 1})
    assert answer.status == 400
    assert answer.body["status"] == "error"
    error = answer.body["error"]
    assert error["code"] == "validation_error"
    assert error["retryable"] is False
    fields = {d["field"] for d in error["details"]}
    assert fields == {"name", "number", "outboundPstn", "authUserName", "authPassword", "extra"}
    assert error["field"] in fields
    assert harness.all_job_keys() == []


@pytest.mark.parametrize("content", [b"{not json", b"", b"   ", b'{"a": NaN}', b"\xff\xfe",
                                     b"[" * 100_000])
def test_malformed_json_is_400(harness: Harness, content: bytes) -> None:
    """Broken, empty, NaN-bearing, non-UTF-8 or absurdly nested bodies are 400 malformed_json."""
    answer = harness.request("POST", CREATE, content=content,
                             headers={"Content-Type": "application/json"})
    assert answer.status == 400
    assert answer.body["error"]["code"] == "malformed_json"
    assert harness.all_job_keys() == []


def test_json_that_is_not_an_object_is_a_validation_error(harness: Harness) -> None:
    """A JSON array is refused with a field-level message for the body."""
    answer = harness.create([1, 2])
    assert answer.status == 400
    assert answer.body["error"]["details"][0]["field"] == "body"


def test_bad_idempotency_key_is_400(harness: Harness) -> None:
    """An Idempotency-Key with spaces or over 255 characters is refused."""
    for key in ("has space", "x" * 256):
        answer = harness.create(headers={"Idempotency-Key": key})
        assert answer.status == 400
        assert answer.body["error"]["field"] == "Idempotency-Key"
    assert harness.all_job_keys() == []


# --------------------------------------------------------------------------- 401


@pytest.mark.parametrize("headers", [
    {},
    {"X-API-KEY": "sk_0123456789abcdef0123456789abcdef"},
    {"X-API-SECRET": "s3cr3t_x"},
])
def test_missing_credentials_are_401(harness: Harness, headers: dict[str, str]) -> None:
    """Without both headers: 401 missing_credentials, no job."""
    answer = harness.create(org=None, headers=headers)
    assert answer.status == 401
    assert answer.body["error"]["code"] == "missing_credentials"
    assert harness.all_job_keys() == []


def test_wrong_secret_unknown_key_and_revoked_key_are_401(harness: Harness) -> None:
    """A wrong secret, an unknown key and a revoked key all answer 401 invalid_credentials."""
    created = harness.key()
    attempts = [
        {"X-API-KEY": created.api_key, "X-API-SECRET": created.api_secret + "x"},
        {"X-API-KEY": "sk_" + "0" * 32, "X-API-SECRET": created.api_secret},
        {"X-API-KEY": "not-a-key", "X-API-SECRET": "x" * 5000},
    ]
    for headers in attempts:
        answer = harness.create(org=None, headers=headers)
        assert answer.status == 401
        assert answer.body["error"]["code"] == "invalid_credentials"
    harness.keys.revoke(created.api_key)
    assert harness.create().status == 401
    assert harness.all_job_keys() == []


# --------------------------------------------------------------------------- 404 / jobs


def test_get_job_shows_state_and_never_the_password(harness: Harness) -> None:
    """GET /api/jobs/{id}: state, steps, result; no password, ciphertext or fingerprint."""
    answer = harness.create(seed(authPassword=CANARY))
    job_id = answer.headers["trunkline-job-id"]
    got = harness.request("GET", f"/api/jobs/{job_id}")
    assert got.status == 200
    data = got.body["data"]
    assert data["job_id"] == job_id
    assert data["state"] == "succeeded"
    assert data["result"]["inbound_trunk_id"] == answer.body["data"]
    assert data["request"]["has_auth_password"] is True
    assert "auth_password_ciphertext" not in data["request"]
    assert "request_fingerprint" not in data
    assert CANARY not in got.text
    assert set(data["steps"]) == {"inbound_trunk", "outbound_trunk", "dispatch_rule",
                                  "phone_number"}


def test_other_orgs_job_is_404(harness: Harness) -> None:
    """One organisation cannot read another's job: 404, as for a job that does not exist."""
    job_id = harness.create().headers["trunkline-job-id"]
    other = harness.request("GET", f"/api/jobs/{job_id}", org="org_b")
    missing = harness.request("GET", "/api/jobs/job_" + "0" * 32, org="org_b")
    assert other.status == missing.status == 404
    assert other.body["error"]["code"] == missing.body["error"]["code"] == "job_not_found"
    assert harness.request("GET", "/api/jobs/../../etc").status == 404


def test_unknown_route_and_method(harness: Harness) -> None:
    """Unknown paths and methods still answer the envelope."""
    missing = harness.request("GET", "/nope")
    assert missing.status == 404
    assert missing.body["status"] == "error"
    assert missing.body["error"]["code"] == "not_found"
    wrong = harness.request("GET", CREATE)
    assert wrong.status == 405
    assert wrong.body["error"]["code"] == "method_not_allowed"


# --------------------------------------------------------------------------- 409


def _provisioned(harness: Harness, org: str, number: str = "+15551234567") -> None:
    record = PhoneNumberRecord(
        phone_number_id="pn_1", org_id=org, number=number, name="n", job_id="job_x",
        inbound_trunk_id="ST_a", outbound_trunk_id="ST_b", dispatch_rule_id="SDR_c",
        outbound_pstn="sip.gateway.com", transport=Transport.AUTO, auth_user_name="u",
        auth_password_ciphertext="gAAAA", room_prefix="call-")
    store = harness.client.store
    assert store.acquire_number_lock(number, "t", 5)
    store.put_number(record, "t")
    store.release_number_lock(number, "t")


@pytest.mark.parametrize(("owner", "code"), [("org_a", "number_already_provisioned"),
                                              ("org_b", "number_owned_by_other_org")])
def test_provisioned_number_is_409(harness: Harness, owner: str, code: str) -> None:
    """A number with a phone-number record is a 409 and no job is made."""
    _provisioned(harness, owner)
    answer = harness.create()
    assert answer.status == 409
    assert answer.body["error"]["code"] == code
    assert answer.body["error"]["field"] == "number"
    assert harness.all_job_keys() == []


def test_setup_in_flight_is_409(make_harness: HarnessFactory) -> None:
    """A second request for a number whose job is still queued: 409 setup_in_flight."""
    harness = make_harness(outcome=None, wait_seconds=0)
    first = harness.create()
    assert first.status == 202
    second = harness.create(seed(name="Other"), org="org_b")
    assert second.status == 409
    assert second.body["error"]["code"] == "setup_in_flight"
    assert second.body["error"]["retryable"] is True
    assert first.body["data"]["job_id"] not in second.text  # no other org's job id
    assert len(harness.all_job_keys()) == 1


def test_finished_job_frees_the_in_flight_mark(make_harness: HarnessFactory) -> None:
    """Once the in-flight job failed, the number can be requested again."""
    harness = make_harness(outcome="livekit_rejected")
    assert harness.create().status == 422
    assert harness.create().status == 422
    assert len(harness.all_job_keys()) == 2


def test_a_job_from_another_producer_is_in_flight(make_harness: HarnessFactory) -> None:
    """A job stored by the Python client (not the API) is in the core's in-flight index, and
    the API refuses a create for its number; the API keeps no in-flight keys of its own."""
    harness = make_harness(outcome=None)
    job_id = harness.client.submit(org_id="org_b", request=seed(), source="client")
    assert harness.client.store.jobs_in_flight("+15551234567") == [job_id]
    answer = harness.create()
    assert answer.status == 409
    assert answer.body["error"]["code"] == "setup_in_flight"
    assert job_id not in answer.text
    assert list(harness.redis.scan_iter(match="trunkline:api:inflight:*")) == []
    assert harness.job_ids("org_a") == []


def test_a_stale_in_flight_entry_does_not_block(make_harness: HarnessFactory) -> None:
    """An in-flight id whose job is already terminal (or gone) never blocks a number."""
    harness = make_harness(outcome=None)
    job_id = harness.client.submit(org_id="org_a", request=seed())
    job = harness.job(job_id)
    job.state = JobState.FAILED
    harness.redis.set(harness.client.store.keys.job(job_id), job.model_dump_json())
    harness.redis.zadd(harness.client.store.keys.in_flight("+15551234567"), {"job_gone": 1})
    assert harness.client.store.jobs_in_flight("+15551234567") == ["job_gone", job_id]
    assert harness.create(headers={"Prefer": "respond-async"}).status == 202


# --------------------------------------------------------------------------- 413 / 415


def test_body_over_the_limit_is_413(make_harness: HarnessFactory) -> None:
    """By Content-Length at once, and while streaming a body without one."""
    harness = make_harness(max_body=2048)
    big = json.dumps(seed(metadata={"x": "y" * 4000})).encode()
    answer = harness.request("POST", CREATE, content=big)
    assert answer.status == 413
    assert answer.body["error"]["code"] == "payload_too_large"

    async def chunks() -> Any:
        for start in range(0, len(big), 512):
            yield big[start:start + 512]

    async def streamed() -> int:
        transport = httpx.ASGITransport(app=harness.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.post(CREATE, content=chunks(), headers=harness.auth())
            return answer.status_code

    assert run(streamed()) == 413
    assert harness.all_job_keys() == []


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data; boundary=x",
                                          "image/png"])
def test_non_json_content_type_is_415(harness: Harness, content_type: str) -> None:
    """Bodies declared as something other than JSON are refused."""
    answer = harness.request("POST", CREATE, content=json.dumps(seed()).encode(),
                             headers={"Content-Type": content_type})
    assert answer.status == 415
    assert answer.body["error"]["code"] == "unsupported_media_type"


# --------------------------------------------------------------------------- 422 idempotency


def test_same_key_same_body_replays_the_same_job(harness: Harness) -> None:
    """The same Idempotency-Key and body: the same job and response, marked as replayed."""
    first = harness.create(headers={"Idempotency-Key": "k-1"})
    again = harness.create(headers={"Idempotency-Key": "k-1"})
    assert first.status == again.status == 200
    assert first.body == again.body
    assert first.headers["trunkline-job-id"] == again.headers["trunkline-job-id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(harness.job_ids()) == 1
    assert harness.client.submits == 1


def test_same_key_other_body_is_422(harness: Harness) -> None:
    """The same key with another body: 422 idempotency_key_reused, no second job."""
    assert harness.create(headers={"Idempotency-Key": "k-2"}).status == 200
    answer = harness.create(seed(name="Renamed"), headers={"Idempotency-Key": "k-2"})
    assert answer.status == 422
    assert answer.body["error"]["code"] == "idempotency_key_reused"
    assert answer.body["error"]["field"] == "Idempotency-Key"
    assert len(harness.job_ids()) == 1


def test_keys_are_scoped_per_org(harness: Harness) -> None:
    """Another organisation's use of the same key is its own request."""
    assert harness.create(headers={"Idempotency-Key": "shared"}).status == 200
    other = harness.create(seed(number="+15551234568"), headers={"Idempotency-Key": "shared"},
                           org="org_b")
    assert other.status == 200
    assert len(harness.job_ids("org_b")) == 1


def test_concurrent_duplicates_make_one_job(make_harness: HarnessFactory) -> None:
    """20 concurrent identical requests with one key: one job, 20 identical answers."""
    harness = make_harness()

    async def burst() -> list[Response]:
        return list(await asyncio.gather(*(
            harness.arequest("POST", CREATE, json_body=seed(),
                             headers={"Idempotency-Key": "burst"}) for _ in range(20))))

    answers = run(burst())
    assert {a.status for a in answers} == {200}
    assert len({a.body["data"] for a in answers}) == 1
    assert len(harness.job_ids()) == 1
    assert harness.client.submits == 1


# --------------------------------------------------------------------------- 429 / 503 / 500


def test_rate_limit_is_per_org(make_harness: HarnessFactory) -> None:
    """Past the limit an organisation gets 429 with Retry-After; others are unaffected."""
    harness = make_harness(rate_limit=3)
    path = "/api/jobs/job_" + "0" * 32
    statuses = [harness.request("GET", path).status for _ in range(4)]
    assert statuses == [404, 404, 404, 429]
    limited = harness.request("GET", path)
    assert limited.body["error"]["code"] == "rate_limited"
    assert limited.body["error"]["retryable"] is True
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-remaining"] == "0"
    assert harness.request("GET", path, org="org_b").status == 404
    assert harness.create().status == 429
    assert harness.all_job_keys() == []


def test_rate_limit_slides_across_the_minute(make_harness: HarnessFactory) -> None:
    """The limit at the end of one minute and again at the start of the next is refused."""
    harness = make_harness(rate_limit=3)
    path = "/api/jobs/job_" + "0" * 32
    harness.clock[0] = 1_700_000_039.9  # 0.1 s before a minute boundary
    assert [harness.request("GET", path).status for _ in range(3)] == [404] * 3
    harness.clock[0] = 1_700_000_040.1
    assert [harness.request("GET", path).status for _ in range(3)] == [429] * 3
    harness.clock[0] = 1_700_000_099.9
    assert harness.request("GET", path).status == 404


def test_failed_authentications_are_limited_per_address_and_per_key(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the limit of failures from one address, or for one key id, the API refuses with
    429 before checking a secret (each check costs a password hash); a minute later it
    checks again."""
    harness = make_harness(auth_failure_limit=3)
    checks: list[str] = []
    keys: ApiKeys = harness.app.state.trunkline.keys
    real = keys.authenticate

    def counted(key_id: str, secret: str) -> str | None:
        checks.append(key_id)
        return real(key_id, secret)

    monkeypatch.setattr(keys, "authenticate", counted)
    path = "/api/jobs/job_" + "0" * 32
    good = harness.auth()
    wrong = {**good, "X-API-SECRET": "s3cr3t_wrong"}
    here, there, elsewhere = ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)

    statuses = [harness.request("GET", path, headers=wrong, org=None, client=here).status
                for _ in range(3)]
    assert statuses == [401] * 3
    assert len(checks) == 3
    refused = harness.request("GET", path, headers=wrong, org=None, client=here)
    assert refused.status == 429
    assert refused.body["error"]["code"] == "too_many_failed_authentications"
    assert int(refused.headers["retry-after"]) >= 1
    assert len(checks) == 3  # refused without a hash check
    # The address is spent, whatever key it presents...
    other_key = harness.auth("org_b")
    assert harness.request("GET", path, headers=other_key, org=None,
                           client=here).status == 429
    # ...and so is the key id, from any address (the key's owner waits out the minute too).
    assert harness.request("GET", path, headers=good, org=None, client=there).status == 429
    assert len(checks) == 3
    # Another key from another address is unaffected.
    assert harness.request("GET", path, headers=other_key, org=None,
                           client=elsewhere).status == 404
    harness.clock[0] += 60
    assert harness.request("GET", path, headers=good, org=None, client=here).status == 404


def test_a_client_gone_mid_body_is_logged_at_info(
    harness: Harness, caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that disconnects while sending its body: an info line, no error, no job."""
    headers = [(k.lower().encode(), v.encode()) for k, v in harness.auth().items()]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"500")]
    scope: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": CREATE, "raw_path": CREATE.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("api.test", 80)}
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"name": "half', "more_body": True},
        {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    with caplog.at_level(logging.INFO, logger="trunkline.api"):
        run(harness.app(scope, receive, send))
    assert [r.levelno for r in caplog.records if r.name == "trunkline.api"] == [logging.INFO]
    assert "client disconnected" in caplog.text
    assert harness.all_job_keys() == []


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-16",
                                          "application/json;charset=latin1",
                                          'application/json; charset="EBCDIC"'])
def test_a_charset_other_than_utf8_is_415(harness: Harness, content_type: str) -> None:
    answer = harness.request("POST", CREATE, content=json.dumps(seed()).encode(),
                             headers={"Content-Type": content_type})
    assert answer.status == 415, answer.body
    assert answer.body["error"]["field"] == "Content-Type"
    assert harness.all_job_keys() == []
    utf8 = harness.request("POST", CREATE, content=json.dumps(seed()).encode(),
                           headers={"Content-Type": "application/json; charset=UTF-8"})
    assert utf8.status == 200, utf8.body


def test_deeply_nested_metadata_is_a_400_that_stores_nothing(harness: Harness) -> None:
    """A few hundred bytes of nested lists: once a 500 after the job was stored and queued."""
    body = json.dumps(seed()).replace('"number"', '"metadata": {"x": ' + "[" * 250 + "]" * 250
                                      + '}, "number"', 1).encode()
    answer = harness.request("POST", CREATE, content=body)
    assert answer.status == 400, answer.body
    assert answer.body["error"]["field"] == "metadata"
    assert "deep" in answer.body["error"]["details"][0]["message"]
    assert harness.all_job_keys() == []


def test_an_unreadable_job_is_named_not_a_500_and_blocks_nothing(harness: Harness) -> None:
    """A corrupt record in Redis: GET of it is a 409 saying so; a create of its number, and
    every other request, still works."""
    job_id = "job_" + "c" * 32
    keys = harness.client.store.keys
    harness.redis.set(keys.job(job_id), b'{"job_id": "' + job_id.encode() + b'", "org_id": '
                      b'"org_a", "number": "+15551234567", "state": "qu')
    harness.redis.zadd(keys.in_flight("+15551234567"), {job_id: 1.0})
    answer = harness.request("GET", f"/api/jobs/{job_id}")
    assert answer.status == 409, answer.body
    assert answer.body["error"]["code"] == "record_unreadable"
    assert "Traceback" not in answer.text
    assert harness.create().status == 200


def test_redis_unreachable_is_503(make_harness: HarnessFactory) -> None:
    """With Redis down every Redis-backed route answers 503 redis_unavailable, retryable."""
    server = fakeredis.FakeServer()
    harness = make_harness(server=server)
    headers = harness.auth()
    server.connected = False
    for answer in (harness.create(org=None, headers=headers),
                   harness.request("GET", "/api/jobs/job_" + "0" * 32, org=None,
                                   headers=headers)):
        assert answer.status == 503
        assert answer.body["error"]["code"] == "redis_unavailable"
        assert answer.body["error"]["retryable"] is True
    ready = harness.request("GET", "/readyz", org=None)
    assert ready.status == 503
    assert ready.body["data"]["redis"].startswith("unreachable")


def test_unexpected_exception_is_an_envelope_without_a_trace(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug answers 500 internal_error; the log names the type, not the message."""

    def broken(job_id: str) -> None:
        raise RuntimeError(f"secret detail {CANARY}")

    headers = harness.auth()
    monkeypatch.setattr(harness.client.store, "get", broken)
    with caplog.at_level(logging.ERROR, logger="trunkline.api"):
        answer = harness.request("GET", "/api/jobs/job_" + "0" * 32, org=None, headers=headers)
    assert answer.status == 500
    assert answer.body["error"]["code"] == "internal_error"
    assert "Traceback" not in answer.text
    assert CANARY not in answer.text
    assert "RuntimeError" in caplog.text
    assert CANARY not in caplog.text


# --------------------------------------------------------------------------- health, docs


def test_healthz_and_readyz(make_harness: HarnessFactory) -> None:
    """healthz is always up; readyz reports each probe."""
    harness = make_harness()
    assert harness.request("GET", "/healthz", org=None).status == 200
    ready = harness.request("GET", "/readyz", org=None)
    assert ready.status == 200
    assert ready.body["data"] == {"redis": "ok"}


def test_openapi_documents_every_route(harness: Harness) -> None:
    """/openapi.json lists the routes, the body schema and both credential headers."""
    spec = harness.request("GET", "/openapi.json", org=None).body
    assert set(spec["paths"]) == {"/api/sio/createSipTrunkDispatch",
                                  "/api/sip/createSipTrunkDispatch", "/api/jobs/{job_id}",
                                  "/api/phone-numbers", "/api/phone-numbers/{number}",
                                  "/webhooks/crm/{source}", "/healthz", "/readyz"}
    create = spec["paths"][CREATE]["post"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"name", "number", "outboundPstn", "authUserName",
                                       "authPassword"}
    assert "$defs" not in json.dumps(schema)
    schemes = spec["components"]["securitySchemes"]
    assert {s["name"] for s in schemes.values()} == {"X-API-KEY", "X-API-SECRET"}
    assert create["security"] == [{"ApiKey": [], "ApiSecret": []}]
    assert {"200", "202", "400", "401", "409", "413", "415", "422", "429", "503"} <= set(
        create["responses"])
    docs = harness.request("GET", "/docs", org=None)
    assert docs.status == 200
    assert "swagger" in docs.text.lower()


def test_no_secret_reaches_redis_in_plaintext(harness: Harness) -> None:
    """Neither the SIP password nor an API secret is stored in plaintext."""
    created = harness.key()
    harness.create(seed(authPassword=CANARY))
    dump = redis_bytes(harness.redis)
    assert CANARY.encode() not in dump
    assert created.api_secret.encode() not in dump


def test_job_state_values_are_strings(harness: Harness) -> None:
    """The job view is JSON-native (states and timestamps as strings)."""
    job_id = harness.create().headers["trunkline-job-id"]
    data = harness.request("GET", f"/api/jobs/{job_id}").body["data"]
    assert data["state"] in {s.value for s in JobState}
    assert isinstance(data["created_at"], str)


def test_unreplicated_create_is_503_and_a_retry_finds_the_job(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create the replicas did not confirm is not acknowledged: 503 not_replicated,
    retryable; the job stands, and the retry with the same key answers with it."""
    store = harness.client.store
    original = store.create

    def unconfirmed(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        raise NotReplicated("job x", 0, 1, 1000)

    monkeypatch.setattr(store, "create", unconfirmed)
    first = harness.create(headers={"Idempotency-Key": "k-repl"})
    monkeypatch.setattr(store, "create", original)
    retry = harness.create(headers={"Idempotency-Key": "k-repl"})

    assert first.status == 503
    assert first.body["error"]["code"] == "not_replicated"
    assert first.body["error"]["retryable"] is True
    assert "0 of the 1 replica(s)" in first.body["error"]["message"]
    assert first.headers["Retry-After"] == "1"
    # The job was stored (and its message queued) before the refusal: the retry names it.
    # This harness finishes jobs only on a create that returns, so it is still queued.
    assert retry.status == 202
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert [k for k in harness.redis.keys("trunkline:job:*")] == [
        f"trunkline:job:{retry.body['data']['job_id']}".encode()]
