"""Unit tests for ops.paging: keyset pages over one or several sorted sets."""

from __future__ import annotations

import fakeredis
import pytest

from ops.paging import BadCursor, Page, zset_page


def collect(redis: fakeredis.FakeRedis, keys: list[str], limit: int,
            keep: set[str] | None = None) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(50):
        page: Page[str] = zset_page(
            redis, keys, cursor=cursor, limit=limit,
            load=lambda ids: [i if keep is None or i in keep else None for i in ids])
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
    raise AssertionError("no last page")


def test_pages_newest_first_with_ties_and_no_repeats() -> None:
    """Equal scores are ordered by member; every item appears exactly once."""
    redis = fakeredis.FakeRedis()
    redis.zadd("z", {"a": 1.0, "b": 2.0, "c": 2.0, "d": 2.0, "e": 3.0})
    pages = collect(redis, ["z"], 2)
    assert [i for p in pages for i in p] == ["e", "d", "c", "b", "a"]
    assert all(len(p) <= 2 for p in pages)


def test_several_sets_merge_into_one_order() -> None:
    """Pages over several organisations' sets merge by score."""
    redis = fakeredis.FakeRedis()
    redis.zadd("org1", {"j1": 1.0, "j4": 4.0})
    redis.zadd("org2", {"j2": 2.0, "j3": 3.0, "j5": 5.0})
    assert [i for p in collect(redis, ["org1", "org2"], 2) for i in p] == [
        "j5", "j4", "j3", "j2", "j1"]


def test_filters_fill_the_page_from_further_entries() -> None:
    """Items the loader leaves out do not shrink a page."""
    redis = fakeredis.FakeRedis()
    redis.zadd("z", {f"j{i}": float(i) for i in range(10)})
    pages = collect(redis, ["z"], 2, keep={"j9", "j5", "j4", "j0"})
    assert pages[0] == ["j9", "j5"] and pages[1] == ["j4", "j0"]


def test_new_items_do_not_shift_the_next_page() -> None:
    """An item added after page one was read does not repeat an item on page two."""
    redis = fakeredis.FakeRedis()
    redis.zadd("z", {"a": 1.0, "b": 2.0, "c": 3.0})
    first: Page[str] = zset_page(redis, ["z"], cursor=None, limit=2, load=list)
    redis.zadd("z", {"d": 4.0})
    second: Page[str] = zset_page(redis, ["z"], cursor=first.next_cursor, limit=2, load=list)
    assert first.items == ["c", "b"] and second.items == ["a"]


def test_bad_cursor_is_refused() -> None:
    """A cursor this command did not print is refused."""
    redis = fakeredis.FakeRedis()
    with pytest.raises(BadCursor):
        zset_page(redis, ["z"], cursor="garbage", limit=2, load=list)
