"""MessagePack hub protocol (hubbub.protocol.messagepack) and the codecs (hubbub.protocol.codec):
byte-exact encodings, the record splitter's bounds, and that no input raises anything but
ProtocolError."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubbub.protocol import messagepack as mp
from hubbub.protocol import signalr
from hubbub.protocol.codec import CODECS, JSON, MESSAGEPACK
from hubbub.protocol.signalr import (
    Ack,
    CancelInvocation,
    Close,
    Completion,
    HandshakeAccepted,
    HandshakeRejected,
    Invocation,
    Phase,
    Ping,
    ProtocolError,
    Sequence,
    ServerProtocol,
    StreamInvocation,
    StreamItem,
)
from hubbub.protocol.wsframe import binary_frame, text_frame


def rec(*items: Any) -> bytes:
    """A length-prefixed record of ``items``, packed as a client would."""
    body = msgpack.packb(list(items), use_bin_type=True)
    return mp.prefix(len(body)) + body


def parse(*items: Any) -> signalr.HubMessage:
    return mp.parse_message(msgpack.packb(list(items), use_bin_type=True))


# ---------------------------------------------------------------- encodings, byte for byte


class TestEncoding:
    def test_ping(self) -> None:
        # HubProtocol.md: Ping is [6]; 0x91 a one-item array, behind its length 1.
        assert MESSAGEPACK.ping == mp.PING_RECORD
        assert mp.PING_RECORD == bytes([0x02, 0x91, 0x06])

    def test_invocation_without_id(self) -> None:
        body = bytes([0x96, 0x01, 0x80, 0xC0, 0xA6]) + b"Target" + bytes([0x91, 0x2A, 0x90])
        assert mp.encode_invocation("Target", [42]) == bytes([len(body)]) + body

    def test_invocation_with_id(self) -> None:
        body = bytes([0x96, 0x01, 0x80, 0xA3]) + b"xyz" + bytes([0xA1]) + b"T" + bytes([0x90, 0x90])
        assert mp.encode_invocation("T", [], "xyz") == bytes([len(body)]) + body

    def test_completions(self) -> None:
        head = bytes([0x03, 0x80, 0xA3]) + b"xyz"
        void = bytes([0x94]) + head + bytes([0x02])
        assert mp.encode_completion("xyz") == bytes([len(void)]) + void
        result = bytes([0x95]) + head + bytes([0x03, 0x2A])
        assert mp.encode_completion("xyz", 42) == bytes([len(result)]) + result
        error = bytes([0x95]) + head + bytes([0x01, 0xA3]) + b"bad"
        assert mp.encode_completion("xyz", error="bad") == bytes([len(error)]) + error

    def test_close_ack_sequence(self) -> None:
        assert mp.encode_close() == bytes([0x04, 0x93, 0x07, 0xC0, 0xC2])
        assert mp.encode_close("x", True) == bytes([0x05, 0x93, 0x07, 0xA1, 0x78, 0xC3])
        assert mp.encode_ack(5) == bytes([0x03, 0x92, 0x08, 0x05])
        assert mp.encode_sequence(1) == bytes([0x03, 0x92, 0x09, 0x01])

    def test_prefix(self) -> None:
        assert mp.prefix(0) == b"\x00"
        assert mp.prefix(127) == b"\x7f"
        assert mp.prefix(128) == b"\x80\x01"
        assert mp.prefix(16384) == b"\x80\x80\x01"
        assert mp.prefix(mp.MAX_LENGTH) == b"\xff\xff\xff\xff\x07"

    def test_binary_frame(self) -> None:
        assert binary_frame(b"ab") == b"\x82\x02ab"
        assert binary_frame(b"a" * 200)[:4] == b"\x82\x7e\x00\xc8"
        assert binary_frame(b"a" * 70000)[:2] == b"\x82\x7f"
        assert text_frame(b"ab") == b"\x81\x02ab"


# ---------------------------------------------------------------- parsing


class TestParse:
    def test_every_type(self) -> None:
        assert parse(1, {}, None, "Send", ["hi", 1]) == Invocation("Send", ["hi", 1])
        assert parse(1, {"traceparent": "00-a"}, "7", "Send", [], ["s1"]) == Invocation(
            "Send", [], "7", ["s1"], "00-a"
        )
        assert parse(4, {}, "2", "Count", [3]) == StreamInvocation("Count", [3], "2")
        assert parse(2, {}, "2", {"a": 1}) == StreamItem("2", {"a": 1})
        assert parse(3, {}, "1", 2) == Completion("1")
        assert parse(3, {}, "1", 3, None) == Completion("1", None, has_result=True)
        assert parse(3, {}, "1", 3, [1]) == Completion("1", [1], has_result=True)
        assert parse(3, {}, "1", 1, "no") == Completion("1", error="no")
        assert parse(5, {}, "1") == CancelInvocation("1")
        assert parse(6) == Ping()
        assert parse(7, None) == Close()
        assert parse(7, "bye", True) == Close("bye", True)
        assert parse(8, 3) == Ack(3)
        assert parse(9, 4) == Sequence(4)

    def test_the_specs_examples(self) -> None:
        # HubProtocol.md, "MessagePack Headers Encoding", "Ack", "Sequence", "Close" examples.
        spec = "96 01 82 a1 78 a1 79 a1 7a a1 7a a3 78 79 7a a6 6d 65 74 68 6f 64 91 2a 90"
        assert mp.parse_message(bytes.fromhex(spec)) == Invocation("method", [42], "xyz", [], None)
        assert mp.parse_message(bytes.fromhex("92 08 cc 24")) == Ack(36)
        assert mp.parse_message(bytes.fromhex("92 09 cc 13")) == Sequence(19)
        assert mp.parse_message(bytes.fromhex("93 07 a3 78 79 7a c3")) == Close("xyz", True)
        assert mp.parse_message(bytes.fromhex("92 07 a3 78 79 7a")) == Close("xyz")
        assert mp.encode_close("xyz", True)[1:] == bytes.fromhex("93 07 a3 78 79 7a c3")
        # "Ping is always exactly encoded as 0x91 0x06"
        assert mp.PING_RECORD[1:] == bytes.fromhex("91 06")
        # The VarInt examples.
        assert mp.prefix(0x35) == b"\x35" and mp.prefix(5248) == b"\x80\x29"
        assert mp.VarintRecordBuffer(1 << 20).feed(b"\x0bHello\nWorld\x02\x01\x02") == [
            b"Hello\nWorld",
            b"\x01\x02",
        ]

    def test_trailing_items_ignored(self) -> None:
        assert parse(6, "extra", 1) == Ping()
        assert parse(1, {}, None, "S", [], [], "more") == Invocation("S", [])
        assert parse(8, 3, None) == Ack(3)

    def test_nil_headers_are_no_headers(self) -> None:
        assert parse(1, None, "1", "S", []) == Invocation("S", [], "1")

    def test_binary_and_non_str_keys_in_arguments_parse(self) -> None:
        # The gateway refuses them upstream (JSON cannot carry them); parsing is not the place.
        assert parse(1, {}, None, "S", [b"\x00", {1: 2}]) == Invocation("S", [b"\x00", {1: 2}])

    @pytest.mark.parametrize(
        "items",
        [
            [],
            [0],
            [10],
            [True],
            ["1"],
            [1, {}, None, "S"],  # too short
            [1, [], None, "S", []],  # headers not a map
            [1, 0, None, "S", []],
            [1, {1: "x"}, None, "S", []],  # non-str header key
            [1, {"a": 1}, None, "S", []],  # non-str header value
            [1, {}, 5, "S", []],  # id not a string
            [1, {}, None, 5, []],  # target not a string
            [1, {}, None, "S", {}],  # arguments not an array
            [1, {}, None, "S", [], [1]],  # stream ids not strings
            [4, {}, None, "S", []],  # a stream invocation needs an id
            [2, {}, "1"],
            [3, {}, "1"],
            [3, {}, "1", 3],  # result kind 3 without its result
            [3, {}, "1", 1, 5],  # error not a string
            [3, {}, "1", 4, 1],  # unknown result kind
            [3, {}, "1", True],
            [5, {}],
            [7],
            [7, 5],
            [7, None, 1],
            [8],
            [8, "1"],
            [9, True],
        ],
    )
    def test_malformed(self, items: list[Any]) -> None:
        with pytest.raises(ProtocolError):
            mp.parse_message(msgpack.packb(items))

    @pytest.mark.parametrize(
        "record",
        [
            b"",
            b"\xc1",  # never used
            b"\x92\x06",  # truncated
            b"\x91\x06\x06",  # extra data after the array
            b"\x06",  # not an array
            b"\x81\xa1a\x01",  # a map
            b"\x91\xd9\x05ab",  # str8 longer than the record
            b"\x91\xdd\xff\xff\xff\xff",  # array32 of 4 G items
            b"\x91\xa2\xff\xfe",  # invalid UTF-8
            b"\x91\x81\x90\x01",  # a map keyed by an array (unhashable)
            b"\x91" * 2000 + b"\x06",  # nesting deeper than the unpacker's stack
        ],
    )
    def test_garbage(self, record: bytes) -> None:
        with pytest.raises(ProtocolError):
            mp.parse_message(record)


# ---------------------------------------------------------------- the record splitter


class TestRecords:
    def test_several_records_in_one_feed(self) -> None:
        data = rec(6) + rec(8, 1) + rec(1, {}, None, "S", [1])
        records = mp.VarintRecordBuffer(1024).feed(data)
        assert [mp.parse_message(r) for r in records] == [Ping(), Ack(1), Invocation("S", [1])]

    def test_byte_by_byte(self) -> None:
        data = rec(1, {}, "1", "S", ["x" * 300]) + rec(6)
        buf = mp.VarintRecordBuffer(1024)
        out: list[bytes] = []
        for i in range(len(data)):
            out += buf.feed(data[i : i + 1])
        assert [mp.parse_message(r) for r in out] == [Invocation("S", ["x" * 300], "1"), Ping()]

    def test_record_over_the_limit_refused_at_its_prefix(self) -> None:
        buf = mp.VarintRecordBuffer(100)
        assert buf.feed(mp.prefix(100) + b"\x00" * 50) == []
        with pytest.raises(ProtocolError, match="maximum size of 100"):
            mp.VarintRecordBuffer(100).feed(mp.prefix(101))

    def test_overlong_prefix(self) -> None:
        with pytest.raises(ProtocolError, match="prefix"):
            mp.VarintRecordBuffer(1 << 40).feed(b"\xff\xff\xff\xff\x08")
        with pytest.raises(ProtocolError):
            mp.VarintRecordBuffer(1 << 40).feed(b"\x80\x80\x80\x80\x80\x01")
        # A prefix split across feeds is kept, not refused.
        buf = mp.VarintRecordBuffer(1 << 20)
        assert buf.feed(b"\x80") == []
        assert buf.feed(b"\x01") == []

    def test_empty_record_is_an_error_when_parsed(self) -> None:
        [record] = mp.VarintRecordBuffer(10).feed(b"\x00")
        with pytest.raises(ProtocolError):
            mp.parse_message(record)

    @settings(max_examples=200, deadline=None)
    @given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=5))
    def test_holds_at_most_max_size_plus_prefix(self, data: bytes, cuts: list[int]) -> None:
        buf = mp.VarintRecordBuffer(16)
        points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
        try:
            for a, b in itertools.pairwise(points):
                buf.feed(data[a:b])
                assert len(buf._buf) <= 16 + mp.MAX_PREFIX
        except ProtocolError:
            pass


# ---------------------------------------------------------------- properties

_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_msgpack_value = st.recursive(
    _scalar | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), inner)
    ),
    max_leaves=12,
)
_message_items = st.one_of(
    st.tuples(
        st.just(1),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
        st.none() | st.text(max_size=8),
        st.text(max_size=8),
        st.lists(_msgpack_value, max_size=3),
    ),
    st.tuples(st.just(3), st.just({}), st.text(max_size=8), st.just(3), _msgpack_value),
    st.tuples(st.just(3), st.just({}), st.text(max_size=8), st.just(2)),
    st.tuples(st.just(6)),
    st.tuples(st.just(7), st.none() | st.text(max_size=8), st.booleans()),
    st.tuples(st.sampled_from([8, 9]), st.integers(0, 2**40)),
    st.lists(_msgpack_value, max_size=6),  # mostly wrong
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    buf = mp.VarintRecordBuffer(256)
    try:
        for record in buf.feed(data):
            mp.parse_message(record)
    except ProtocolError:
        pass
    try:
        mp.parse_message(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(_message_items, min_size=1, max_size=5), st.data())
def test_split_points_do_not_change_the_messages(
    messages: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    stream = b"".join(rec(*items) for items in messages)
    whole = mp.VarintRecordBuffer(1 << 16).feed(stream)
    assert b"".join(mp.prefix(len(r)) + r for r in whole) == stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    buf = mp.VarintRecordBuffer(1 << 16)
    pieces: list[bytes] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        pieces += buf.feed(stream[a:b])
    assert pieces == whole

    def outcome(record: bytes) -> object:
        try:
            return mp.parse_message(record)
        except ProtocolError:
            return ProtocolError

    assert [outcome(r) for r in pieces] == [outcome(r) for r in whole]


_json_record = st.one_of(
    st.builds(signalr.encode_invocation, st.text(max_size=10), st.lists(_json, max_size=3)),
    st.builds(
        signalr.encode_invocation,
        st.text(max_size=10),
        st.lists(_json, max_size=3),
        st.text(max_size=10),
    ),
    st.builds(signalr.encode_completion, st.text(max_size=10), _json),
    st.builds(signalr.encode_completion, st.text(max_size=10), st.none(), st.text(max_size=10)),
    st.builds(
        lambda i: orjson.dumps({"type": 3, "invocationId": i, "result": None}) + b"\x1e",
        st.text(max_size=10),
    ),
    st.just(signalr.PING_RECORD),
    st.builds(signalr.encode_close, st.none() | st.text(max_size=10), st.booleans()),
    st.builds(JSON.ack, st.integers(0, 2**53)),
    st.builds(JSON.sequence, st.integers(0, 2**53)),
)


@settings(max_examples=500, deadline=None)
@given(_json_record)
def test_from_json_is_the_same_message(record: bytes) -> None:
    binary = MESSAGEPACK.from_json(record)
    [body] = MESSAGEPACK.reader(1 << 20).feed(binary)
    assert MESSAGEPACK.parse(body) == signalr.parse_message(record[:-1])
    assert JSON.from_json(record) is record


@pytest.mark.parametrize(
    "record",
    [
        b"nope\x1e",
        b"[1]\x1e",
        b'{"type":2,"invocationId":"1","item":1}\x1e',
        b'{"type":1,"target":5,"arguments":[]}\x1e',
        b'{"type":3,"invocationId":1}\x1e',
        b'{"type":7,"allowReconnect":1}\x1e',
        b'{"type":8,"sequenceId":"1"}\x1e',
        b'{"type":true,"target":"T","arguments":[]}\x1e',
        b'{"type":6.0}\x1e',
    ],
)
def test_from_json_refuses_what_it_cannot_carry(record: bytes) -> None:
    with pytest.raises(ProtocolError):
        MESSAGEPACK.from_json(record)


# ---------------------------------------------------------------- codecs and the connection


class TestCodecs:
    def test_lookup(self) -> None:
        assert CODECS["json"] is JSON and CODECS["messagepack"] is MESSAGEPACK
        assert not JSON.binary and MESSAGEPACK.binary
        assert JSON.frame(b"x") == text_frame(b"x")
        assert MESSAGEPACK.frame(b"x") == binary_frame(b"x")
        assert MESSAGEPACK.ping_frame == binary_frame(mp.PING_RECORD)

    def test_json_codec_is_todays_encoding(self) -> None:
        assert JSON.invocation("T", [1], "2") == signalr.encode_invocation("T", [1], "2")
        assert JSON.completion("1", error="e") == signalr.encode_completion("1", error="e")
        assert JSON.close("e", True) == signalr.encode_close("e", True)
        assert JSON.ping == signalr.PING_RECORD
        assert signalr.parse_message(JSON.ack(3)[:-1]) == Ack(3)
        assert signalr.parse_message(JSON.sequence(3)[:-1]) == Sequence(3)

    @pytest.mark.parametrize("codec", [JSON, MESSAGEPACK], ids=lambda c: c.name)
    def test_round_trips(self, codec: Any) -> None:
        reader = codec.reader(4096)
        stream = (
            codec.invocation("T", [1, "a", None, {"k": [1.5]}])
            + codec.invocation("T", [], "9")
            + codec.completion("1", [1, 2])
            + codec.completion("1")
            + codec.completion("1", error="e")
            + codec.ping
            + codec.close("bye", True)
            + codec.ack(7)
            + codec.sequence(8)
        )
        assert [codec.parse(r) for r in reader.feed(stream)] == [
            Invocation("T", [1, "a", None, {"k": [1.5]}]),
            Invocation("T", [], "9"),
            Completion("1", [1, 2], has_result=True),
            Completion("1"),
            Completion("1", error="e"),
            Ping(),
            Close("bye", True),
            Ack(7),
            Sequence(8),
        ]


HANDSHAKE_MP = b'{"protocol":"messagepack","version":1}\x1e'


class TestServerProtocol:
    def test_messagepack_handshake_and_records_in_the_same_frame(self) -> None:
        proto = ServerProtocol(1024)
        events = proto.receive(HANDSHAKE_MP + rec(1, {}, "1", "Send", ["hi"]) + rec(6))
        assert isinstance(events[0], HandshakeAccepted)
        assert events[1:] == [Invocation("Send", ["hi"], "1"), Ping()]
        assert proto.codec is MESSAGEPACK and proto.protocol == "messagepack"

    def test_record_bytes_that_look_like_a_separator(self) -> None:
        proto = ServerProtocol(1024)
        proto.receive(HANDSHAKE_MP[:10])
        data = HANDSHAKE_MP[10:] + rec(1, {}, None, "S", ["\x1e", 30])
        assert proto.receive(data)[1:] == [Invocation("S", ["\x1e", 30])]
        assert proto.receive(rec(7, "bye")) == [Close("bye")]
        assert proto.phase is Phase.CLOSED

    def test_json_unchanged(self) -> None:
        proto = ServerProtocol(1024)
        events = proto.receive(b'{"protocol":"json","version":1}\x1e{"type":6}\x1e')
        assert events[1:] == [Ping()] and proto.codec is JSON

    def test_json_garbage_after_a_messagepack_handshake(self) -> None:
        proto = ServerProtocol(1024)
        proto.receive(HANDSHAKE_MP)
        # JSON's '{' (0x7b) reads as a 123-byte record: it waits for the rest...
        assert proto.receive(b'{"type":6}\x1e') == []
        proto = ServerProtocol(1024)
        proto.receive(HANDSHAKE_MP)
        with pytest.raises(ProtocolError):  # ...and a complete one is not an array
            proto.receive(b"\x01{")

    def test_handshake_over_the_limit(self) -> None:
        proto = ServerProtocol(16)
        with pytest.raises(ProtocolError):
            proto.receive(b"x" * 17)

    def test_version_two_accepted_three_refused(self) -> None:
        # Version 2 adds Ack and Sequence (stateful reconnect).
        [event] = ServerProtocol(1024).receive(b'{"protocol":"messagepack","version":2}\x1e')
        assert isinstance(event, HandshakeAccepted)
        [event] = ServerProtocol(1024).receive(b'{"protocol":"messagepack","version":3}\x1e')
        assert isinstance(event, HandshakeRejected)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_anything_after_the_handshake_raises_only_protocol_error(self, data: bytes) -> None:
        proto = ServerProtocol(128)
        proto.receive(HANDSHAKE_MP)
        try:
            proto.receive(data)
        except ProtocolError:
            pass
