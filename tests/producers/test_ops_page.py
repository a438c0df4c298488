"""Unit tests for /ops (producers.api.ops_page): operator login, sessions, CSRF, replay, paging,
a job's timeline, a number's history; on fakeredis and an in-memory broker, no sockets."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import fakeredis
import httpx
import pytest
from celery import Celery
from fastapi import FastAPI
from httpx import Response
from starlette.requests import Request

from producers.api.ops_page import install_ops_page
from producers.api.ops_page.auth import (
    MAX_FORM_BYTES,
    SESSION_COOKIE,
    FormError,
    OpsSessions,
    read_form,
    same_origin,
    tokens_match,
)
from producers.api.ops_page.views import timeline
from producers.client import ProvisioningClient
from producers.keys import ApiKeys, CreatedKey
from producers.ratelimit import RateLimiter
from tests.producers.conftest import redis_bytes, run
from worker.config import Settings
from worker.reconcile import Category, Finding, Kind, Report, save_report
from worker.records import Attempt, Job, JobError, JobState, StepName, StepRecord, StepStatus
from worker.store import JobStore
from worker.vault import Vault

ORIGIN = "http://ops.test"
CANARY = "canary-Ops-Pw-2b7e41"
NUMBER = "+15551234567"
OTHER_NUMBER = "+15557654321"
FAILURE_LIMIT = 3


def request_for(number: str) -> dict[str, Any]:
    return {"name": "Main office", "number": number, "outboundPstn": "sip.gateway.com",
            "authUserName": "sip_user", "authPassword": CANARY}


class Http:
    """A browser-like client on the app (no sockets): it keeps the cookies it is given."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.cookies = httpx.Cookies()

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        async def send() -> Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=ORIGIN,
                                         cookies=self.cookies) as http:
                answer = await http.request(method, path, **kwargs)
                self.cookies = http.cookies
                return answer

        answer: Response = run(send())
        return answer

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Response:
        return self.request("POST", path, **kwargs)


@dataclass
class Ops:
    http: Http
    client: ProvisioningClient
    keys: ApiKeys
    operator: CreatedKey
    reports: list[Mapping[str, Any] | None]

    @property
    def redis(self) -> Any:
        return self.client.redis

    def submit(self, org: str = "org_a", number: str = NUMBER) -> str:
        return self.client.submit(org_id=org, request=request_for(number))

    def dead_letter(self, org: str = "org_a", number: str = NUMBER,
                    at: float = 1_700_000_000.0) -> str:
        """A failed, dead-lettered job, written as the worker's finish leaves one."""
        job_id = self.submit(org, number)
        job = self.client.get(job_id).model_copy(update={
            "state": JobState.FAILED, "attempts": 1, "dead_lettered": True,
            "error": JobError(code="number_conflict", message="ST_foreign routes the number",
                              retryable=False, field="number"),
            "finished_at": datetime.now(UTC)})
        keys = self.client.store.keys
        self.redis.set(keys.job(job_id), job.model_dump_json())
        self.redis.zadd(keys.dead_letters, {job_id: at})
        self.redis.zrem(keys.in_flight(number), job_id)
        self.redis.zrem(keys.active, job_id)
        return job_id

    def login_token(self) -> str:
        form = self.http.get("/ops/login")
        assert form.status_code == 200
        found = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert found is not None
        return found.group(1)

    def login(self, key: CreatedKey | None = None, secret: str | None = None) -> Response:
        key = key or self.operator
        return self.http.post("/ops/login", data={
            "login_token": self.login_token(), "key_id": key.api_key,
            "secret": key.api_secret if secret is None else secret})

    def csrf(self, path: str = "/ops/dead-letters") -> str:
        page = self.http.get(path)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None, page.text
        return found.group(1)


@pytest.fixture
def ops() -> Iterator[Ops]:
    redis = fakeredis.FakeRedis()
    settings = Settings(secret_keys=(Vault.generate_key(),))
    broker = Celery("unit", broker="memory://", set_as_current=False)
    client = ProvisioningClient(JobStore(redis), Vault(settings.secret_keys), broker, settings)
    keys = ApiKeys(redis, iterations=1000)
    reports: list[Mapping[str, Any] | None] = [None]
    app = ops_app(client, keys, reconcile_report=lambda: reports[-1])
    yield Ops(Http(app), client, keys, keys.create_operator(name="on-call"), reports)
    client.close()


def ops_app(client: ProvisioningClient, keys: ApiKeys, **options: Any) -> FastAPI:
    app = FastAPI()
    install_ops_page(app, keys=keys, client=client,
                     auth_failures=RateLimiter(client.redis, FAILURE_LIMIT,
                                               prefix="trunkline:api:authfail"), **options)
    return app


