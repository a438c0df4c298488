"""Unit tests for ops.bulk: reading CSV, JSON lines and JSON submissions."""

from __future__ import annotations

import pytest

from ops.bulk import BulkFileError, detect_format, is_single_object, read_rows

CSV = (
    "name,number,outboundPstn,authUserName,authPassword,allowedAddresses,metadata,"
    "idempotencyKey\n"
    "Main,+15551230001,sip.example.com,u1, pw with spaces ,203.0.113.1 198.51.100.0/24,"
    '"{""crm"": 1}",crm-1\n'
    "\n"
    "Second,+15551230002,sip.example.com,u2,pw2,,,\n"
    "Bad,+15551230003,sip.example.com,u3,pw3,,{not json,\n"
)


def test_csv_rows_with_lists_json_keys_and_line_numbers() -> None:
    """Cells become request fields; lists split, metadata parsed, keys taken out."""
    rows = read_rows(CSV, "csv")
    assert [r.line for r in rows] == [2, 4, 5]
    first = rows[0]
    assert first.request == {
        "name": "Main", "number": "+15551230001", "outboundPstn": "sip.example.com",
        "authUserName": "u1", "authPassword": " pw with spaces ",
        "allowedAddresses": ["203.0.113.1", "198.51.100.0/24"], "metadata": {"crm": 1}}
    assert first.idempotency_key == "crm-1"
    assert rows[1].request is not None and "allowedAddresses" not in rows[1].request
    assert rows[1].idempotency_key is None
    assert rows[2].request is None and rows[2].error == "metadata is not valid JSON"
    assert "pw3" not in (rows[2].error or "")


def test_csv_with_too_many_cells_or_duplicate_header() -> None:
    """A row wider than the header is one bad row; a repeated column name fails the file."""
    rows = read_rows("name,number\na,b,c\n", "csv")
    assert rows[0].error == "has 3 cells, the header names 2 columns"
    with pytest.raises(BulkFileError, match="twice"):
        read_rows("name,name\na,b\n", "csv")


def test_json_lines_json_arrays_and_one_object() -> None:
    """JSON lines keep their line numbers; a bad line is one bad row, not a failed file."""
    rows = read_rows('{"name": "a", "idempotencyKey": "k1"}\n\nnot json\n[1]\n', "jsonl")
    assert [(r.line, r.error) for r in rows] == [
        (1, None), (3, "not valid JSON"), (4, "must be a JSON object")]
    assert rows[0].request == {"name": "a"} and rows[0].idempotency_key == "k1"
    assert [r.request for r in read_rows('[{"a": 1}, {"b": 2}]', "json")] == [{"a": 1}, {"b": 2}]
    assert read_rows('{"a": 1}', "json")[0].request == {"a": 1}
    with pytest.raises(BulkFileError):
        read_rows("{oops", "json")


def test_format_detection() -> None:
    """The file name decides, else the content: `[` JSON, `{` JSON or JSON lines, else CSV."""
    assert detect_format("rows.csv", "{}") == "csv"
    assert detect_format("rows.ndjson", "") == "jsonl"
    assert detect_format("-", '{"a": 1}\n{"a": 2}\n') == "jsonl"
    assert detect_format("-", ' {"a": 1}') == "json"
    assert detect_format("-", "[]") == "json"
    assert detect_format("-", "name,number\n") == "csv"
    assert is_single_object('{"a": 1}', "json") and not is_single_object("[]", "json")
