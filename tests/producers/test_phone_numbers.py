"""Unit tests for /api/phone-numbers: list, get, update (PATCH) and release (DELETE).

The jobs run for real (JobRunner, the create/update/release sagas) against the in-memory fake
LiveKit, synchronously inside the request, through fakeredis and httpx's ASGITransport.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import fakeredis
import pytest

from producers.api.views import NUMBER_VIEW_FIELDS
from tests.producers.conftest import CANARY, Harness, HarnessFactory, Response, seed
from tests.worker.fake_livekit import Fault
from worker.records import Job, JobKind, JobState, new_job_id

NUMBER = "+15551234567"
PATH = "/api/phone-numbers/%2B15551234567"
LIST = "/api/phone-numbers"


@pytest.fixture
def live(make_harness: HarnessFactory) -> Harness:
    """A harness whose jobs run the real sagas on the fake LiveKit."""
    return make_harness(outcome="run")


def provision(harness: Harness, org: str = "org_a", **fields: Any) -> dict[str, Any]:
    answer = harness.create(seed(authPassword=CANARY, **fields), org=org)
    assert answer.status == 200, answer.body
    got = harness.request("GET", f"{LIST}/{fields.get('number', NUMBER).replace('+', '%2B')}",
                          org=org)
    assert got.status == 200, got.body
    data: dict[str, Any] = got.body["data"]
    return data


def livekit_state(harness: Harness) -> dict[str, Any]:
    fake = harness.fake
    return copy.deepcopy({"inbound": fake.inbound, "outbound": fake.outbound,
                          "rules": fake.rules})


def no_canary(*answers: Response) -> None:
    for answer in answers:
        assert CANARY not in answer.text
        assert "ciphertext" not in answer.text
        assert "authPassword" not in answer.text


# --------------------------------------------------------------------------- read


def test_get_shows_the_number_in_camel_case_without_the_password(live: Harness) -> None:
    """GET: every documented field, camelCase, the LiveKit ids; hasAuthPassword, never it."""
    view = provision(live, agentName="receptionist", allowedAddresses=["192.0.2.1"])
    assert tuple(view) == NUMBER_VIEW_FIELDS
    assert view["number"] == NUMBER
    assert view["authUserName"] == "sip_user"
    assert view["hasAuthPassword"] is True
    assert view["agentName"] == "receptionist"
    assert view["allowedAddresses"] == ["192.0.2.1"]
    assert view["transport"] == "auto"
    assert view["inboundTrunkId"] in live.fake.inbound
    assert view["outboundTrunkId"] in live.fake.outbound
    assert view["dispatchRuleId"] in live.fake.rules
    assert view["phoneNumberId"].startswith("pn_")
    assert isinstance(view["createdAt"], str)
    for path in (PATH, "/api/phone-numbers/+15551234567",
                 "/api/phone-numbers/%2B1%20555%20123%204567"):
        answer = live.request("GET", path)
        assert answer.status == 200, path
        assert answer.body["data"] == view
        no_canary(answer)


def test_unknown_and_other_orgs_numbers_are_the_same_404(live: Harness) -> None:
    """Another organisation's number answers exactly like a number nobody has."""
    provision(live)
    other = live.request("GET", PATH, org="org_b")
    unknown = live.request("GET", "/api/phone-numbers/%2B15551234599")
    assert other.status == unknown.status == 404
    assert other.body["error"]["code"] == unknown.body["error"]["code"] == "number_not_found"
    assert other.body["error"]["field"] == "number"
    assert other.body["message"].replace("4567", "4599") == unknown.body["message"]


@pytest.mark.parametrize("path", ["/api/phone-numbers/15551234567",
                                  "/api/phone-numbers/%2Babc", "/api/phone-numbers/%2B1555"])
def test_a_malformed_number_is_400_naming_it(harness: Harness, path: str) -> None:
    answer = harness.request("GET", path)
    assert answer.status == 400
    assert answer.body["error"]["code"] == "validation_error"
    assert [d["field"] for d in answer.body["error"]["details"]] == ["number"]