def assert_login_redirect(answer: Response) -> None:
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/ops/login"


# --------------------------------------------------------------------------- login


@pytest.mark.parametrize("path", ["/ops", "/ops/dead-letters", "/ops/jobs",
                                  "/ops/jobs/job_" + "0" * 32, "/ops/numbers",
                                  "/ops/numbers/%2B15551234567", "/ops/reconcile"])
def test_every_view_needs_an_operator_session(ops: Ops, path: str) -> None:
    """Without a session each view sends the browser to the login form, showing nothing."""
    assert_login_redirect(ops.http.get(path))


def test_an_operator_key_opens_a_strict_httponly_session(ops: Ops) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, limited to /ops; Redis holds only
    the token's hash; the login form's secret is nowhere in Redis."""
    answer = ops.login()

    assert answer.status_code == 303
    assert answer.headers["location"] == "/ops/dead-letters"
    cookie = next(h for h in answer.headers.get_list("set-cookie")
                  if h.startswith(SESSION_COOKIE + "="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/ops" in cookie.lower()
    token = cookie.split(";")[0].split("=", 1)[1]
    stored = redis_bytes(ops.redis)
    assert token.encode() not in stored
    assert ops.operator.api_secret.encode() not in stored
    page = ops.http.get("/ops/dead-letters")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_an_organisation_key_is_refused(ops: Ops) -> None:
    """An organisation's API key, with its right secret, opens no session."""
    org_key = ops.keys.create("org_a")

    answer = ops.login(org_key)

    assert answer.status_code == 401
    assert "Organisation API keys cannot open this page" in answer.text
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    assert_login_redirect(ops.http.get("/ops/jobs"))


def test_login_without_the_forms_token_is_refused(ops: Ops) -> None:
    """A login POST that did not come from the login form (no double-submit token): 403."""
    answer = ops.http.post("/ops/login", data={
        "login_token": "forged", "key_id": ops.operator.api_key,
        "secret": ops.operator.api_secret})

    assert answer.status_code == 403
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


def test_failed_logins_are_limited_before_the_secret_is_checked(ops: Ops) -> None:
    """After the limit of wrong secrets for a key, even its right secret waits (429)."""
    for _ in range(FAILURE_LIMIT):
        assert ops.login(secret="s3cr3t_wrong").status_code == 401

    answer = ops.login()

    assert answer.status_code == 429
    assert "Too many failed logins" in answer.text
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


def test_revoking_the_key_ends_its_sessions_at_once(ops: Ops) -> None:
    ops.login()
    assert ops.http.get("/ops/jobs").status_code == 200

    ops.keys.revoke(ops.operator.api_key)

    assert_login_redirect(ops.http.get("/ops/jobs"))


def test_logout_needs_the_csrf_token_and_closes_the_session(ops: Ops) -> None:
    ops.login()
    assert ops.http.post("/ops/logout", data={"csrf_token": "nope"}).status_code == 403
    assert ops.http.get("/ops/jobs").status_code == 200

    answer = ops.http.post("/ops/logout", data={"csrf_token": ops.csrf()})

    assert answer.status_code == 303
    assert_login_redirect(ops.http.get("/ops/jobs"))


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("headers, token", [
    ({}, None),
    ({}, "a-forged-token"),
    ({"Origin": "http://evil.test"}, "right"),
    ({"Sec-Fetch-Site": "cross-site"}, "right"),
])
def test_replay_refuses_a_post_without_the_token_or_from_another_site(
    ops: Ops, headers: dict[str, str], token: str | None,
) -> None:
    """CSRF: the replay needs this session's token, from this site; nothing is replayed."""
    job_id = ops.dead_letter()
    ops.login()
    form = {"replay": job_id}
    if token is not None:
        form["csrf_token"] = ops.csrf() if token == "right" else token

    answer = ops.http.post(f"/ops/dead-letters/{job_id}/replay", data=form, headers=headers)

    assert answer.status_code == 403
    job = ops.client.get(job_id)
    assert (job.state, job.run) == (JobState.FAILED, 1)
    assert [m.decode() for m in ops.redis.zrange("trunkline:dlq", 0, -1)] == [job_id]


