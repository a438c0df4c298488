"""Unit tests for producers.webhooks and the /webhooks/crm/{source} route."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from producers.webhooks import (
    SignatureError,
    WebhookConfigError,
    decode_secret,
    national_to_e164,
    parse_sources,
    resolve_pointer,
    sign,
    verify,
)
from tests.producers.conftest import CANARY, HarnessFactory, seed

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()
NOW = 1_700_000_000


def headers(body: bytes, *, secret: str = SECRET, webhook_id: str = "msg_1",
            timestamp: int = NOW) -> dict[str, str]:
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body)}


# --------------------------------------------------------------------------- verification


def test_a_signed_delivery_verifies() -> None:
    """A correct v1 signature over id.timestamp.body returns the webhook id."""
    body = b'{"a":1}'
    assert verify(decode_secret(SECRET), headers(body), body, now=NOW) == "msg_1"


@pytest.mark.parametrize(("change", "code"), [
    ({"body": b'{"a":2}'}, "invalid_signature"),
    ({"secret": OTHER}, "invalid_signature"),
    ({"timestamp": NOW - 301}, "stale_webhook"),
    ({"timestamp": NOW + 301}, "stale_webhook"),
    ({"drop": "webhook-signature"}, "missing_signature"),
    ({"drop": "webhook-id"}, "missing_signature"),
    ({"set": ("webhook-timestamp", "12.5")}, "invalid_signature"),
    ({"set": ("webhook-signature", "v2,abc v1,!!!")}, "invalid_signature"),
    ({"set": ("webhook-id", "has space")}, "invalid_signature"),
])
def test_bad_deliveries_are_refused(change: dict[str, Any], code: str) -> None:
    """Tampered, wrongly keyed, stale, future, unsigned or malformed deliveries are refused."""
    body = b'{"a":1}'
    sent = headers(body, secret=change.get("secret", SECRET),
                   timestamp=change.get("timestamp", NOW))
    if "drop" in change:
        del sent[change["drop"]]
    if "set" in change:
        name, value = change["set"]
        sent[name] = value
    with pytest.raises(SignatureError) as caught:
        verify(decode_secret(SECRET), sent, change.get("body", body), now=NOW)
    assert caught.value.code == code


def test_any_of_several_signatures_may_match() -> None:
    """During secret rotation a sender signs with both; one match is enough."""
    body = b"{}"
    sent = headers(body)
    sent["webhook-signature"] = sign(OTHER, "msg_1", NOW, body) + " " + sent["webhook-signature"]
    assert verify(decode_secret(SECRET), sent, body, now=NOW) == "msg_1"


def test_tolerance_is_inclusive_of_five_minutes() -> None:
    """Exactly 300 s old still verifies."""
    body = b"{}"
    assert verify(decode_secret(SECRET), headers(body, timestamp=NOW - 300), body, now=NOW)


# --------------------------------------------------------------------------- mapping


def test_json_pointer() -> None:
    """RFC 6901, with ~0/~1 escapes and array indices."""
    doc = {"a/b": {"m~n": [10, 20]}, "": 1}
    assert resolve_pointer(doc, "/a~1b/m~0n/1") == 20
    assert resolve_pointer(doc, "") == doc
    assert resolve_pointer(doc, "/") == 1
    for missing in ("/x", "/a~1b/m~0n/2", "/a~1b/m~0n/01", "/a~1b/m~0n/-", "no-slash"):
        with pytest.raises(LookupError):
            resolve_pointer(doc, missing)


def test_default_mapping_reads_top_level_or_data() -> None:
    """Seed field names from the top level, or from a `data` object; unknown keys ignored."""
    (source,) = parse_sources(json.dumps({"crm": {"secret": SECRET, "org_id": "o"}})).values()
    assert source.extract({**seed(), "type": "signup"}) == seed()
    assert source.extract({"type": "signup", "data": seed()}) == seed()
    assert source.extract([1]) == {}


def test_custom_mapping_and_default_region() -> None:
    """Pointers name other places; unnamed fields keep defaults; national numbers → E.164."""
    config = {"crm": {"secret": SECRET, "org_id": "o", "default_region": "gb",
                      "mapping": {"number": "/contact/phone", "name": "/company/name"}}}
    (source,) = parse_sources(json.dumps(config)).values()
    payload = {"company": {"name": "Acme"}, "contact": {"phone": "020 7946 0018"},
               "data": {k: v for k, v in seed().items() if k not in ("name", "number")}}
    request = source.extract(payload)
    assert request["name"] == "Acme"
    assert request["number"] == "+442079460018"
    assert request["outboundPstn"] == "sip.gateway.com"


def test_national_numbers() -> None:
    """Only numbers without '+' are reinterpreted; junk is passed on for the contract."""
    assert national_to_e164("(555) 123-4567", "US") == "+15551234567"
    assert national_to_e164("+15551234567", "GB") == "+15551234567"
    assert national_to_e164("letters", "US") == "letters"


@pytest.mark.parametrize(("config", "match"), [
    ("{", "not JSON"),
    ("[]", "JSON object"),
    ('{"bad name": {}}', "source name"),
    ('{"s": 1}', "must be an object"),
    ('{"s": {"secret": "nope", "org_id": "o"}}', "whsec_"),
    ('{"s": {"secret": "whsec_!!", "org_id": "o"}}', "base64"),
    ('{"s": {"secret": "whsec_AAAA", "org_id": "o"}}', "16 bytes"),
    (f'{{"s": {{"secret": "{SECRET}"}}}}', "org_id"),
    (f'{{"s": {{"secret": "{SECRET}", "org_id": "o", "x": 1}}}}', "unknown keys"),
    (f'{{"s": {{"secret": "{SECRET}", "org_id": "o", "default_region": "ZZ"}}}}', "region"),
    (f'{{"s": {{"secret": "{SECRET}", "org_id": "o", "mapping": {{"nom": "/a"}}}}}}',
     "not a request field"),
    (f'{{"s": {{"secret": "{SECRET}", "org_id": "o", "mapping": {{"name": "a"}}}}}}',
     "JSON pointer"),
])
def test_bad_source_config_is_refused(config: str, match: str) -> None:
    """Each configuration mistake is named."""
    with pytest.raises(WebhookConfigError, match=match):
        parse_sources(config)


def test_secret_never_in_repr() -> None:
    """The source's key is not shown when a source is printed."""
    (source,) = parse_sources(json.dumps({"crm": {"secret": SECRET, "org_id": "o"}})).values()
    assert "key=" not in repr(source)


