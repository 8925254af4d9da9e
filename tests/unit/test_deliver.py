"""The gateway's local index: which sockets a delivery reaches, and how the frames are written.

Pure logic: the socket below records writes (the real one is tested end to end)."""

from __future__ import annotations

import pytest

from hubbub.protocol import messagepack
from hubbub.protocol.codec import JSON, MESSAGEPACK
from hubbub.protocol.signalr import encode_invocation
from hubbub.protocol.wsframe import binary_frame, text_frame
from hubbub.wire.envelopes import ControlEntry, Kind, MessageEntry, Op
from hubbub_gateway.deliver import LocalConnection, LocalIndex


class RecordingSocket:
    """Stands in for the WebSocket protocol: records each write_frames call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write_frames(self, frames: bytes, max_buffer: int | None = None) -> bool:
        if not self.closed:
            self.writes.append(frames)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True

    async def drain(self) -> None:
        pass


def connect(index: LocalIndex, conn_id: str, user: str | None = None) -> RecordingSocket:
    socket = RecordingSocket()
    conn = LocalConnection(conn_id, "chat", user, socket, 1 << 20)
    conn.start(b"")
    index.add(conn)
    socket.writes.clear()
    return socket


def message(n: int, kind: Kind = Kind.ALL, target: str = "") -> MessageEntry:
    return MessageEntry(kind, "chat", target, f"m{n}".encode(), message_id=f"0:{n}-0".encode())


def test_one_write_per_socket_per_read_with_frames_in_order() -> None:
    index = LocalIndex()
    a, b = connect(index, "a", "ann"), connect(index, "b", "bob")
    index.handle_many([message(1), message(2, Kind.USER, "bob"), message(3)])
    assert a.writes == [text_frame(b"m1") + text_frame(b"m3")]
    assert b.writes == [text_frame(b"m1") + text_frame(b"m2") + text_frame(b"m3")]
    assert index.delivered == 5


def test_a_single_delivery_is_written_directly() -> None:
    index = LocalIndex()
    a = connect(index, "a")
    index.handle_many([message(1)])
    assert a.writes == [text_frame(b"m1")]


def test_duplicates_in_one_read_are_written_once() -> None:
    index = LocalIndex()
    a = connect(index, "a")
    index.handle_many([message(1), message(1), message(2)])
    assert a.writes == [text_frame(b"m1") + text_frame(b"m2")]
    assert index.duplicates == 1


def test_a_join_applies_to_the_messages_after_it_in_the_same_read() -> None:
    index = LocalIndex()
    a = connect(index, "a")
    index.handle_many([
        message(1, Kind.GROUP, "g"),
        ControlEntry(Op.JOIN, "chat", ("a",), target="g"),
        message(2, Kind.GROUP, "g"),
    ])  # fmt: skip
    assert a.writes == [text_frame(b"m2")]


async def test_messages_before_a_close_are_written_before_it() -> None:
    index = LocalIndex()
    a = connect(index, "a")
    index.handle_many([
        message(1),
        ControlEntry(Op.CLOSE, "chat", ("a",), reason="bye"),
        message(2),
    ])  # fmt: skip
    assert a.writes[0] == text_frame(b"m1")
    assert b"bye" in a.writes[1]  # the SignalR Close record
    assert len(a.writes) == 2  # nothing after the close


def fenced(n: int, partition: int, epoch: int) -> MessageEntry:
    mid = f"{partition}:{n}-0".encode()
    return MessageEntry(Kind.ALL, "chat", "", f"m{n}".encode(), message_id=mid, epoch=epoch)


def test_deliveries_of_an_older_lease_epoch_are_refused_per_partition() -> None:
    """Fencing: once a partition's new owner (a larger epoch) has delivered, what its stalled
    predecessor still writes is refused, even under message ids never seen; other partitions
    and entries without an epoch are not affected."""
    index = LocalIndex()
    a = connect(index, "a")
    index.handle_many([fenced(1, partition=3, epoch=100)])
    index.handle_many([fenced(2, partition=3, epoch=200)])  # a new owner
    index.handle_many([fenced(3, partition=3, epoch=100)])  # the old one woke up: refused
    index.handle_many([fenced(4, partition=5, epoch=50)])  # another partition: its own epochs
    index.handle_many([fenced(5, partition=3, epoch=200)])
    index.handle_many([message(6)])  # no epoch (an older worker): delivered
    assert a.writes == [text_frame(f"m{n}".encode()) for n in (1, 2, 4, 5, 6)]
    refused = index.metrics.registry.get_sample_value(
        "hubbub_drops_total", {"reason": "stale_epoch"}
    )
    assert refused == 1


# ------------------------------------------------------------ MessagePack recipients


def _mp_connect(index: LocalIndex, conn_id: str) -> RecordingSocket:
    socket = RecordingSocket()
    conn = LocalConnection(conn_id, "chat", None, socket, 1 << 20)
    conn.codec = MESSAGEPACK
    conn.start(b"")
    index.add(conn)
    socket.writes.clear()
    return socket


def _invocation(n: int) -> MessageEntry:
    frame = encode_invocation("newMessage", [n])
    return MessageEntry(Kind.ALL, "chat", "", frame, message_id=f"0:{n}-0".encode())


def test_each_recipient_gets_its_protocol_transcoded_once_per_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real = messagepack.from_json

    def counting(record: bytes) -> bytes:
        calls.append(record)
        return real(record)

    monkeypatch.setattr(MESSAGEPACK, "_from_json", counting)
    index = LocalIndex()
    j = connect(index, "j")
    m1, m2 = _mp_connect(index, "m1"), _mp_connect(index, "m2")
    index.handle_many([_invocation(1), _invocation(2)])
    assert j.writes == [text_frame(_invocation(1).frame) + text_frame(_invocation(2).frame)]
    binary = [binary_frame(messagepack.encode_invocation("newMessage", [n])) for n in (1, 2)]
    assert m1.writes == m2.writes == [b"".join(binary)]
    assert len(calls) == 2  # once per delivery, not per recipient
    index.handle(_invocation(3))  # JSON only when no MessagePack recipient: not transcoded
    assert len(calls) == 3


def test_json_only_deliveries_are_not_transcoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MESSAGEPACK, "_from_json", None)  # would fail if called
    index = LocalIndex()
    a = connect(index, "a")
    index.handle(_invocation(1))
    assert a.writes == [text_frame(_invocation(1).frame)]


def test_untranscodable_delivery_is_dropped_for_messagepack_only() -> None:
    index = LocalIndex()
    j, m = connect(index, "j"), _mp_connect(index, "m")
    index.handle(message(1))  # "m1" is no JSON record
    assert j.writes == [text_frame(b"m1")]
    assert m.writes == []


async def test_ping_and_close_in_the_connections_protocol() -> None:
    index = LocalIndex()
    j, m = connect(index, "j"), _mp_connect(index, "m")
    index.tick(keepalive_ticks=1, timeout_ticks=100)
    assert j.writes == [text_frame(JSON.ping)]
    assert m.writes == [binary_frame(messagepack.PING_RECORD)]
    index.connections["m"].close("bye")
    assert m.writes[-1] == binary_frame(messagepack.encode_close("bye"))