def test_list_pages_filters_and_is_scoped(live: Harness) -> None:
    """3 numbers, limit 2: two pages, oldest first; the agent filter; other orgs see none."""
    numbers = ["+15551234561", "+15551234562", "+15551234563"]
    for number, agent in zip(numbers, ["alpha", "beta", "alpha"], strict=True):
        provision(live, number=number, agentName=agent)
    first = live.request("GET", f"{LIST}?limit=2")
    assert first.status == 200, first.body
    assert [n["number"] for n in first.body["data"]] == numbers[:2]
    assert first.body["status"] == "success"
    cursor = first.body["next_cursor"]
    assert isinstance(cursor, str)
    second = live.request("GET", f"{LIST}?limit=2&cursor={cursor}")
    assert [n["number"] for n in second.body["data"]] == numbers[2:]
    assert second.body["next_cursor"] is None
    everything = live.request("GET", LIST)
    assert [n["number"] for n in everything.body["data"]] == numbers
    assert everything.body["next_cursor"] is None
    alpha = live.request("GET", f"{LIST}?agentName=alpha")
    assert [n["number"] for n in alpha.body["data"]] == [numbers[0], numbers[2]]
    alpha_paged = live.request("GET", f"{LIST}?agentName=alpha&limit=1")
    assert [n["number"] for n in alpha_paged.body["data"]] == [numbers[0]]
    rest = live.request("GET", f"{LIST}?agentName=alpha&limit=1"
                               f"&cursor={alpha_paged.body['next_cursor']}")
    assert [n["number"] for n in rest.body["data"]] == [numbers[2]]
    assert live.request("GET", f"{LIST}?agentName=nobody").body["data"] == []
    theirs = live.request("GET", LIST, org="org_b")
    assert theirs.status == 200
    assert theirs.body["data"] == []
    assert theirs.body["next_cursor"] is None
    no_canary(first, second, everything, alpha)


def forged_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"),
    ("cursor=abc", "cursor"), ("cursor=-1", "cursor"), ("cursor=" + "9" * 13, "cursor"),
    # Well-formed base64 of a score and a number that Redis or the E.164 check would refuse.
    *[(f"cursor={forged_cursor(text)}", "cursor") for text in (
        "nan +15551234567", "inf +15551234567", "-inf +15551234567", "1e999 +15551234567",
        "1.0 15551234567", "1.0 +1555 1234567", "1.0 +15551234567\n", "1.0 ",
        "1.0 +١٥٥٥١٢٣٤٥٦٧")],
])
def test_bad_list_parameters_are_400(harness: Harness, query: str, field: str) -> None:
    answer = harness.request("GET", f"{LIST}?{query}")
    assert answer.status == 400, answer.body
    assert answer.body["error"]["code"] == "validation_error"
    assert answer.body["error"]["field"] == field


def test_an_unreadable_record_is_skipped_and_the_rest_listed(live: Harness) -> None:
    """A corrupt phone-number record hides nothing else of the organisation's; GET of it is
    a 409 saying it cannot be read, not a 500."""
    numbers = ["+15551234561", "+15551234562", "+15551234563"]
    for number in numbers:
        provision(live, number=number)
    live.redis.set(live.client.store.keys.number(numbers[1]), b'{"number": "+1555123')
    listed = live.request("GET", f"{LIST}?limit=2")
    assert listed.status == 200, listed.body
    assert [n["number"] for n in listed.body["data"]] == [numbers[0], numbers[2]]
    one = live.request("GET", "/api/phone-numbers/%2B15551234562")
    assert one.status == 409, one.body
    assert one.body["error"]["code"] == "record_unreadable"