# --------------------------------------------------------------------------- the route

PATH = "/webhooks/crm/crm"


def _harness(make_harness: HarnessFactory, **source: Any) -> Any:
    config = {"crm": {"secret": SECRET, "org_id": "org_crm", **source}}
    harness = make_harness(webhook_sources=parse_sources(json.dumps(config)))
    harness.clock[0] = NOW
    return harness


def _post(harness: Any, payload: Any, *, sent: dict[str, str] | None = None,
          body: bytes | None = None, path: str = PATH) -> Any:
    raw = body if body is not None else json.dumps(payload).encode()
    return harness.request("POST", path, content=raw, org=None,
                           headers=sent if sent is not None else headers(raw))


def test_signed_signup_is_queued_once(make_harness: HarnessFactory) -> None:
    """202 after the job is stored; the same webhook-id again is 200 with the same job."""
    harness = _harness(make_harness)
    first = _post(harness, {"type": "signup", "data": seed()})
    assert first.status == 202, first.body
    job_id = first.body["data"]["job_id"]
    assert harness.job_ids("org_crm") == [job_id]
    again = _post(harness, {"type": "signup", "data": seed()})
    assert again.status == 200
    assert again.body["data"] == {**first.body["data"], "duplicate": True,
                                  "state": again.body["data"]["state"]}
    assert harness.job_ids("org_crm") == [job_id]
    assert harness.client.submits == 1
    job = harness.client.get(job_id)
    assert job.source == "webhook:crm"


