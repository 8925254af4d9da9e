"""The sans-I/O RESP half of the hot-path Redis client: packing and reply parsing."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import InvalidResponse, ResponseError

from hubbub.redis.resp import (
    Prefix,
    Replies,
    first_error,
    pack,
    pack_many,
    stream_entries,
    streams_reply,
)

args = st.lists(
    st.one_of(st.binary(), st.text(), st.integers(), st.floats(allow_nan=False)),
    min_size=1,
    max_size=8,
)


def test_pack_is_a_resp_array_of_bulk_strings() -> None:
    assert (
        pack(("XADD", b"s", 10, "*")) == b"*4\r\n$4\r\nXADD\r\n$1\r\ns\r\n$2\r\n10\r\n$1\r\n*\r\n"
    )


def test_pack_refuses_what_redis_would_get_wrong() -> None:
    with pytest.raises(TypeError):
        pack(("SET", "k", True))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pack(("SET", "k", None))  # type: ignore[arg-type]


@given(st.lists(args, min_size=1, max_size=5))
def test_packed_commands_parse_back_as_the_same_bytes(commands: list[list[object]]) -> None:
    """What Redis would read: each command an array of the arguments' bytes, in order."""
    reader = hiredis.Reader()
    reader.feed(pack_many(commands))  # type: ignore[arg-type]
    for command in commands:
        expected = [
            a if isinstance(a, bytes) else a.encode() if isinstance(a, str) else repr(a).encode()
            for a in command
        ]
        assert reader.gets() == expected
    assert reader.gets() is False


@given(st.binary(), st.integers(min_value=1, max_value=7))
def test_replies_split_anywhere_come_out_whole(payload: bytes, cut: int) -> None:
    wire = b"$%d\r\n%b\r\n:42\r\n*2\r\n+OK\r\n$-1\r\n" % (len(payload), payload)
    replies = Replies()
    got: list[object] = []
    for start in range(0, len(wire), cut):
        replies.feed(wire[start : start + cut])
        got.extend(replies)
    assert got == [payload, 42, [b"OK", None]]


def test_error_replies_are_response_errors_not_raised() -> None:
    replies = Replies()
    replies.feed(b"-ERR wrong number of arguments\r\n+OK\r\n")
    got = list(replies)
    assert isinstance(got[0], ResponseError)
    assert str(got[0]) == "ERR wrong number of arguments"
    assert got[1] == b"OK"
    assert first_error(got) is got[0]
    assert first_error([b"OK", 1]) is None


def test_garbage_is_a_protocol_error() -> None:
    replies = Replies()
    replies.feed(b"?what\r\n")
    with pytest.raises(InvalidResponse):
        list(replies)


def test_stream_replies_become_ids_and_field_maps() -> None:
    raw = [[b"s1", [[b"1-0", [b"k", b"a", b"f", b"x"]], [b"1-1", None]]], [b"s2", []]]
    assert streams_reply(raw) == [
        (b"s1", [(b"1-0", {b"k": b"a", b"f": b"x"}), (b"1-1", {})]),
        (b"s2", []),
    ]
    assert streams_reply(None) == []
    assert stream_entries([[b"2-0", [b"a", b"b"]]]) == [(b"2-0", {b"a": b"b"})]


def test_a_prefix_packs_like_the_whole_command() -> None:
    prefix = Prefix("XADD", "s", "MAXLEN", "~", 1000, "*")
    assert prefix.pack([b"k", b"v"]) == pack(("XADD", "s", "MAXLEN", "~", 1000, "*", b"k", b"v"))