def test_replay_button_queues_a_new_run_and_shows_the_job(ops: Ops) -> None:
    """The page's replay: same id, run 2, off the dead-letter list, message enqueued."""
    job_id = ops.dead_letter()
    ops.login()
    page = ops.http.get("/ops/dead-letters")
    assert f'action="/ops/dead-letters/{job_id}/replay"' in page.text
    assert "number_conflict" in page.text and "ST_foreign routes the number" in page.text

    answer = ops.http.post(f"/ops/dead-letters/{job_id}/replay",
                           data={"csrf_token": ops.csrf()},
                           headers={"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"})

    assert answer.status_code == 303
    assert answer.headers["location"] == f"/ops/jobs/{job_id}?notice=replayed"
    job = ops.client.get(job_id)
    assert (job.state, job.run, job.attempts) == (JobState.QUEUED, 2, 0)
    assert ops.redis.zcard("trunkline:dlq") == 0
    shown = ops.http.get(answer.headers["location"])
    assert "Replayed: run 2 is queued" in shown.text


def test_replaying_a_job_that_is_not_failed_says_why(ops: Ops) -> None:
    job_id = ops.submit()
    ops.login()

    answer = ops.http.post(f"/ops/dead-letters/{job_id}/replay",
                           data={"csrf_token": ops.csrf()})

    assert answer.status_code == 409
    assert "only failed jobs can be replayed" in answer.text


# --------------------------------------------------------------------------- views


def _next(page: Response) -> str:
    found = re.search(r'href="([^"]+)" class="next"', page.text)
    assert found is not None, "no next page link"
    return found.group(1).replace("&amp;", "&")


def test_dead_letters_come_a_page_at_a_time(ops: Ops) -> None:
    """Newest first, `limit` per page, a next link until the end; a forged cursor is a 400."""
    ids = [ops.dead_letter(number=n, at=1_700_000_000.0 + i)
           for i, n in enumerate(["+15551230001", "+15551230002", "+15551230003"])]
    ops.login()

    first = ops.http.get("/ops/dead-letters?limit=2")
    second = ops.http.get(_next(first))

    shown = [re.findall(r"(job_[0-9a-f]{32})/replay", page.text) for page in (first, second)]
    assert shown == [[ids[2], ids[1]], [ids[0]]]
    assert 'class="next"' not in second.text
    assert "3 on the list" in first.text
    assert ops.http.get("/ops/dead-letters?cursor=forged").status_code == 400


def test_jobs_list_filters_and_pages(ops: Ops) -> None:
    """Every organisation's jobs, newest first; a state filter; paging by cursor."""
    failed = ops.dead_letter(org="org_b", number=OTHER_NUMBER)
    queued = ops.submit(org="org_a")
    ops.login()

    everything = ops.http.get("/ops/jobs")
    only_failed = ops.http.get("/ops/jobs?state=failed")
    first = ops.http.get("/ops/jobs?limit=1")
    second = ops.http.get(_next(first))

    def ids(page: Response) -> set[str]:
        return set(re.findall(r'href="/ops/jobs/(job_[0-9a-f]{32})"', page.text))

    assert ids(everything) == {failed, queued}
    assert ids(only_failed) == {failed}
    assert ids(first) | ids(second) == {failed, queued}
    assert ids(first).isdisjoint(ids(second))


def test_number_history_lists_the_jobs_of_every_organisation_for_that_number(
    ops: Ops,
) -> None:
    """A number's page: its jobs from any organisation, not other numbers' jobs; no record
    yet; a number in another spelling goes to its E.164 page."""
    mine = ops.submit(org="org_a")
    theirs = ops.dead_letter(org="org_b")
    elsewhere = ops.submit(org="org_a", number=OTHER_NUMBER)
    ops.login()

    page = ops.http.get("/ops/numbers/%2B15551234567")
    search = ops.http.get("/ops/numbers", params={"number": "+1 (555) 123-4567"})

    shown = set(re.findall(r'href="/ops/jobs/(job_[0-9a-f]{32})"', page.text))
    assert shown == {mine, theirs}
    assert elsewhere not in page.text
    assert "No record" in page.text
    assert search.status_code == 303
    assert unquote(search.headers["location"]) == "/ops/numbers/+15551234567"
    assert ops.http.get("/ops/numbers", params={"number": "12"}).status_code == 400


def test_number_history_reads_a_bounded_number_of_jobs_a_page(ops: Ops) -> None:
    """No index by number: each page reads at most `scan_limit` jobs, newest first, and says
    so; the next page searches older ones, down to the oldest."""
    oldest = ops.submit(org="org_a")
    for org in ("org_a", "org_b"):
        ops.submit(org=org, number=OTHER_NUMBER)
    ops.http.app.state.ops_page.data.scan_limit = 2
    ops.login()

    first = ops.http.get("/ops/numbers/%2B15551234567")
    second = ops.http.get(_next(first))

    def listed(page: Response) -> list[str]:
        return re.findall(r'<td class="id"><a href="/ops/jobs/(job_[0-9a-f]{32})"', page.text)

    assert listed(first) == []
    assert "0 found among 2 jobs read so far" in first.text
    assert listed(second) == [oldest]
    assert "1 found among 1 job read (all of them)" in second.text


