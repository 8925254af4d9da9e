"""The gateway's local index: which sockets a delivery reaches, and how the frames are written.

Pure logic: the socket below records writes (the real one is tested end to end)."""

from __future__ import annotations

from hubbub.protocol.wsframe import text_frame
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
