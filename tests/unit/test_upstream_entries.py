"""The way back's wire formats: upstream and result entries, answers and client results."""

from __future__ import annotations

import orjson
import pytest

from hubbub.protocol.signalr import RS, Invocation, encode_invocation, parse_message
from hubbub.redis.upstream import upstream_partition
from hubbub.wire.envelopes import (
    Event,
    Kind,
    MessageEntry,
    ResultEntry,
    UpstreamEntry,
    decode_entry,
)


def flat(fields: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(fields[::2], fields[1::2], strict=True))


@pytest.mark.parametrize(
    "entry",
    [
        UpstreamEntry(Event.CONNECTED, "chat", "c1", "gw-1", "alice", b'{"sub":"alice"}'),
        UpstreamEntry(Event.DISCONNECTED, "chat", "c1", "gw-1", None, error="bye"),
        UpstreamEntry(
            Event.INVOCATION,
            "chat",
            "c1",
            "gw-1",
            "alice",
            b"{}",
            target="send",
            arguments=b'[1,"x"]',
            call="7",
            traceparent="00-ab-cd-01",
        ),
        UpstreamEntry(Event.INVOCATION, "chat", "c1", "gw-1", target="fire", arguments=b"[]"),
    ],
)
def test_upstream_entries_round_trip(entry: UpstreamEntry) -> None:
    assert UpstreamEntry.decode(flat(entry.fields())) == entry


def test_categories_are_azures() -> None:
    assert Event.INVOCATION.category == "messages"
    assert Event.CONNECTED.category == Event.DISCONNECTED.category == "connections"


def test_answers_and_client_results_travel_as_message_entries() -> None:
    answer = MessageEntry(Kind.CONNECTION, "chat", "c1", b"{}", call="7")
    asked = MessageEntry(Kind.CONNECTION, "chat", "c1", b"{}", call="k", reply_to="gw-2")
    for entry in (answer, asked):
        copy = entry.fields(b"3:1-0", 5)
        decoded = decode_entry(flat(copy))
        assert isinstance(decoded, MessageEntry)
        assert (decoded.call, decoded.reply_to) == (entry.call, entry.reply_to)
    plain = MessageEntry.decode(flat(MessageEntry(Kind.ALL, "chat", "", b"{}").fields()))
    assert (plain.call, plain.reply_to) == ("", "")  # old entries decode to no call


def test_result_entries_are_told_apart_in_an_inbox() -> None:
    result = ResultEntry("chat", "c1", "k", b'{"result":1}')
    assert decode_entry(flat(result.fields())) == result


def test_a_connection_keeps_its_partition() -> None:
    assert len({upstream_partition("conn-a", 8) for _ in range(3)}) == 1
    spread = {upstream_partition(f"conn-{n}", 8) for n in range(200)}
    assert spread == set(range(8))


def test_client_result_invocations_carry_an_id() -> None:
    frame = encode_invocation("ask", [1], "k1")
    assert orjson.loads(frame.rstrip(RS)) == {
        "type": 1, "invocationId": "k1", "target": "ask", "arguments": [1],
    }  # fmt: skip
    assert b"invocationId" not in encode_invocation("tell", [1])


def test_an_invocations_trace_comes_from_its_headers() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = orjson.dumps(
        {"type": 1, "target": "x", "arguments": [], "headers": {"traceparent": tp}}
    )
    message = parse_message(record)
    assert isinstance(message, Invocation) and message.traceparent == tp
    odd = parse_message(b'{"type":1,"target":"x","arguments":[],"headers":{"traceparent":5}}')
    assert isinstance(odd, Invocation) and odd.traceparent is None