def test_no_view_shows_a_password_its_ciphertext_or_a_key_secret(ops: Ops) -> None:
    job_id = ops.dead_letter()
    ops.login()
    job = ops.client.get(job_id)
    assert job.request is not None
    ciphertext = job.request.auth_password_ciphertext

    pages = [ops.http.get(path).text for path in (
        "/ops/dead-letters", "/ops/jobs", f"/ops/jobs/{job_id}", "/ops/numbers/%2B15551234567")]

    for text in pages:
        assert CANARY not in text
        assert ciphertext not in text
        assert ops.operator.api_secret not in text
    assert "password set (never shown)" in pages[2]


def test_reconcile_view_shows_the_latest_report_or_says_there_is_none(ops: Ops) -> None:
    """No report yet is said plainly; a report's findings are listed, a secret drift without
    its values."""
    ops.login()
    assert "No reconcile report yet" in ops.http.get("/ops/reconcile").text
    ops.reports.append({
        "orphans": [{"kind": "outbound_trunk", "livekit_id": "ST_orphan1", "number": NUMBER,
                     "job_id": None, "org_id": "org_a", "reason": "a duplicate"}],
        "missing": [],
        "drifted": [{"kind": "outbound_trunk", "livekit_id": "ST_drift1", "number": NUMBER,
                     "job_id": "job_" + "1" * 32, "org_id": "org_a", "reason": "changed",
                     "fields": [{"field": "auth_password", "secret": True, "changed": True},
                                {"field": "address", "expected": "a.example",
                                 "actual": "b.example"}]}],
        "summary": {"orphans": 1, "missing": 0, "drifted": 1, "in_flight": 0,
                    "started_at": "2026-12-01T21:00:00+00:00", "duration_seconds": 0.25,
                    "warnings": []},
    })

    page = ops.http.get("/ops/reconcile").text

    assert "ST_orphan1" in page and "ST_drift1" in page
    assert "changed (value never shown)" in page
    assert "a.example → b.example" in page
    assert "1 orphans, 0 missing, 1 drifted" in page


def test_reconcile_view_reads_the_report_the_reconciler_saved_last(ops: Ops) -> None:
    """Without an override the view shows worker.reconcile's latest saved report."""
    app = ops_app(ops.client, ops.keys)
    report = Report(missing=[Finding(category=Category.MISSING, kind=Kind.DISPATCH_RULE,
                                     livekit_id="SDR_gone1", number=NUMBER, job_id=None,
                                     org_id="org_a", reason="the rule is gone")])
    save_report(ops.client.store, report, source="beat")
    ops.http = Http(app)
    ops.login()

    page = ops.http.get("/ops/reconcile").text

    assert "SDR_gone1" in page and "the rule is gone" in page
    assert "by the scheduled task (beat)" in page
    assert "0 orphans, 1 missing, 0 drifted" in page


# --------------------------------------------------------------------------- timeline


