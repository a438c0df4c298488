"""The phone-number lifecycle over HTTP, end to end: a real `trunkline api` on loopback ->
Redis -> a real worker -> the real livekit-server. List, get, PATCH and DELETE of
/api/phone-numbers, read back from LiveKit itself.

Every answer of every test passes through a hook that keeps its text; after each test none
may contain a password (the canaries below) or a ciphertext."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from producers.keys import ApiKeys
from tests.integration.apiserver import (
    ApiServer,
    assert_error,
    job_keys,
    start_api,
    wait_for_job,
)
from tests.integration.conftest import (
    CANARY_PASSWORD,
    SEED_REQUEST,
    Stack,
    WorkerFactory,
    everything_on_livekit,
    stream_events,
)
from tests.support.faultproxy import Action, FaultProxy, Rule
from worker.livekit import LiveKitSIP
from worker.store import RESULTS_STREAM, JobStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

CREATE = "/api/sio/createSipTrunkDispatch"
LIST = "/api/phone-numbers"
NUMBER = SEED_REQUEST["number"]
ROTATED = "canary-Rotated-Pw-0b6e42"
CANARIES = (CANARY_PASSWORD, ROTATED)


def path(number: str = NUMBER) -> str:
    return f"{LIST}/{number.replace('+', '%2B')}"


@pytest.fixture(scope="module")
def lifecycle_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = start_api(stack, tmp_path_factory.mktemp("api-lifecycle") / "api.log",
                       TRUNKLINE_API_RATE_LIMIT="0")
    yield server
    server.stop()
    log = server.log()
    assert not any(canary in log for canary in CANARIES)
    assert "Traceback" not in log


@pytest.fixture
def http(lifecycle_api: ApiServer) -> Iterator[httpx.Client]:
    """A client whose every answer is checked for the canaries after the test."""
    seen: list[str] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        seen.append(response.text)

    with httpx.Client(base_url=lifecycle_api.url, timeout=90,
                      event_hooks={"response": [keep]}) as client:
        yield client
    assert seen, "no request was made"
    for text in seen:
        assert not any(canary in text for canary in CANARIES), text[:500]
        assert "ciphertext" not in text
        assert "authPassword" not in text


Credentials = Callable[[str], dict[str, str]]


@pytest.fixture
def creds(redis_db: redis.Redis) -> Credentials:
    keys = ApiKeys(redis_db)
    made: dict[str, dict[str, str]] = {}

    def make(org: str) -> dict[str, str]:
        if org not in made:
            key = keys.create(org)
            made[org] = {"X-API-KEY": key.api_key, "X-API-SECRET": key.api_secret}
        return made[org]

    return make


def provision(http: httpx.Client, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Create a number through the seed endpoint (canary password); returns its GET view."""
    body = {**SEED_REQUEST, "authPassword": CANARY_PASSWORD, **fields}
    created = http.post(CREATE, json=body, headers=headers)
    assert created.status_code == 200, created.text
    got = http.get(path(body["number"]), headers=headers)
    assert got.status_code == 200, got.text
    view: dict[str, Any] = got.json()["data"]
    assert view["inboundTrunkId"] == created.json()["data"]
    return view


def snapshot(livekit: LiveKitSIP, view: dict[str, Any]) -> dict[str, Any]:
    """Everything LiveKit holds for one number, password included (for comparisons only)."""
    outbound = livekit.get_outbound_trunk(view["outboundTrunkId"])
    (rule,) = livekit.list_dispatch_rules(rule_ids=[view["dispatchRuleId"]])
    return {
        "inbound": livekit.get_inbound_trunk(view["inboundTrunkId"]).model_dump(mode="json"),
        "outbound": outbound.model_dump(mode="json"),
        "outbound_password": outbound.auth_password.get_secret_value(),
        "rule": rule.model_dump(mode="json"),
    }


def without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


# --------------------------------------------------------------------------- read


