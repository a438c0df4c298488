"""Reading bulk submissions: CSV, JSON lines, a JSON array, or one JSON object.

CSV: a header row naming request fields (camelCase or snake_case, as the API spells them);
empty cells are left out; `allowedAddresses` holds addresses separated by spaces, commas or
semicolons; `metadata` holds a JSON object. An `idempotencyKey` (or `idempotency_key`)
column or JSON field is taken out of the request and used as the row's idempotency key.

Rows are numbered as a person finds them in the file: the line number for JSON lines and
for CSV (the header is line 1). Error messages never quote a row's content: rows carry
passwords.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["csv", "jsonl", "json"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "json")

_KEY_FIELDS = ("idempotencyKey", "idempotency_key")
_LIST_FIELDS = ("allowedAddresses", "allowed_addresses")
_JSON_FIELDS = ("metadata",)
_LIST_SPLIT = re.compile(r"[\s,;]+")


@dataclass(frozen=True)
class Row:
    line: int
    request: dict[str, Any] | None
    idempotency_key: str | None = None
    # Why the row could not be read (then `request` is None).
    error: str | None = None


class BulkFileError(ValueError):
    """The file as a whole cannot be read."""


def detect_format(name: str, text: str) -> Format:
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    stripped = text.lstrip()
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        try:
            json.loads(stripped)
        except ValueError:
            return "jsonl"
        return "json"
    return "csv"


def read_rows(text: str, fmt: Format) -> list[Row]:
    if fmt == "csv":
        return _csv_rows(text)
    if fmt == "jsonl":
        return _jsonl_rows(text)
    return _json_rows(text)


def is_single_object(text: str, fmt: Format) -> bool:
    """A file holding one JSON object: the shape `trunkline submit` always accepted."""
    return fmt == "json" and text.lstrip().startswith("{")


def _take_key(data: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    key: str | None = None
    for name in _KEY_FIELDS:
        if name in data:
            value = data.pop(name)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                return data, None, f"{name} must be a string"
            key = value
    return data, key, None


def _object_row(line: int, value: Any) -> Row:
    if not isinstance(value, dict):
        return Row(line, None, error="must be a JSON object")
    data, key, error = _take_key(dict(value))
    if error:
        return Row(line, None, error=error)
    return Row(line, data, key)


def _json_rows(text: str) -> list[Row]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BulkFileError(f"not valid JSON (line {exc_line(exc)})") from None
    if isinstance(value, list):
        return [_object_row(index, item) for index, item in enumerate(value, start=1)]
    return [_object_row(1, value)]


def _jsonl_rows(text: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            rows.append(Row(number, None, error="not valid JSON"))
            continue
        rows.append(_object_row(number, value))
    return rows


def _csv_rows(text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise BulkFileError(f"the CSV header cannot be read: {exc}") from None
    names = [h.strip().lstrip("\ufeff") for h in header]
    if not any(names):
        raise BulkFileError("the CSV file has an empty header row")
    if len(set(names)) != len(names):
        raise BulkFileError("the CSV header names a column twice")
    rows: list[Row] = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            rows.append(Row(reader.line_num, None, error=f"cannot be read as CSV ({exc})"))
            continue
        if any(c.strip() for c in cells):
            rows.append(_csv_row(names, cells, reader.line_num))


def _csv_row(names: list[str], cells: list[str], line: int) -> Row:
    if len(cells) > len(names):
        return Row(line, None, error=f"has {len(cells)} cells, the header names "
                                     f"{len(names)} columns")
    data: dict[str, Any] = {}
    for name, raw in zip(names, cells, strict=False):
        if not name or raw == "":
            continue
        if name in _LIST_FIELDS:
            data[name] = [part for part in _LIST_SPLIT.split(raw.strip()) if part]
        elif name in _JSON_FIELDS:
            try:
                data[name] = json.loads(raw)
            except ValueError:
                return Row(line, None, error=f"{name} is not valid JSON")
        else:
            data[name] = raw
    data, key, error = _take_key(data)
    return Row(line, None, error=error) if error else Row(line, data, key)


def exc_line(exc: ValueError) -> int:
    return int(getattr(exc, "lineno", 0) or 0)