def test_timeline_says_what_each_step_did_and_in_which_attempt() -> None:
    """Created vs adopted, undone by compensation, not run; each step placed in the attempt it
    finished in; the wait before each attempt; one band per attempt in the drawing."""
    start = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)

    def at(seconds: float) -> datetime:
        return start + timedelta(seconds=seconds)

    job = Job(
        job_id="job_" + "a" * 32, org_id="org_a", number=NUMBER, request_fingerprint="f",
        kind="create", state=JobState.SUCCEEDED, run=2, attempts=1, created_at=start,
        request={"name": "n", "number": NUMBER, "outbound_pstn": "sip.gateway.com",
                 "auth_user_name": "u", "auth_password_ciphertext": "c"},
        history=[Attempt(number=1, started_at=at(0), finished_at=at(1),
                         error=JobError(code="livekit_timeout", message="slow",
                                        retryable=True)),
                 Attempt(number=2, started_at=at(2), finished_at=at(3),
                         error=JobError(code="number_conflict", message="held",
                                        retryable=False)),
                 Attempt(number=3, started_at=at(10), finished_at=at(12))],
        steps={
            StepName.INBOUND_TRUNK: StepRecord(status=StepStatus.DONE, resource_id="ST_in",
                                               adopted=True, started_at=at(10.5),
                                               finished_at=at(11)),
            StepName.OUTBOUND_TRUNK: StepRecord(status=StepStatus.DONE, resource_id="ST_out",
                                                started_at=at(0.1), finished_at=at(0.6)),
            StepName.DISPATCH_RULE: StepRecord(status=StepStatus.COMPENSATED,
                                               resource_id="SDR_1", started_at=at(2.1),
                                               finished_at=at(2.2)),
            StepName.PHONE_NUMBER: StepRecord(),
        },
        finished_at=at(12), updated_at=at(12))

    drawn = timeline(job)

    steps = {s.name: (s.outcome, s.attempt, s.seconds) for s in drawn.steps}
    assert steps == {
        "inbound_trunk": ("found on LiveKit and adopted", 3, pytest.approx(0.5)),
        "outbound_trunk": ("created", 1, pytest.approx(0.5)),
        "dispatch_rule": ("created, then deleted by compensation", 2, pytest.approx(0.1)),
        "phone_number": ("not run", None, None),
    }
    assert [(a.number, a.error_code, a.waited) for a in drawn.attempts] == [
        (1, "livekit_timeout", None), (2, "number_conflict", pytest.approx(1)),
        (3, None, pytest.approx(7))]
    assert drawn.seconds == pytest.approx(12)
    assert [(bar.label, bar.kind) for bar in drawn.bars] == [
        ("attempt 1 · 1.00 s", "attempt-failed"), ("  outbound_trunk · 500 ms", "step-done"),
        ("attempt 2 · 1.00 s", "attempt-failed"),
        ("  dispatch_rule · 100 ms", "step-compensated"),
        ("attempt 3 · 2.00 s", "attempt"), ("  inbound_trunk · 500 ms", "step-adopted")]
    band, adopted = drawn.bars[4], drawn.bars[5]
    # Within attempt 3 (2 s), the adopted step starts a quarter in and takes a quarter.
    assert adopted.x == pytest.approx(band.x + band.width / 4)
    assert adopted.width == pytest.approx(band.width / 4)
    assert [bar.y for bar in drawn.bars] == sorted({bar.y for bar in drawn.bars})


# --------------------------------------------------------------------------- pieces


def _request(headers: dict[str, str], body: bytes = b"") -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/ops/x", "query_string": b"",
             "scheme": "http", "server": ("ops.test", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive)


@pytest.mark.parametrize("headers, allowed", [
    ({"host": "ops.test"}, True),
    ({"host": "ops.test", "origin": "http://ops.test"}, True),
    ({"host": "ops.test", "origin": "http://ops.test", "sec-fetch-site": "same-origin"}, True),
    ({"host": "ops.test", "origin": "http://evil.test"}, False),
    ({"host": "ops.test", "origin": "http://ops.test.evil.test"}, False),
    ({"host": "ops.test", "origin": "null"}, False),
    ({"host": "ops.test", "origin": "http://ops.test/path"}, False),
    ({"host": "ops.test", "sec-fetch-site": "same-site"}, False),
    ({"host": "ops.test", "sec-fetch-site": "cross-site"}, False),
])
def test_same_origin(headers: dict[str, str], allowed: bool) -> None:
    assert same_origin(_request(headers)) is allowed


def test_tokens_match_only_equal_non_empty_tokens() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd")
    assert not tokens_match("abc", None)
    assert not tokens_match("", "")


def test_read_form_takes_only_small_urlencoded_forms() -> None:
    form = "application/x-www-form-urlencoded"
    assert run(read_form(_request({"content-type": form}, b"a=1&b=&a=2"))) == {"a": "1", "b": ""}
    with pytest.raises(FormError, match="form"):
        run(read_form(_request({"content-type": "application/json"}, b"{}")))
    with pytest.raises(FormError, match="too large"):
        run(read_form(_request({"content-type": form}, b"a=" + b"x" * MAX_FORM_BYTES)))
    with pytest.raises(FormError, match="UTF-8"):
        run(read_form(_request({"content-type": form}, b"a=\xff")))


def test_sessions_are_found_by_their_token_only_and_expire() -> None:
    redis = fakeredis.FakeRedis()
    sessions = OpsSessions(redis, ttl_seconds=60)

    token, session = sessions.open("sk_" + "a" * 32, now=1.0)

    assert sessions.get(token) == session
    assert sessions.get(token + "x") is None
    assert sessions.get(None) is None
    assert token.encode() not in redis_bytes(redis)
    assert 0 < redis.ttl(next(iter(redis.scan_iter()))) <= 60
    sessions.close(token)
    assert sessions.get(token) is None