def test_list_pages_filters_and_gets(
    http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    livekit: LiveKitSIP,
) -> None:
    """3 numbers, limit 2: two pages, oldest first; the agent filter; GET by the URL-encoded
    number shows what LiveKit holds, with hasAuthPassword and never the password."""
    worker_factory()
    headers = creds("org_a")
    numbers = ["+15551234561", "+15551234562", "+15551234563"]
    views = [provision(http, headers, number=number, agentName=agent)
             for number, agent in zip(numbers, ["alpha", "beta", "alpha"], strict=True)]

    first = http.get(LIST, params={"limit": 2}, headers=headers)
    assert first.status_code == 200, first.text
    assert [n["number"] for n in first.json()["data"]] == numbers[:2]
    cursor = first.json()["next_cursor"]
    assert isinstance(cursor, str)
    second = http.get(LIST, params={"limit": 2, "cursor": cursor}, headers=headers)
    assert [n["number"] for n in second.json()["data"]] == numbers[2:]
    assert second.json()["next_cursor"] is None
    assert first.json()["data"] + second.json()["data"] == views

    alpha = http.get(LIST, params={"agentName": "alpha"}, headers=headers).json()
    assert [n["number"] for n in alpha["data"]] == [numbers[0], numbers[2]]
    assert alpha["next_cursor"] is None
    assert http.get(LIST, params={"agentName": "gamma"}, headers=headers).json()["data"] == []

    for number, view in zip(numbers, views, strict=True):
        assert view["hasAuthPassword"] is True
        inbound = livekit.get_inbound_trunk(view["inboundTrunkId"])
        assert inbound.numbers == [number]
        outbound = livekit.get_outbound_trunk(view["outboundTrunkId"])
        assert (outbound.address, outbound.auth_username, outbound.numbers) == (
            view["outboundPstn"], view["authUserName"], [number])
        assert outbound.auth_password.get_secret_value() == CANARY_PASSWORD
        (rule,) = livekit.list_dispatch_rules(rule_ids=[view["dispatchRuleId"]])
        assert rule.trunk_ids == [view["inboundTrunkId"]]
        assert rule.room_config is not None
        assert [a.agent_name for a in rule.room_config.agents] == [view["agentName"]]
    assert http.get(f"{LIST}/+15551234561", headers=headers).json()["data"] == views[0]
    assert_error(http.get(path("+15551234599"), headers=headers), 404, "number_not_found")
    assert_error(http.get(f"{LIST}/5551234561", headers=headers), 400, "validation_error")


# --------------------------------------------------------------------------- update