def test_a_release_between_pages_skips_nothing(live: Harness) -> None:
    """The cursor names the last number seen, so removing an earlier one shifts nothing."""
    numbers = ["+15551234561", "+15551234562", "+15551234563"]
    for number in numbers:
        provision(live, number=number)
    first = live.request("GET", f"{LIST}?limit=2")
    assert [n["number"] for n in first.body["data"]] == numbers[:2]
    released = live.request("DELETE", f"{LIST}/%2B15551234561")
    assert released.status == 200, released.body
    second = live.request("GET", f"{LIST}?limit=2&cursor={first.body['next_cursor']}")
    assert [n["number"] for n in second.body["data"]] == numbers[2:]
    assert second.body["next_cursor"] is None


@pytest.mark.parametrize(("method", "path"), [("GET", LIST), ("GET", PATH), ("PATCH", PATH),
                                              ("DELETE", PATH)])
def test_every_route_needs_credentials(harness: Harness, method: str, path: str) -> None:
    answer = harness.request(method, path, org=None, json_body={"name": "x"})
    assert answer.status == 401
    assert answer.body["error"]["code"] == "missing_credentials"


def test_redis_unreachable_is_503_on_every_route(make_harness: HarnessFactory) -> None:
    server = fakeredis.FakeServer()
    harness = make_harness(server=server)
    headers = harness.auth()
    server.connected = False
    for method, path in (("GET", LIST), ("GET", PATH), ("PATCH", PATH), ("DELETE", PATH)):
        answer = harness.request(method, path, org=None, headers=headers,
                                 json_body={"name": "x"})
        assert answer.status == 503, (method, path)
        assert answer.body["error"]["code"] == "redis_unavailable"


# --------------------------------------------------------------------------- update


def test_patch_rotates_the_password_in_place(live: Harness) -> None:
    """Only the outbound trunk's password changes; same ids; the answer is the new view."""
    before_view = provision(live)
    before = livekit_state(live)
    answer = live.request("PATCH", PATH, json_body={"authPassword": "rotated-" + CANARY})
    assert answer.status == 200, answer.body
    assert answer.body["message"] == "Phone number updated successfully"
    assert answer.body["data"]["hasAuthPassword"] is True
    after = livekit_state(live)
    trunk = before_view["outboundTrunkId"]
    assert after["outbound"][trunk]["auth_password"] == "rotated-" + CANARY
    assert before["outbound"][trunk]["auth_password"] == CANARY
    after["outbound"][trunk]["auth_password"] = CANARY
    assert after == before
    view = answer.body["data"]
    assert {k: v for k, v in view.items() if k != "updatedAt"} == {
        k: v for k, v in before_view.items() if k != "updatedAt"}
    (job,) = [j for j in live.jobs() if j.kind is JobKind.UPDATE]
    assert answer.headers["trunkline-job-id"] == job.job_id
    assert job.state is JobState.SUCCEEDED
    assert job.source == "api"
    no_canary(answer, live.request("GET", f"/api/jobs/{job.job_id}"))


def test_patch_changes_several_fields_and_get_shows_them(live: Harness) -> None:
    view = provision(live, agentName="first")
    changes = {"outboundPstn": "new.gateway.example:5070", "transport": "TCP",
               "authUserName": "new_user", "agentName": "second", "roomPrefix": "sales-",
               "allowedAddresses": ["192.0.2.0/24"], "name": "Renamed", "metadata": {"k": 1}}
    answer = live.request("PATCH", PATH, json_body=changes)
    assert answer.status == 200, answer.body
    got = live.request("GET", PATH).body["data"]
    assert got == answer.body["data"]
    assert (got["outboundPstn"], got["transport"], got["authUserName"], got["agentName"],
            got["roomPrefix"], got["allowedAddresses"], got["name"], got["metadata"]) == (
        "new.gateway.example:5070", "tcp", "new_user", "second", "sales-", ["192.0.2.0/24"],
        "Renamed", {"k": 1})
    assert (got["inboundTrunkId"], got["outboundTrunkId"], got["dispatchRuleId"]) == (
        view["inboundTrunkId"], view["outboundTrunkId"], view["dispatchRuleId"])
    removed = live.request("PATCH", PATH, json_body={"agentName": None})
    assert removed.status == 200
    assert removed.body["data"]["agentName"] is None


