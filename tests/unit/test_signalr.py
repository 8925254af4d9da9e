"""SignalR JSON hub protocol: record framing, parsing, encoding and the server state machine."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbub.protocol.signalr import (
    HANDSHAKE_OK,
    PING_RECORD,
    RS,
    Ack,
    CancelInvocation,
    Close,
    Completion,
    HandshakeAccepted,
    HandshakeRejected,
    HandshakeRequest,
    Invocation,
    MessageType,
    Phase,
    Ping,
    ProtocolError,
    RecordBuffer,
    Sequence,
    ServerProtocol,
    StreamInvocation,
    StreamItem,
    encode_close,
    encode_completion,
    encode_handshake_error,
    encode_invocation,
    parse_handshake,
    parse_message,
)

HANDSHAKE = b'{"protocol":"json","version":1}' + RS


def rec(obj: object) -> bytes:
    """One JSON record without its separator, as parse_message takes it."""
    return orjson.dumps(obj)


def frame(*objs: object) -> bytes:
    return b"".join(orjson.dumps(o) + RS for o in objs)


def opened(max_size: int = 1024) -> ServerProtocol:
    proto = ServerProtocol(max_size)
    [event] = proto.receive(HANDSHAKE)
    assert isinstance(event, HandshakeAccepted)
    return proto


# ---------------------------------------------------------------- RecordBuffer


class TestRecordBuffer:
    def test_several_records_in_one_feed(self) -> None:
        buf = RecordBuffer(100)
        assert buf.feed(b"a" + RS + b"bb" + RS + b"ccc" + RS) == [b"a", b"bb", b"ccc"]
        assert buf.feed(RS) == [b""]  # nothing was held back

    def test_record_split_across_feeds(self) -> None:
        buf = RecordBuffer(100)
        assert buf.feed(b'{"type":') == []
        assert buf.feed(b"6}") == []
        assert buf.feed(RS + b'{"ty') == [b'{"type":6}']
        assert buf.feed(b'pe":6}' + RS) == [b'{"type":6}']
        assert buf.feed(RS) == [b""]  # nothing was held back

    def test_record_split_byte_by_byte(self) -> None:
        buf = RecordBuffer(100)
        data = frame({"type": 6}, {"type": 7})
        out: list[bytes] = []
        for i in range(len(data)):
            out += buf.feed(data[i : i + 1])
        assert out == [b'{"type":6}', b'{"type":7}']

    def test_separator_alone_yields_one_empty_record(self) -> None:
        assert RecordBuffer(10).feed(RS) == [b""]

    def test_empty_input(self) -> None:
        buf = RecordBuffer(10)
        assert buf.feed(b"") == []
        buf.feed(b"abc")
        assert buf.feed(b"") == []
        assert buf.feed(RS) == [b"abc"]

    def test_record_of_exactly_max_size_is_accepted(self) -> None:
        buf = RecordBuffer(5)
        assert buf.feed(b"x" * 5 + RS) == [b"x" * 5]
        assert buf.feed(b"y" * 5) == []
        assert buf.feed(RS) == [b"y" * 5]

    def test_oversize_complete_record_raises(self) -> None:
        buf = RecordBuffer(5)
        with pytest.raises(ProtocolError, match="maximum size of 5"):
            buf.feed(b"ok" + RS + b"x" * 6 + RS)

    def test_oversize_pending_tail_raises(self) -> None:
        buf = RecordBuffer(5)
        with pytest.raises(ProtocolError, match="maximum size"):
            buf.feed(b"x" * 6)

    def test_pending_tail_growing_past_max_across_feeds_raises(self) -> None:
        buf = RecordBuffer(5)
        assert buf.feed(b"xxx") == []
        with pytest.raises(ProtocolError):
            buf.feed(b"xxx")


# ---------------------------------------------------------------- parse_message


class TestParseMessage:
    def test_invocation(self) -> None:
        msg = parse_message(
            rec({"type": 1, "invocationId": "7", "target": "Send", "arguments": [1, "a", None]})
        )
        assert msg == Invocation("Send", [1, "a", None], "7", [])

    def test_invocation_without_invocation_id_is_non_blocking(self) -> None:
        msg = parse_message(rec({"type": 1, "target": "Send", "arguments": []}))
        assert isinstance(msg, Invocation)
        assert msg.invocation_id is None

    def test_invocation_with_stream_ids(self) -> None:
        msg = parse_message(
            rec({"type": 1, "target": "Up", "arguments": [], "streamIds": ["s1", "s2"]})
        )
        assert isinstance(msg, Invocation)
        assert msg.stream_ids == ["s1", "s2"]

    def test_invocation_arguments_default_to_empty(self) -> None:
        msg = parse_message(rec({"type": 1, "target": "Send"}))
        assert isinstance(msg, Invocation)
        assert msg.arguments == []

    def test_headers_are_ignored(self) -> None:
        with_headers = parse_message(
            rec({"type": 1, "headers": {"a": "b"}, "target": "T", "arguments": [1]})
        )
        without = parse_message(rec({"type": 1, "target": "T", "arguments": [1]}))
        assert with_headers == without
        assert parse_message(rec({"type": 6, "headers": {"x": "y"}})) == Ping()

    def test_stream_item(self) -> None:
        assert parse_message(rec({"type": 2, "invocationId": "1", "item": {"a": 1}})) == (
            StreamItem("1", {"a": 1})
        )

    def test_completion_with_result(self) -> None:
        msg = parse_message(rec({"type": 3, "invocationId": "1", "result": 42}))
        assert msg == Completion("1", result=42, error=None, has_result=True)

    def test_completion_with_null_result_has_result(self) -> None:
        msg = parse_message(rec({"type": 3, "invocationId": "1", "result": None}))
        assert isinstance(msg, Completion)
        assert msg.has_result is True
        assert msg.result is None

    def test_completion_with_error(self) -> None:
        msg = parse_message(rec({"type": 3, "invocationId": "1", "error": "boom"}))
        assert msg == Completion("1", error="boom", has_result=False)

    def test_completion_void(self) -> None:
        msg = parse_message(rec({"type": 3, "invocationId": "1"}))
        assert msg == Completion("1", result=None, error=None, has_result=False)

    def test_stream_invocation(self) -> None:
        msg = parse_message(
            rec({"type": 4, "invocationId": "9", "target": "Count", "arguments": [3]})
        )
        assert msg == StreamInvocation("Count", [3], "9")

    def test_cancel_invocation(self) -> None:
        assert parse_message(rec({"type": 5, "invocationId": "9"})) == CancelInvocation("9")

    def test_ping(self) -> None:
        assert parse_message(rec({"type": 6})) == Ping()

    def test_close_without_error(self) -> None:
        assert parse_message(rec({"type": 7})) == Close(None, False)

    def test_close_with_error_and_reconnect(self) -> None:
        msg = parse_message(rec({"type": 7, "error": "bye", "allowReconnect": True}))
        assert msg == Close("bye", True)

    def test_ack(self) -> None:
        assert parse_message(rec({"type": 8, "sequenceId": 5})) == Ack(5)

    def test_sequence(self) -> None:
        assert parse_message(rec({"type": 9, "sequenceId": 6})) == Sequence(6)

    def test_every_message_type_is_parsed(self) -> None:
        samples = {
            MessageType.INVOCATION: {"type": 1, "target": "t", "arguments": []},
            MessageType.STREAM_ITEM: {"type": 2, "invocationId": "1", "item": 1},
            MessageType.COMPLETION: {"type": 3, "invocationId": "1"},
            MessageType.STREAM_INVOCATION: {
                "type": 4,
                "invocationId": "1",
                "target": "t",
                "arguments": [],
            },
            MessageType.CANCEL_INVOCATION: {"type": 5, "invocationId": "1"},
            MessageType.PING: {"type": 6},
            MessageType.CLOSE: {"type": 7},
            MessageType.ACK: {"type": 8, "sequenceId": 1},
            MessageType.SEQUENCE: {"type": 9, "sequenceId": 1},
        }
        expected = {
            MessageType.INVOCATION: Invocation,
            MessageType.STREAM_ITEM: StreamItem,
            MessageType.COMPLETION: Completion,
            MessageType.STREAM_INVOCATION: StreamInvocation,
            MessageType.CANCEL_INVOCATION: CancelInvocation,
            MessageType.PING: Ping,
            MessageType.CLOSE: Close,
            MessageType.ACK: Ack,
            MessageType.SEQUENCE: Sequence,
        }
        assert set(samples) == set(MessageType)
        for kind, obj in samples.items():
            assert type(parse_message(rec(obj))) is expected[kind], kind

    @pytest.mark.parametrize(
        "obj",
        [
            {"type": 1, "arguments": []},  # no target
            {"type": 1, "target": 5, "arguments": []},
            {"type": 1, "target": "t", "arguments": "nope"},
            {"type": 1, "target": "t", "arguments": None},
            {"type": 1, "target": "t", "arguments": {"a": 1}},
            {"type": 1, "target": "t", "arguments": [], "invocationId": 3},
            {"type": 1, "target": "t", "arguments": [], "streamIds": "s1"},
            {"type": 1, "target": "t", "arguments": [], "streamIds": [1]},
            {"type": 1, "target": "t", "arguments": [], "streamIds": ["a", None]},
            {"type": 2, "item": 1},  # no invocationId
            {"type": 2, "invocationId": 1, "item": 1},
            {"type": 3},  # no invocationId
            {"type": 3, "invocationId": "1", "error": 5},
            {"type": 4, "target": "t", "arguments": []},  # no invocationId
            {"type": 4, "invocationId": "1", "arguments": []},  # no target
            {"type": 5},
            {"type": 5, "invocationId": ["1"]},
            {"type": 7, "error": {"m": "x"}},
            {"type": 8},
            {"type": 8, "sequenceId": "1"},
            {"type": 8, "sequenceId": 1.5},
            {"type": 8, "sequenceId": True},
            {"type": 9, "sequenceId": None},
        ],
    )
    def test_bad_field_types_raise(self, obj: dict[str, object]) -> None:
        with pytest.raises(ProtocolError):
            parse_message(rec(obj))

    @pytest.mark.parametrize("stream_ids", ["", 0, False, {}])
    def test_falsy_non_array_stream_ids_raise(self, stream_ids: object) -> None:
        with pytest.raises(ProtocolError, match="streamIds"):
            parse_message(rec({"type": 1, "target": "t", "arguments": [], "streamIds": stream_ids}))

    @pytest.mark.parametrize("value", [[1, 2], "text", 5, None, True, 1.5])
    def test_non_object_json_raises(self, value: object) -> None:
        with pytest.raises(ProtocolError, match="JSON object"):
            parse_message(rec(value))

    @pytest.mark.parametrize(
        "data", [b"", b"{", b"\xff\xfe", b"not json", b'{"type":1,}', b"{'type':1}", b"NaN"]
    )
    def test_garbage_raises(self, data: bytes) -> None:
        with pytest.raises(ProtocolError, match="not valid JSON"):
            parse_message(data)

    @pytest.mark.parametrize("kind", [0, 10, -1, 99])
    def test_unknown_type_raises(self, kind: int) -> None:
        with pytest.raises(ProtocolError, match=f"unknown message type {kind}"):
            parse_message(rec({"type": kind}))

    @pytest.mark.parametrize("kind", [True, False, "1", 1.0, None, [1]])
    def test_non_integer_type_raises(self, kind: object) -> None:
        # True == 1 in Python: it must not be taken for an Invocation.
        with pytest.raises(ProtocolError, match="integer 'type'"):
            parse_message(rec({"type": kind, "target": "t", "arguments": []}))

    def test_missing_type_raises(self) -> None:
        with pytest.raises(ProtocolError, match="integer 'type'"):
            parse_message(rec({"target": "t"}))


# ---------------------------------------------------------------- parse_handshake


class TestParseHandshake:
    def test_valid(self) -> None:
        assert parse_handshake(b'{"protocol":"json","version":1}') == HandshakeRequest("json", 1)

    def test_other_protocol_is_parsed_not_judged(self) -> None:
        assert parse_handshake(rec({"protocol": "messagepack", "version": 2})) == (
            HandshakeRequest("messagepack", 2)
        )

    @pytest.mark.parametrize(
        "obj",
        [
            {"version": 1},
            {"protocol": "", "version": 1},
            {"protocol": 1, "version": 1},
            {"protocol": "json"},
            {"protocol": "json", "version": "1"},
            {"protocol": "json", "version": True},
            {"protocol": "json", "version": 1.0},
        ],
    )
    def test_invalid(self, obj: dict[str, object]) -> None:
        with pytest.raises(ProtocolError, match="handshake"):
            parse_handshake(rec(obj))

    @pytest.mark.parametrize("data", [b"", b"[]", b"\x00garbage", b'"json"'])
    def test_not_an_object(self, data: bytes) -> None:
        with pytest.raises(ProtocolError):
            parse_handshake(data)


# ---------------------------------------------------------------- encoders


def one_record(data: bytes) -> bytes:
    assert data.endswith(RS)
    assert data.count(RS) == 1
    return data[:-1]


class TestEncoders:
    def test_constants(self) -> None:
        assert parse_message(one_record(PING_RECORD)) == Ping()
        assert orjson.loads(one_record(HANDSHAKE_OK)) == {}

    def test_invocation_round_trip(self) -> None:
        args = [1, "two", {"three": [3.5, None, True]}, "\u00e9\U0001f600"]
        msg = parse_message(one_record(encode_invocation("ReceiveMessage", args)))
        assert msg == Invocation("ReceiveMessage", args, invocation_id=None, stream_ids=[])

    def test_invocation_accepts_tuple_arguments(self) -> None:
        msg = parse_message(one_record(encode_invocation("T", ("a", 1))))
        assert isinstance(msg, Invocation)
        assert msg.arguments == ["a", 1]

    def test_record_separator_inside_a_string_is_escaped(self) -> None:
        data = encode_invocation("T", ["a\x1eb"])
        msg = parse_message(one_record(data))
        assert isinstance(msg, Invocation)
        assert msg.arguments == ["a\x1eb"]

    def test_completion_with_error(self) -> None:
        msg = parse_message(one_record(encode_completion("4", error="failed")))
        assert msg == Completion("4", result=None, error="failed", has_result=False)

    def test_completion_error_wins_over_result(self) -> None:
        obj = orjson.loads(one_record(encode_completion("4", result=1, error="failed")))
        assert "result" not in obj
        assert obj["error"] == "failed"

    def test_completion_with_result(self) -> None:
        msg = parse_message(one_record(encode_completion("4", result={"ok": [1, 2]})))
        assert msg == Completion("4", result={"ok": [1, 2]}, error=None, has_result=True)

    @pytest.mark.parametrize("result", [0, False, "", []])
    def test_completion_with_falsy_result_keeps_it(self, result: object) -> None:
        msg = parse_message(one_record(encode_completion("4", result=result)))
        assert msg == Completion("4", result=result, error=None, has_result=True)

    def test_completion_with_neither(self) -> None:
        data = encode_completion("4")
        assert orjson.loads(one_record(data)) == {"type": 3, "invocationId": "4"}
        assert parse_message(one_record(data)) == Completion("4", has_result=False)

    def test_close_plain(self) -> None:
        data = encode_close()
        assert orjson.loads(one_record(data)) == {"type": 7}
        assert parse_message(one_record(data)) == Close(None, False)

    def test_close_with_error(self) -> None:
        assert parse_message(one_record(encode_close("bad"))) == Close("bad", False)

    def test_close_with_allow_reconnect(self) -> None:
        data = encode_close(allow_reconnect=True)
        assert orjson.loads(one_record(data)) == {"type": 7, "allowReconnect": True}
        assert parse_message(one_record(data)) == Close(None, True)

    def test_close_with_error_and_allow_reconnect(self) -> None:
        assert parse_message(one_record(encode_close("drain", True))) == Close("drain", True)

    def test_handshake_error(self) -> None:
        assert orjson.loads(one_record(encode_handshake_error("nope"))) == {"error": "nope"}


# ---------------------------------------------------------------- ServerProtocol


class TestServerProtocol:
    def test_starts_in_handshake(self) -> None:
        proto = ServerProtocol(1024)
        assert proto.phase is Phase.HANDSHAKE
        assert proto.protocol is None

    def test_handshake_accepted(self) -> None:
        proto = ServerProtocol(1024)
        assert proto.receive(HANDSHAKE) == [HandshakeAccepted(HandshakeRequest("json", 1))]
        assert proto.phase is Phase.OPEN
        assert proto.protocol == "json"

    def test_handshake_split_across_frames(self) -> None:
        proto = ServerProtocol(1024)
        assert proto.receive(HANDSHAKE[:10]) == []
        assert proto.phase is Phase.HANDSHAKE
        [event] = proto.receive(HANDSHAKE[10:])
        assert isinstance(event, HandshakeAccepted)

    def test_handshake_then_messages_in_the_same_frame(self) -> None:
        proto = ServerProtocol(1024)
        events = proto.receive(
            HANDSHAKE + frame({"type": 6}, {"type": 1, "target": "Send", "arguments": ["hi"]})
        )
        assert events == [
            HandshakeAccepted(HandshakeRequest("json", 1)),
            Ping(),
            Invocation("Send", ["hi"]),
        ]
        assert proto.phase is Phase.OPEN

    def test_unsupported_protocol_rejected(self) -> None:
        proto = ServerProtocol(1024)
        [event] = proto.receive(frame({"protocol": "blazorpack", "version": 1}))
        assert isinstance(event, HandshakeRejected)
        assert "blazorpack" in event.error
        assert "not supported" in event.error
        assert proto.phase is Phase.CLOSED
        assert proto.protocol is None

    def test_wrong_version_rejected(self) -> None:
        proto = ServerProtocol(1024)
        [event] = proto.receive(frame({"protocol": "json", "version": 3}))
        assert isinstance(event, HandshakeRejected)
        assert "version 3" in event.error
        assert proto.phase is Phase.CLOSED

    @pytest.mark.parametrize("data", [b"garbage" + RS, b"[]" + RS, frame({"protocol": "json"})])
    def test_garbage_handshake_rejected_as_event(self, data: bytes) -> None:
        proto = ServerProtocol(1024)
        [event] = proto.receive(data)
        assert isinstance(event, HandshakeRejected)
        assert event.error.startswith("Invalid handshake:")
        assert proto.phase is Phase.CLOSED

    def test_records_after_rejected_handshake_are_not_parsed(self) -> None:
        proto = ServerProtocol(1024)
        events = proto.receive(frame({"protocol": "json", "version": 9}) + b"garbage" + RS)
        assert len(events) == 1
        assert isinstance(events[0], HandshakeRejected)

    def test_data_after_rejected_handshake_raises(self) -> None:
        proto = ServerProtocol(1024)
        proto.receive(b"garbage" + RS)
        with pytest.raises(ProtocolError, match="after the connection closed"):
            proto.receive(frame({"type": 6}))

    def test_close_message_ends_phase(self) -> None:
        proto = opened()
        events = proto.receive(frame({"type": 6}, {"type": 7, "error": "bye"}, {"type": 6}))
        assert events == [Ping(), Close("bye", False)]
        assert proto.phase is Phase.CLOSED

    def test_data_after_close_message_raises(self) -> None:
        proto = opened()
        proto.receive(frame({"type": 7}))
        with pytest.raises(ProtocolError, match="after the connection closed"):
            proto.receive(frame({"type": 6}))

    def test_bad_message_after_handshake_raises(self) -> None:
        proto = opened()
        with pytest.raises(ProtocolError):
            proto.receive(b"garbage" + RS)

    def test_unknown_type_after_handshake_raises(self) -> None:
        proto = opened()
        with pytest.raises(ProtocolError, match="unknown message type 42"):
            proto.receive(frame({"type": 42}))

    def test_oversize_message_raises(self) -> None:
        proto = opened(max_size=64)
        with pytest.raises(ProtocolError, match="maximum size"):
            proto.receive(frame({"type": 1, "target": "t", "arguments": ["x" * 100]}))

    def test_oversize_handshake_raises(self) -> None:
        proto = ServerProtocol(8)
        with pytest.raises(ProtocolError, match="maximum size"):
            proto.receive(HANDSHAKE)

    def test_message_split_across_frames(self) -> None:
        proto = opened()
        data = frame({"type": 1, "target": "Send", "arguments": [1]})
        assert proto.receive(data[:5]) == []
        assert proto.receive(data[5:]) == [Invocation("Send", [1])]


# ---------------------------------------------------------------- fuzz

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_short = st.text(max_size=6)
_args = st.lists(_json, max_size=3)

# Well-formed messages of every type, so that streams get past the JSON parser and reach
# every branch of parse_message and of the state machine.
_valid_message = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just(1), "target": _short, "arguments": _args},
        optional={
            "invocationId": _short,
            "streamIds": st.lists(_short, max_size=2),
            "headers": st.dictionaries(_short, _short, max_size=2),
        },
    ),
    st.fixed_dictionaries({"type": st.just(2), "invocationId": _short, "item": _json}),
    st.fixed_dictionaries(
        {"type": st.just(3), "invocationId": _short},
        optional={"result": _json, "error": _short},
    ),
    st.fixed_dictionaries(
        {"type": st.just(4), "invocationId": _short, "target": _short, "arguments": _args}
    ),
    st.fixed_dictionaries({"type": st.just(5), "invocationId": _short}),
    st.just({"type": 6}),
    st.fixed_dictionaries(
        {"type": st.just(7)}, optional={"error": _short, "allowReconnect": st.booleans()}
    ),
    st.fixed_dictionaries({"type": st.sampled_from([8, 9]), "sequenceId": st.integers()}),
)


@st.composite
def _mutated_message(draw: st.DrawFn) -> dict[str, object]:
    """A well-formed message with one property dropped or replaced by any JSON value."""
    msg = dict(draw(_valid_message))
    key = draw(st.sampled_from(sorted(msg)))
    if draw(st.booleans()):
        del msg[key]
    else:
        msg[key] = draw(_json)
    return msg


_handshake_object = st.fixed_dictionaries(
    {},
    optional={
        "protocol": st.sampled_from(["json", "messagepack", ""]) | _json,
        "version": st.integers(min_value=0, max_value=2) | _json,
    },
)


def _dumps(obj: object) -> bytes:
    # The stdlib encoder, unlike orjson's, writes integers beyond 64 bits.
    return json.dumps(obj, ensure_ascii=False).encode()


_record = st.one_of(
    _valid_message.map(_dumps),
    _mutated_message().map(_dumps),
    st.binary(max_size=64),
    _json.map(_dumps),
)
_handshake_record = st.one_of(
    st.just(HANDSHAKE[:-1]),  # listed thrice: most streams should get past the handshake
    st.just(HANDSHAKE[:-1]),
    st.just(HANDSHAKE[:-1]),
    _handshake_object.map(_dumps),
    st.binary(max_size=32),
)


@st.composite
def _streams(draw: st.DrawFn) -> list[bytes]:
    """A handshake then messages, each well-formed or not, cut at arbitrary points."""
    records = [draw(_handshake_record), *draw(st.lists(_record, max_size=8))]
    data = RS.join(records) + draw(st.sampled_from([b"", RS]))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


_EVENT_TYPES = (
    HandshakeAccepted,
    HandshakeRejected,
    Invocation,
    StreamInvocation,
    StreamItem,
    Completion,
    CancelInvocation,
    Ping,
    Close,
    Ack,
    Sequence,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=_streams(), max_size=st.sampled_from([16, 256, 32 * 1024]))
def test_receive_on_arbitrary_bytes_returns_events_or_raises_protocol_error(
    chunks: list[bytes], max_size: int
) -> None:
    proto = ServerProtocol(max_size)
    for chunk in chunks:
        try:
            events = proto.receive(chunk)
        except ProtocolError:
            return  # the caller closes the connection with this message
        assert isinstance(events, list)
        assert all(isinstance(e, _EVENT_TYPES) for e in events)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_receive_on_raw_bytes_never_raises_anything_else(data: bytes) -> None:
    for proto in (ServerProtocol(64), opened(64)):
        try:
            events = proto.receive(data)
        except ProtocolError:
            continue
        assert isinstance(events, list)
        assert all(isinstance(e, _EVENT_TYPES) for e in events)