def test_patch_rotating_the_password_changes_only_livekits_password(
    http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """PATCH authPassword: LiveKit holds the new password on the same outbound trunk id, and
    nothing else changed, on LiveKit or in the record; one `updated` event."""
    worker_factory()
    headers = creds("org_a")
    view = provision(http, headers)
    before = snapshot(livekit, view)
    answer = http.patch(path(), json={"authPassword": ROTATED}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "success"
    job_id = answer.headers["trunkline-job-id"]
    after = snapshot(livekit, view)
    assert before["outbound_password"] == CANARY_PASSWORD
    assert after["outbound_password"] == ROTATED
    assert without(after, "outbound_password") == without(before, "outbound_password")
    assert everything_on_livekit(livekit) == {"inbound": [view["inboundTrunkId"]],
                                              "outbound": [view["outboundTrunkId"]],
                                              "rules": [view["dispatchRuleId"]]}
    assert without(answer.json()["data"], "updatedAt") == without(view, "updatedAt")
    assert http.get(path(), headers=headers).json()["data"] == answer.json()["data"]
    job = wait_for_job(http, headers, job_id)
    assert (job["kind"], job["state"]) == ("update", "succeeded")
    assert job["change"]["fields"] == ["auth_password"]
    (event,) = stream_events(redis_db, RESULTS_STREAM, job_id)
    assert json.loads(event["payload"])["type"] == "updated"


def test_a_refused_patch_keeps_the_previous_configuration(
    stack: Stack, http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    livekit: LiveKitSIP,
) -> None:
    """LiveKit refuses the rule update after the password changed: 422 with the job's error,
    and LiveKit and the record are as before."""
    headers = creds("org_a")
    direct = worker_factory()
    view = provision(http, headers)
    direct.stop()
    before = snapshot(livekit, view)
    with FaultProxy(stack.livekit_url) as proxy:
        proxy.add_rule(Rule(Action.ERROR, method="UpdateSIPDispatchRule", status=400,
                            twirp_code="invalid_argument", msg="room prefix refused", times=1))
        worker_factory(LIVEKIT_URL=proxy.url)
        answer = http.patch(path(), json={"authPassword": ROTATED, "agentName": "new-agent"},
                            headers=headers)
    error = assert_error(answer, 422, "livekit_rejected")
    assert "room prefix refused" in error["message"]
    assert error["job_id"] == answer.headers["trunkline-job-id"]
    assert snapshot(livekit, view) == before
    assert http.get(path(), headers=headers).json()["data"] == view


# --------------------------------------------------------------------------- release


def test_delete_leaves_nothing_and_a_second_delete_is_harmless(
    http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """DELETE: no rule, trunk or record left; GET 404; again: a successful no-op; the number
    can then be set up again."""
    worker_factory()
    headers = creds("org_a")
    view = provision(http, headers)
    answer = http.delete(path(), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == {"number": NUMBER, "released": True,
                                     "alreadyReleased": False,
                                     "phoneNumberId": view["phoneNumberId"]}
    assert everything_on_livekit(livekit) == {"inbound": [], "outbound": [], "rules": []}
    assert JobStore(redis_db).get_number(NUMBER) is None
    assert_error(http.get(path(), headers=headers), 404, "number_not_found")
    assert http.get(LIST, headers=headers).json()["data"] == []
    (event,) = stream_events(redis_db, RESULTS_STREAM, answer.headers["trunkline-job-id"])
    assert json.loads(event["payload"])["type"] == "released"

    again = http.delete(path(), headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["data"]["alreadyReleased"] is True
    assert everything_on_livekit(livekit) == {"inbound": [], "outbound": [], "rules": []}
    assert provision(http, headers)["inboundTrunkId"] != view["inboundTrunkId"]


def test_a_release_in_flight_409s_a_create(
    http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    redis_db: redis.Redis,
) -> None:
    """While a DELETE's job is queued, a create for the number is refused with a retryable
    409, for any organisation, and makes no job; after the release it succeeds."""
    mine, theirs = creds("org_a"), creds("org_b")
    direct = worker_factory()
    provision(http, mine)
    direct.stop()
    release = http.delete(path(), headers={**mine, "Prefer": "respond-async"})
    assert release.status_code == 202, release.text
    jobs = len(job_keys(redis_db))
    for headers in (mine, theirs):
        refused = http.post(CREATE, json=SEED_REQUEST, headers=headers)
        error = assert_error(refused, 409, "setup_in_flight")
        assert error["retryable"] is True
    assert len(job_keys(redis_db)) == jobs
    worker_factory()
    assert wait_for_job(http, mine, release.json()["data"]["job_id"])["state"] == "succeeded"
    created = http.post(CREATE, json=SEED_REQUEST, headers=theirs)
    assert created.status_code == 200, created.text


# --------------------------------------------------------------------------- scoping


def test_another_organisation_can_neither_read_change_nor_release(
    http: httpx.Client, creds: Credentials, worker_factory: WorkerFactory,
    livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    """org_b: 404 on GET and PATCH, exactly as for an unknown number; DELETE answers exactly
    like a DELETE of a number nobody holds (nothing to release); the number is not in its
    list; nothing changes on LiveKit and no job or event is made."""
    worker_factory()
    mine, theirs = creds("org_a"), creds("org_b")
    view = provision(http, mine)
    before = snapshot(livekit, view)
    jobs = len(job_keys(redis_db))
    events = redis_db.xlen(RESULTS_STREAM)
    unknown = assert_error(http.get(path("+15551234599"), headers=theirs), 404,
                           "number_not_found")
    for answer in (http.get(path(), headers=theirs),
                   http.patch(path(), json={"authPassword": ROTATED}, headers=theirs)):
        error = assert_error(answer, 404, "number_not_found")
        assert error["message"].replace(NUMBER, "+15551234599") == unknown["message"]
    theirs_deleted = http.delete(path(), headers=theirs)
    nobodys_deleted = http.delete(path("+15551234599"), headers=theirs)
    assert theirs_deleted.status_code == nobodys_deleted.status_code == 200
    assert theirs_deleted.text.replace(NUMBER, "+15551234599") == nobodys_deleted.text
    assert theirs_deleted.json()["data"]["alreadyReleased"] is True
    assert "trunkline-job-id" not in theirs_deleted.headers
    assert redis_db.xlen(RESULTS_STREAM) == events
    listed = http.get(LIST, headers=theirs)
    assert listed.status_code == 200
    assert listed.json()["data"] == []
    assert NUMBER not in listed.text
    assert len(job_keys(redis_db)) == jobs
    assert snapshot(livekit, view) == before
    assert http.get(path(), headers=mine).json()["data"] == view


def test_docs_list_the_lifecycle(lifecycle_api: ApiServer) -> None:
    """The served OpenAPI document has the four new operations."""
    spec = httpx.get(lifecycle_api.url + "/openapi.json", timeout=10).json()
    operations = {op["operationId"] for item in spec["paths"].values() for op in item.values()}
    assert {"listPhoneNumbers", "getPhoneNumber", "updatePhoneNumber",
            "releasePhoneNumber"} <= operations
