"""Hostile input at the contract: metadata bounded in size, depth and keys, valid Unicode only,
SIP-safe text; and whatever the contract accepts reads back from a stored job exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.worker.fake_livekit import build_job, request_data
from worker.contract import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEYS,
    InvalidRequest,
    parse_request,
)
from worker.records import Job
from worker.vault import Vault


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def refusal(**fields: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(request_data(**fields))
    return {error.field: error.message for error in caught.value.errors}


@pytest.mark.parametrize(("metadata", "says"), [
    ({"x": nested(250)}, f"at most {MAX_METADATA_DEPTH} deep"),
    ({"x": nested(MAX_METADATA_DEPTH)}, f"at most {MAX_METADATA_DEPTH} deep"),
    ({f"k{i}": i for i in range(MAX_METADATA_KEYS + 1)}, f"at most {MAX_METADATA_KEYS} keys"),
    ({"a": [{f"k{i}": 0} for i in range(MAX_METADATA_KEYS + 1)]}, "keys in all"),
    ({"x": "\ud800"}, "valid Unicode"),
    ({"\udfff": 1}, "valid Unicode"),
    ({"x": float("nan")}, "NaN"),
    ({"x": float("inf")}, "NaN or infinite"),
    ({"x": 2**64}, "64 bits"),
    ({"x": -(2**63) - 1}, "64 bits"),
    ({"x": "é" * (MAX_METADATA_BYTES // 2)}, f"at most {MAX_METADATA_BYTES} bytes"),
    ({"x": {1, 2}}, "only JSON values"),
])
def test_metadata_outside_the_bounds_is_refused_by_name(metadata: dict[str, Any],
                                                        says: str) -> None:
    assert says in refusal(metadata=metadata)["metadata"]


def test_metadata_at_the_bounds_is_accepted() -> None:
    deepest = {"x": nested(MAX_METADATA_DEPTH - 1)}
    widest = {f"k{i}": i for i in range(MAX_METADATA_KEYS)}
    for metadata in (deepest, widest, {"x": 2**63 - 1, "y": -(2**63), "z": "😀 ☎"}):
        assert parse_request(request_data(metadata=metadata)).metadata == metadata


@pytest.mark.parametrize("name", ["Main\r\nOffice", "Main\x00", "\x1b[31mred", "tab\there",
                                  "del\x7f", "line\u2028sep"])
def test_control_characters_in_the_name_are_refused(name: str) -> None:
    assert "control characters" in refusal(name=name)["name"]


@pytest.mark.parametrize("username", ['user"x', "user\\x", "a,b", "a:b", "a;b", "a?b", "a/b",
                                      "usér", "a<b>"])
def test_a_username_with_digest_syntax_is_refused(username: str) -> None:
    assert "digest header" in refusal(authUserName=username)["authUserName"]


@pytest.mark.parametrize("username", ["sip_user", "acme.user-1", "user@example.com",
                                      "a!$&'()*+=%~"])
def test_usual_usernames_are_accepted(username: str) -> None:
    assert parse_request(request_data(authUserName=username)).auth_user_name == username


# Unicode edges: lone surrogates (valid as JSON escapes, not as text), controls, NUL, the
# line and paragraph separators, non-characters, astral characters.
EDGE_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.text(st.sampled_from("\x00\r\n\x1b\x7f\u2028\u2029\ufeff\uffff\U0001f600\u0301"),
            min_size=1, max_size=6))
JSON_LEAVES = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
               | st.floats() | EDGE_TEXT)
JSON_VALUES = st.one_of(
    st.recursive(
        JSON_LEAVES,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(EDGE_TEXT, inner,
                                                                     max_size=4),
        max_leaves=30),
    st.integers(1, 300).map(nested),  # nesting on both sides of every limit
)


@settings(max_examples=300, deadline=None)
@given(metadata=st.dictionaries(EDGE_TEXT, JSON_VALUES, max_size=6),
       name=st.one_of(st.text(min_size=1, max_size=40), EDGE_TEXT))
def test_what_the_contract_accepts_reads_back_from_the_job_record_exactly(
    metadata: dict[str, Any], name: str,
) -> None:
    """Accepted or refused with a named field, never a record that will not load or that
    loads as something else."""
    vault = Vault((Vault.generate_key(),))
    try:
        parsed = parse_request(request_data(metadata=metadata, name=name))
    except InvalidRequest as refused:
        assert {error.field for error in refused.errors} <= {"metadata", "name"}
        return
    job = build_job(vault, metadata=metadata, name=name)
    loaded = Job.model_validate_json(job.model_dump_json())
    assert loaded.request is not None
    assert loaded.request.metadata == parsed.metadata
    assert loaded.request.name == parsed.name
    assert json.dumps(loaded.request.metadata, sort_keys=True) == json.dumps(
        parsed.metadata, sort_keys=True)