def test_patch_validation_names_every_field_and_makes_no_job(live: Harness) -> None:
    provision(live)
    jobs = len(live.job_ids())
    answer = live.request("PATCH", PATH, json_body={
        "number": "+15550000000", "transport": "carrier-pigeon", "outboundPstn": "sip:x@y",
        "authPasword": "typo"})
    assert answer.status == 400
    assert answer.body["error"]["code"] == "validation_error"
    assert {d["field"] for d in answer.body["error"]["details"]} == {
        "number", "transport", "outboundPstn", "authPasword"}
    both = live.request("PATCH", "/api/phone-numbers/123", json_body={"transport": "x"})
    assert {d["field"] for d in both.body["error"]["details"]} == {"number", "transport"}
    empty = live.request("PATCH", PATH, json_body={})
    assert empty.status == 400
    assert empty.body["error"]["details"][0]["field"] == "body"
    for content in (b"{broken", b"[1]", b""):
        bad = live.request("PATCH", PATH, content=content,
                           headers={"Content-Type": "application/json"})
        assert bad.status == 400, content
    xml = live.request("PATCH", PATH, content=b"<a/>", headers={"Content-Type": "text/xml"})
    assert xml.status == 415
    assert len(live.job_ids()) == jobs


def test_patch_of_unknown_or_other_orgs_number_is_404_and_makes_no_job(live: Harness) -> None:
    provision(live)
    before = livekit_state(live)
    for org, path in (("org_b", PATH), ("org_a", "/api/phone-numbers/%2B15551234599")):
        answer = live.request("PATCH", path, json_body={"authPassword": "x"}, org=org)
        assert answer.status == 404
        assert answer.body["error"]["code"] == "number_not_found"
    assert live.job_ids("org_b") == []
    assert len(live.job_ids()) == 1
    assert livekit_state(live) == before


def test_a_refused_patch_keeps_the_previous_configuration(live: Harness) -> None:
    """LiveKit refuses the rule update after the password changed: 422 with the job's error;
    LiveKit and the record are as before."""
    view = provision(live)
    before = livekit_state(live)
    live.fake.inject("UpdateSIPDispatchRule",
                     Fault.http(400, "room prefix refused", code="invalid_argument"))
    answer = live.request("PATCH", PATH, json_body={"authPassword": "rotated",
                                                    "agentName": "new-agent"})
    assert answer.status == 422, answer.body
    error = answer.body["error"]
    assert error["code"] == "livekit_rejected"
    assert "room prefix refused" in error["message"]
    assert error["job_id"] == answer.headers["trunkline-job-id"]
    assert livekit_state(live) == before
    assert live.request("GET", PATH).body["data"] == view


