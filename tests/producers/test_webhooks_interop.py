"""Trunkline's Standard Webhooks signatures against the reference library (`standardwebhooks`):
each side verifies what the other signs, for any webhook id, timestamp and UTF-8 body."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from producers.webhooks import decode_secret, sign, verify

SECRET = "whsec_" + base64.b64encode(b"interop-key-material-32-bytes!!!").decode()
webhook_ids = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                      min_size=1, max_size=64)


@settings(max_examples=200, deadline=None)
@given(webhook_id=webhook_ids, timestamp=st.integers(min_value=0, max_value=2**33),
       data=st.text(max_size=300))
def test_both_sides_sign_the_same_bytes(webhook_id: str, timestamp: int, data: str) -> None:
    """The reference library and `producers.webhooks.sign` give the same signature header."""
    reference = Webhook(SECRET).sign(webhook_id, datetime.fromtimestamp(timestamp, UTC), data)
    assert sign(SECRET, webhook_id, timestamp, data.encode()) == reference


@settings(max_examples=50, deadline=None)
@given(webhook_id=webhook_ids, data=st.text(max_size=300))
def test_each_side_verifies_the_others_signature(webhook_id: str, data: str) -> None:
    """What the reference signs, Trunkline verifies; what Trunkline signs, the reference does."""
    now = int(time.time())
    body = data.encode()
    reference = Webhook(SECRET).sign(webhook_id, datetime.fromtimestamp(now, UTC), data)
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(now),
               "webhook-signature": reference}
    assert verify(decode_secret(SECRET), headers, body, now=now) == webhook_id
    ours = {**headers, "webhook-signature": sign(SECRET, webhook_id, now, body)}
    assert Webhook(SECRET).verify(body, ours, json_parse=False) is None
