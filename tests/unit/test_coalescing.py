"""The edge's coalescing transport (hubbub_gateway/edge.py): what uvicorn writes in one turn
of the event loop leaves in one write, and nothing is lost or reordered when the connection
ends or changes hands."""

from __future__ import annotations

import asyncio
from typing import Any

from hubbub_gateway.edge import CoalescingTransport


class Recorder:
    """The real transport's side, as far as the wrapper touches it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.calls.append(("write", data))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def set_protocol(self, protocol: object) -> None:
        self.calls.append(("set_protocol", protocol))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def coalescing() -> tuple[CoalescingTransport, Recorder]:
    real = Recorder()
    return CoalescingTransport(real, asyncio.get_running_loop()), real  # type: ignore[arg-type]


async def test_a_head_and_a_body_leave_in_one_write_at_the_end_of_the_turn() -> None:
    transport, real = coalescing()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"")
    transport.write(b"{}")
    assert real.calls == []
    assert transport.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert real.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]
    transport.write(b"next")  # a later turn: a write of its own
    await asyncio.sleep(0)
    assert real.calls[1:] == [("write", b"next")]


async def test_close_eof_and_a_new_protocol_send_what_is_pending_first() -> None:
    for end, args in (("close", ()), ("write_eof", ()), ("set_protocol", ("ws",))):
        transport, real = coalescing()
        transport.write(b"a")
        transport.writelines([b"b", b"c"])
        getattr(transport, end)(*args)
        assert real.calls == [("write", b"abc"), (end, args[0] if args else None)], end
        await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
        assert len(real.calls) == 2, end


async def test_abort_drops_what_is_pending_and_a_closed_socket_gets_nothing() -> None:
    transport, real = coalescing()
    transport.write(b"lost")
    transport.abort()
    await asyncio.sleep(0)
    assert real.calls == [("abort", None)]
    transport, real = coalescing()
    transport.write(b"late")
    real.close()  # closed under it (the edge refusing the peer)
    await asyncio.sleep(0)
    assert real.calls == [("close", None)]