def test_patch_idempotency_key(live: Harness) -> None:
    """Same key and body: the same job, replayed; same key, other body (or a create): 422."""
    provision(live)
    headers = {"Idempotency-Key": "rotate-1"}
    first = live.request("PATCH", PATH, json_body={"authPassword": "a"}, headers=headers)
    again = live.request("PATCH", PATH, json_body={"authPassword": "a"}, headers=headers)
    assert first.status == again.status == 200
    assert first.headers["trunkline-job-id"] == again.headers["trunkline-job-id"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    other = live.request("PATCH", PATH, json_body={"authPassword": "b"}, headers=headers)
    assert other.status == 422
    assert other.body["error"]["code"] == "idempotency_key_reused"
    as_create = live.create(seed(number="+15551234599"), headers=headers)
    assert as_create.status == 422
    assert len([j for j in live.jobs() if j.kind is JobKind.UPDATE]) == 1
    bad = live.request("PATCH", PATH, json_body={"name": "x"},
                       headers={"Idempotency-Key": "has space"})
    assert bad.status == 400
    assert bad.body["error"]["field"] == "Idempotency-Key"


def test_patch_waits_like_a_create(make_harness: HarnessFactory) -> None:
    """respond-async: 202 at once with Location; a wait that runs out: 202 as well."""
    harness = make_harness(outcome="run")
    provision(harness)
    harness.client.outcome = None  # jobs now stay queued
    asynchronous = harness.request("PATCH", PATH, json_body={"name": "x"},
                                   headers={"Prefer": "respond-async"})
    assert asynchronous.status == 202
    job_id = asynchronous.body["data"]["job_id"]
    assert asynchronous.headers["location"] == f"/api/jobs/{job_id}"
    assert asynchronous.headers["preference-applied"] == "respond-async"
    waited = harness.request("PATCH", PATH, json_body={"name": "y"},
                             headers={"Prefer": "wait=0"})
    assert waited.status == 202
    assert waited.body["data"]["state"] == "queued"


# --------------------------------------------------------------------------- release


def test_delete_releases_everything_and_again_is_harmless(live: Harness) -> None:
    view = provision(live)
    answer = live.request("DELETE", PATH)
    assert answer.status == 200, answer.body
    assert answer.body["data"] == {"number": NUMBER, "released": True,
                                   "alreadyReleased": False,
                                   "phoneNumberId": view["phoneNumberId"]}
    assert livekit_state(live) == {"inbound": {}, "outbound": {}, "rules": {}}
    assert live.request("GET", PATH).status == 404
    assert live.request("GET", LIST).body["data"] == []
    again = live.request("DELETE", PATH)
    assert again.status == 200, again.body
    assert again.body["data"]["alreadyReleased"] is True
    assert again.body["message"] == "Phone number was already released; nothing to delete"
    # Nothing to release makes no job (and so no event).
    assert "trunkline-job-id" not in again.headers
    assert [j.kind for j in live.jobs()] == [JobKind.CREATE, JobKind.RELEASE]
    # Set up again afterwards, through the same API.
    assert live.create().status == 200
    no_canary(answer, again)


def test_delete_of_a_number_not_held_answers_alike_and_makes_nothing(live: Harness) -> None:
    """Another organisation's number and a number nobody holds get the same answer (but for
    the number itself), and neither makes a job or an event or touches LiveKit."""
    provision(live)
    before = livekit_state(live)
    events = live.client.store.redis.xlen(live.client.store.keys.results)
    theirs = live.request("DELETE", PATH, org="org_b")
    nobodys = live.request("DELETE", "/api/phone-numbers/%2B15551234599", org="org_b")
    assert theirs.status == nobodys.status == 200, theirs.body
    assert theirs.body["data"] == {"number": NUMBER, "released": True,
                                   "alreadyReleased": True, "phoneNumberId": None}
    assert json.dumps(theirs.body).replace("4567", "4599") == json.dumps(nobodys.body)
    for answer in (theirs, nobodys):
        assert "trunkline-job-id" not in answer.headers
        assert "location" not in answer.headers
    assert sorted(theirs.headers.keys()) == sorted(nobodys.headers.keys())
    assert live.job_ids("org_b") == []
    assert len(live.job_ids()) == 1
    assert live.client.store.redis.xlen(live.client.store.keys.results) == events
    assert livekit_state(live) == before
    assert live.request("GET", PATH).status == 200


def test_delete_with_an_idempotency_key_replays(live: Harness) -> None:
    provision(live)
    headers = {"Idempotency-Key": "release-1"}
    first = live.request("DELETE", PATH, headers=headers)
    again = live.request("DELETE", PATH, headers=headers)
    assert first.status == again.status == 200
    assert first.body == again.body
    assert again.headers["idempotent-replayed"] == "true"
    assert len([j for j in live.jobs() if j.kind is JobKind.RELEASE]) == 1


def test_delete_with_a_malformed_number_is_400(harness: Harness) -> None:
    answer = harness.request("DELETE", "/api/phone-numbers/abc")
    assert answer.status == 400
    assert answer.body["error"]["field"] == "number"
    assert harness.all_job_keys() == []


# --------------------------------------------------------------------------- 409 for creates


def test_an_update_or_release_in_flight_409s_a_create(make_harness: HarnessFactory) -> None:
    """While a release is in flight a create is refused retryably (setup_in_flight), whoever
    asks; once it has finished the number can be set up again."""
    harness = make_harness(outcome="run")
    provision(harness)
    harness.client.outcome = None  # jobs now stay queued
    update = harness.request("PATCH", PATH, json_body={"name": "x"},
                             headers={"Prefer": "respond-async"})
    assert update.status == 202
    mine = harness.create()
    assert mine.status == 409
    assert mine.body["error"]["code"] == "number_already_provisioned"
    release = harness.request("DELETE", PATH, headers={"Prefer": "respond-async"})
    assert release.status == 202
    for org in ("org_a", "org_b"):
        answer = harness.create(org=org)
        assert answer.status == 409
        assert answer.body["error"]["code"] == "setup_in_flight"
        assert answer.body["error"]["retryable"] is True
        assert "release" in answer.body["error"]["message"]
    assert release.body["data"]["job_id"] not in harness.create(org="org_b").text

    # The queued jobs run (update, then release); the number is free again.
    harness.client.outcome = "run"
    assert harness.client.runner is not None
    for job_id in (update.body["data"]["job_id"], release.body["data"]["job_id"]):
        harness.client.runner.run(job_id)
        assert harness.job(job_id).state is JobState.SUCCEEDED
    assert harness.client.store.jobs_in_flight(NUMBER) == []
    assert harness.create(org="org_b").status == 200


def test_an_update_in_flight_without_a_record_409s_a_create(
    make_harness: HarnessFactory,
) -> None:
    """A job in flight for a number with no record (any kind) makes a create 409."""
    harness = make_harness(outcome=None)
    # Only a stored job can be in flight for a number nobody holds (the API makes none).
    harness.client._store_and_enqueue(Job(
        job_id=new_job_id(), org_id="org_b", kind=JobKind.RELEASE, number=NUMBER,
        request_fingerprint="release", source="test"), None)
    answer = harness.create()
    assert answer.status == 409
    assert answer.body["error"]["code"] == "setup_in_flight"


# --------------------------------------------------------------------------- docs, secrets


def test_openapi_documents_the_lifecycle(harness: Harness) -> None:
    spec = harness.request("GET", "/openapi.json", org=None).body
    listing = spec["paths"]["/api/phone-numbers"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "cursor", "agentName"}
    one = spec["paths"]["/api/phone-numbers/{number}"]
    assert set(one) == {"get", "patch", "delete"}
    assert {op["operationId"] for op in one.values()} == {
        "getPhoneNumber", "updatePhoneNumber", "releasePhoneNumber"}
    for operation in (*one.values(), listing):
        assert operation["security"] == [{"ApiKey": [], "ApiSecret": []}]
    patch = one["patch"]
    schema = patch["requestBody"]["content"]["application/json"]["schema"]
    assert "number" not in schema["properties"]
    assert "required" not in schema
    assert schema["additionalProperties"] is False
    assert {"Idempotency-Key", "prefer"} <= {p["name"] for p in patch["parameters"]}
    assert {"200", "202", "400", "404", "422"} <= set(patch["responses"])
    view = spec["components"]["schemas"]["PhoneNumber"]
    assert set(view["properties"]) == set(NUMBER_VIEW_FIELDS)
    assert not any("password" in name.lower() and name != "hasAuthPassword"
                   for name in view["properties"])


def test_no_answer_ever_contains_the_password(live: Harness) -> None:
    """A canary password, through create, list, get, update, a job view and release."""
    provision(live)
    answers = [
        live.request("GET", LIST), live.request("GET", PATH),
        live.request("PATCH", PATH, json_body={"authPassword": CANARY + "-2", "name": "n"}),
        live.request("PATCH", PATH, json_body={"authPassword": CANARY, "transport": "bad"}),
    ]
    answers += [live.request("GET", f"/api/jobs/{job_id}") for job_id in live.job_ids()]
    answers.append(live.request("DELETE", PATH))
    no_canary(*answers)
    assert all(CANARY not in json.dumps(a.body) for a in answers)