def test_refused_deliveries_create_nothing(make_harness: HarnessFactory) -> None:
    """Bad, stale and tampered deliveries are 401; an unknown source is 404."""
    harness = _harness(make_harness)
    raw = json.dumps(seed()).encode()
    tampered = raw.replace(b"Main", b"Evil")
    cases = [
        (headers(raw, secret=OTHER), raw, 401, "invalid_signature"),
        (headers(raw, timestamp=NOW - 600), raw, 401, "stale_webhook"),
        (headers(raw), tampered, 401, "invalid_signature"),
        ({}, raw, 401, "missing_signature"),
    ]
    for sent, body, status, code in cases:
        answer = _post(harness, None, sent=sent, body=body)
        assert (answer.status, answer.body["error"]["code"]) == (status, code)
    unknown = _post(harness, seed(), path="/webhooks/crm/nope")
    assert unknown.status == 404
    assert unknown.body["error"]["code"] == "unknown_webhook_source"
    assert harness.all_job_keys() == []


def test_webhook_validation_errors_name_fields(make_harness: HarnessFactory) -> None:
    """A signed but incomplete signup is a 400 naming every missing field."""
    harness = _harness(make_harness)
    answer = _post(harness, {"data": {"name": "x"}})
    assert answer.status == 400
    assert {d["field"] for d in answer.body["error"]["details"]} == {
        "number", "outboundPstn", "authUserName", "authPassword"}
    malformed = _post(harness, None, body=b"{oops")
    assert malformed.status == 400
    assert malformed.body["error"]["code"] == "malformed_json"


def test_webhook_id_reused_for_another_body_is_422(make_harness: HarnessFactory) -> None:
    """A webhook id signed again over another body does not make a second job."""
    harness = _harness(make_harness)
    assert _post(harness, seed()).status == 202
    answer = _post(harness, seed(name="Changed"))
    assert answer.status == 422
    assert answer.body["error"]["code"] == "idempotency_key_reused"
    assert len(harness.job_ids("org_crm")) == 1


def test_national_number_with_default_region(make_harness: HarnessFactory) -> None:
    """A CRM's national-format number is provisioned in E.164."""
    harness = _harness(make_harness, default_region="US")
    answer = _post(harness, seed(number="(555) 123-4567", authPassword=CANARY))
    assert answer.status == 202
    job = harness.client.get(answer.body["data"]["job_id"])
    assert job.result is not None
    assert job.result.number == "+15551234567"
    assert CANARY not in answer.text


def test_webhook_rate_limit_counts_the_sources_org(make_harness: HarnessFactory) -> None:
    """Verified deliveries count against the source's organisation."""
    config = {"crm": {"secret": SECRET, "org_id": "org_crm"}}
    harness = make_harness(webhook_sources=parse_sources(json.dumps(config)), rate_limit=1)
    harness.clock[0] = NOW
    assert _post(harness, seed()).status == 202
    raw = json.dumps(seed(number="+15551234568")).encode()
    answer = _post(harness, None, body=raw, sent=headers(raw, webhook_id="msg_2"))
    assert answer.status == 429


@pytest.mark.parametrize("key", [bytes(range(16)), bytes(range(17)), bytes(range(18)),
                                 bytes(range(24))])
def test_secret_may_be_unpadded_base64(key: bytes) -> None:
    """The Standard Webhooks reference libraries accept a secret without its '=' padding."""
    padded = base64.b64encode(key).decode()
    assert decode_secret("whsec_" + padded.rstrip("=")) == key
    assert decode_secret("whsec_" + padded) == key


@pytest.mark.parametrize("encoded", ["AAAA=AAAAAAAAAAAAAAAAAAA", "A" * 21 + "!", "A" * 25])
def test_secret_that_is_not_base64_is_refused(encoded: str) -> None:
    with pytest.raises(ValueError, match="followed by base64"):
        decode_secret("whsec_" + encoded)
