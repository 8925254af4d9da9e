"""Pages, cursors and patterns of :mod:`hubbub.redis.directory`, without Redis: ``paginate``
is fed the batches a scan would answer."""

from __future__ import annotations

import base64

import pytest

from hubbub.redis.directory import (
    MAX_CALLS,
    InvalidCursor,
    Page,
    decode_cursor,
    encode_cursor,
    glob_escape,
    paginate,
)


def scan(batches: dict[int, tuple[int, list[str]]]):  # type: ignore[no-untyped-def]
    """A scan over fixed batches: position -> (next position, members); counts its calls."""
    calls: list[int] = []

    async def batch(position: int) -> tuple[int, list[str]]:
        calls.append(position)
        following, found = batches[position]
        return following, list(found)

    return batch, calls


async def walk(batches: dict[int, tuple[int, list[str]]], limit: int) -> list[Page[str]]:
    batch, _ = scan(batches)
    pages = [await paginate(batch, str, limit, None)]
    while pages[-1].next is not None:
        pages.append(await paginate(batch, str, limit, pages[-1].next))
        assert len(pages) < 100
    return pages


async def test_a_whole_set_in_one_batch_is_cut_into_pages_exactly() -> None:
    members = [f"m{n:03}" for n in range(250)]
    pages = await walk({0: (0, members[::-1])}, 100)
    assert [len(p.items) for p in pages] == [100, 100, 50]
    assert [i for p in pages for i in p.items] == members  # sorted, each once


async def test_batches_are_followed_and_repeats_within_a_page_dropped() -> None:
    batches = {0: (7, ["b", "a"]), 7: (3, ["c", "a"]), 3: (0, ["d"])}
    pages = await walk(batches, 1000)
    assert [p.items for p in pages] == [["a", "b", "c", "d"]]
    pages = await walk(batches, 3)
    items = [i for p in pages for i in p.items]
    assert all(len(p.items) <= 3 for p in pages)
    assert set(items) == {"a", "b", "c", "d"}


async def test_a_page_makes_at_most_max_calls() -> None:
    batches = {n: (n + 1, []) for n in range(100)}  # nothing matches for a long way
    batch, calls = scan(batches)
    page = await paginate(batch, str, 10, None)
    assert page.items == [] and page.next is not None
    assert len(calls) == MAX_CALLS
    assert decode_cursor(page.next) == (MAX_CALLS, None)


async def test_the_limit_is_checked() -> None:
    batch, _ = scan({0: (0, ["a"])})
    for limit in (0, 1001):
        with pytest.raises(ValueError):
            await paginate(batch, str, limit, None)


def test_cursors_round_trip() -> None:
    for position, after in ((0, None), (2**64 - 1, None), (5, "a:b/c é"), (1, "x" * 1024)):
        assert decode_cursor(encode_cursor(position, after)) == (position, after)
    assert decode_cursor(None) == (0, None)


def _b64(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    ["", "a b", "abc=", "a+b", _b64(b"x"), _b64(b"-1"), _b64(b"+1"), _b64(b"1.5"),
     _b64(str(2**64).encode()), _b64(b"1" * 21), _b64(b"3:"), _b64(b"\xff"), _b64(b"\xd9\xa3"),
     "A" * 6001],
)  # fmt: skip
def test_cursors_we_did_not_make_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


def test_glob_characters_in_names_are_literal() -> None:
    assert glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"
    assert glob_escape("plain:{x}") == "plain:{x}"
