"""Keyset pagination over Redis sorted sets, newest (highest score) first.

A cursor is the (score, member) of the last item shown, so a page is stable while new items
arrive: nothing is shown twice and nothing present throughout is skipped, unlike an offset.
Several sorted sets (one per organisation) page as one merged sequence; the order is
(score, member), both descending, the same order Redis gives one set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from redis import Redis

T = TypeVar("T")

Position = tuple[float, str]


class BadCursor(ValueError):
    pass


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    # None when there is nothing after this page.
    next_cursor: str | None


def encode_cursor(position: Position) -> str:
    return f"{position[0]!r}~{position[1]}"


def decode_cursor(cursor: str) -> Position:
    score, sep, member = cursor.partition("~")
    try:
        value = float(score)
    except ValueError:
        value = float("nan")
    if not sep or not member or not math.isfinite(value):
        raise BadCursor(f"{cursor!r} is not a cursor printed by this command")
    return value, member


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _after(redis: Redis, key: str, position: Position | None, count: int) -> list[Position]:
    """Up to `count` entries of `key` that come after `position`, in page order."""
    found: list[Position] = []
    if position is None:
        top = "+inf"
    else:
        score, member = position
        # Same score, smaller member: Redis orders ties by member, descending when reversed.
        ties = cast(list[tuple[bytes, float]],
                    redis.zrangebyscore(key, score, score, withscores=True))
        found += [(s, m) for m, s in ((_text(m), s) for m, s in ties) if m < member]
        top = f"({score!r}"
    rows = cast(list[tuple[bytes, float]],
                redis.zrevrangebyscore(key, top, "-inf", start=0, num=count, withscores=True))
    found += [(float(s), _text(m)) for m, s in rows]
    found.sort(reverse=True)
    return found[:count]


def zset_page(
    redis: Redis,
    keys: Sequence[str],
    *,
    cursor: str | None,
    limit: int,
    load: Callable[[list[str]], list[T | None]],
) -> Page[T]:
    """One page of at most `limit` loaded items from the merged sorted sets.

    `load` turns members into items, None for members to leave out (a filter, or a record
    that is gone): the page is filled from further entries, so filters do not shrink it.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    position = decode_cursor(cursor) if cursor else None
    items: list[T] = []
    while len(items) < limit:
        need = limit - len(items)
        merged: list[Position] = []
        for key in keys:
            merged += _after(redis, key, position, need)
        merged.sort(reverse=True)
        batch = merged[:need]
        if not batch:
            return Page(items, None)
        loaded = load([member for _, member in batch])
        for entry, item in zip(batch, loaded, strict=True):
            position = entry
            if item is not None:
                items.append(item)
        if len(batch) < need:
            return Page(items, None)
    assert position is not None  # noqa: S101  # the loop ran at least once
    return Page(items, encode_cursor(position))
