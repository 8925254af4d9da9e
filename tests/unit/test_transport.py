"""The gateway's WebSocket protocol (``hubbub_gateway.transport``) in-process: uvicorn's
hand-off is played by hand (construct, ``connection_made``, ``data_received`` with the upgrade
request), the client is websockets' own sans-I/O ``ClientProtocol``, the transport a fake
that records writes. End to end, the real one is exercised by the integration tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from hubbub.logs import REFUSALS
from hubbub_gateway import transport
from hubbub_gateway.transport import EXTENSION, HubbubWebSocketProtocol

App = Callable[[dict[str, Any], Any, Any], Any]


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.proto: HubbubWebSocketProtocol | None = None
        self.data = bytearray()
        self.closing = False
        self.aborted = False
        self.aborting = asyncio.Event()  # set by abort(): awaited instead of sleeping
        self.paused = False
        self.buffered = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing
        self.data += data

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return False  # as with TLS: the transport closes at once

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self.aborting.set()
        self._lose()

    def _lose(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.proto is not None
            asyncio.get_running_loop().call_soon(self.proto.connection_lost, None)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.0.0.7", 40000), "sockname": ("10.0.0.1", 8000)}.get(name, default)


class Session:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.disconnects = 0

    def on_data(self, data: bytes) -> None:
        self.data.append(data)

    def on_disconnect(self) -> None:
        self.disconnects += 1


class Peer:
    """One connection: our protocol on a fake transport, a websockets client on the other end."""

    def __init__(
        self, app: App, path: str = "/hubs/chat?access_token=secret", max_size: int = 1 << 16
    ) -> None:
        config = uvicorn.Config(app, ws_max_size=max_size, log_config=None, proxy_headers=False)
        config.load()
        self.state = ServerState()
        self.proto = HubbubWebSocketProtocol(config=config, server_state=self.state, app_state={})
        self.transport = FakeTransport()
        self.transport.proto = self.proto
        self.client = ClientProtocol(
            parse_uri("ws://10.0.0.1:8000" + path), subprotocols=["json"], max_size=None
        )
        self.proto.connection_made(self.transport)
        self.client.send_request(self.client.connect())
        self.proto.data_received(b"".join(self.client.data_to_send()))

    def send(self, data: bytes, text: bool = True) -> None:
        if text:
            self.client.send_text(data)
        else:
            self.client.send_binary(data)
        self.flush_client()

    def flush_client(self) -> None:
        for chunk in self.client.data_to_send():
            if chunk:
                self.proto.data_received(chunk)

    def received(self) -> list[Any]:
        """What the server wrote since last time, as the client parses it."""
        data, self.transport.data = bytes(self.transport.data), bytearray()
        if data:
            self.client.receive_data(data)
        return self.client.events_received()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def detaching_app(session: Session, scopes: list[dict[str, Any]] | None = None) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scopes is not None:
            scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": "json", "headers": [(b"x-a", b"1")]})
        scope["extensions"][EXTENSION].detach(session)

    return app


def text_frames(events: list[Any]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, Frame) and e.opcode is Opcode.TEXT]


def close_code(events: list[Any]) -> int | None:
    for event in events:
        if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
            return int.from_bytes(event.data[:2], "big")
    return None


# ---------------------------------------------------------------- the upgrade


async def test_accept_builds_the_scope_and_answers_with_subprotocol_and_headers() -> None:
    scopes: list[dict[str, Any]] = []
    peer = Peer(detaching_app(Session(), scopes))
    await settle()
    (response,) = peer.received()
    assert isinstance(response, Response) and response.status_code == 101
    assert response.headers["Sec-WebSocket-Protocol"] == "json"
    assert response.headers["x-a"] == "1"
    scope = scopes[0]
    assert scope["path"] == "/hubs/chat" and scope["query_string"] == b"access_token=secret"
    assert scope["subprotocols"] == ["json"]
    assert scope["client"] == ("10.0.0.7", 40000)
    assert (b"sec-websocket-version", b"13") in scope["headers"]
    assert "websocket.http.response" in scope["extensions"]
    assert peer.proto in peer.state.connections


async def test_a_denial_response_is_sent_as_json_and_left_to_the_app_to_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ws = WebSocket(scope, receive, send)
        await ws.send_denial_response(JSONResponse({"code": "Error.Unauthorized"}, 401))

    caplog.set_level(logging.DEBUG)
    peer = Peer(app)
    await settle()
    (response,) = peer.received()
    assert response.status_code == 401
    assert response.body == b'{"code":"Error.Unauthorized"}'
    assert response.headers["content-type"] == "application/json"
    assert peer.transport.closing and peer.proto.lost
    assert peer.proto not in peer.state.connections and not peer.state.tasks
    # The app logged its refusal with the reason (connect._deny); the transport adds one
    # DEBUG access line, not a second refusal.
    ours = [r for r in caplog.records if r.name.startswith("hubbub")]
    assert [(r.levelno, r.getMessage()) for r in ours] == [
        (logging.DEBUG, '10.0.0.7:40000 - "WebSocket /hubs/chat?access_token=secret" 401')
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_close_before_accept_is_403_logged_as_one_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "websocket.close", "code": 1000})

    caplog.set_level(logging.DEBUG)
    peer = Peer(app)
    await settle()
    assert peer.received()[0].status_code == 403
    ours = [r for r in caplog.records if r.name.startswith("hubbub")]
    assert [(r.name, r.levelno) for r in ours] == [(REFUSALS, logging.WARNING)]
    assert '"WebSocket /hubs/chat?access_token=secret" 403' in ours[0].getMessage()
    assert ours[0].exc_info is None


@pytest.mark.parametrize("accepted", [False, True])
async def test_app_exception_is_logged_once_then_500_or_1011(
    caplog: pytest.LogCaptureFixture, accepted: bool
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if accepted:
            await send({"type": "websocket.accept"})
        raise RuntimeError("boom")

    peer = Peer(app)
    await settle()
    events = peer.received()
    if accepted:
        assert events[0].status_code == 101 and close_code(events) == 1011
    else:
        assert events[0].status_code == 500
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info is not None


async def test_asgi_receive_gets_messages_and_reading_pauses_until_read() -> None:
    got: list[dict[str, Any]] = []
    reading = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await reading.wait()
        while True:
            got.append(await receive())
            if got[-1]["type"] == "websocket.disconnect":
                return

    peer = Peer(app)
    await settle()
    peer.received()
    peer.send(b"hello")
    peer.send(b"\x00\x01", text=False)
    assert peer.transport.paused  # nobody read yet
    reading.set()
    await settle()
    assert not peer.transport.paused
    peer.client.send_close(1000, "bye")
    peer.flush_client()
    await settle()
    assert got == [
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.receive", "bytes": b"\x00\x01"},
        {"type": "websocket.disconnect", "code": 1000, "reason": "bye"},
    ]


# ---------------------------------------------------------------- detached serving


async def test_detached_socket_calls_the_session_and_drops_the_handshake() -> None:
    session = Session()
    peer = Peer(detaching_app(session))
    await settle()
    peer.received()
    proto = peer.proto
    assert proto.handshake is None and proto.session is session
    assert not hasattr(proto, "__dict__")  # slots only
    assert not peer.state.tasks  # the app returned: an idle connection has no task

    peer.send(b"one")
    peer.send("dé".encode(), text=False)
    peer.client.send_text(b"fra", fin=False)
    peer.client.send_continuation(b"gmented", fin=True)
    peer.flush_client()
    peer.client.send_ping(b"p")
    peer.flush_client()
    assert session.data == [b"one", "dé".encode(), b"fragmented"]
    assert [e.opcode for e in peer.received()] == [Opcode.PONG]

    peer.client.send_close(1000)
    peer.flush_client()
    await settle()
    assert close_code(peer.received()) == 1000  # the echo
    assert session.disconnects == 1 and proto.session is None
    assert peer.transport.closing and not peer.transport.aborted
    assert proto not in peer.state.connections


async def test_oversized_message_closes_1009_and_logs_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = Session()
    peer = Peer(detaching_app(session), max_size=1000)
    await settle()
    peer.received()
    caplog.set_level(logging.INFO, REFUSALS)
    peer.send(b"x" * 1001)
    await settle()
    assert close_code(peer.received()) == 1009
    assert session.data == [] and session.disconnects == 1
    assert peer.transport.closing
    (record,) = [r for r in caplog.records if "closing" in r.getMessage()]
    assert record.levelno == logging.WARNING and "(1009)" in record.getMessage()
    assert record.name == REFUSALS and record.exc_info is None


async def test_messages_in_the_same_read_as_the_clients_close_are_delivered() -> None:
    session = Session()
    peer = Peer(detaching_app(session))
    await settle()
    peer.received()
    peer.client.send_text(b"last words")
    peer.client.send_close(1001)
    peer.proto.data_received(b"".join(peer.client.data_to_send()[:2]))
    assert session.data == [b"last words"] and session.disconnects == 1


async def test_invalid_utf8_text_closes_1007() -> None:
    session = Session()
    peer = Peer(detaching_app(session))
    await settle()
    peer.received()
    peer.send(b'{"a":"\xff\xfe"}')
    await settle()
    assert close_code(peer.received()) == 1007
    assert session.data == [] and session.disconnects == 1


class HalfClosingTransport(FakeTransport):
    """A plain TCP transport: it can send EOF and go on reading."""

    def __init__(self) -> None:
        super().__init__()
        self.eof_written = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True


async def test_a_failed_connection_half_closes_and_reads_on_until_the_client_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing a socket with unread data sends a reset, which can destroy our Close in the
    client's buffers (the WebSocket fuzzer saw it): after the Close, half-close, drop what
    the client still sends, close on its EOF, or abort after the close timeout."""
    monkeypatch.setattr(transport, "CLOSE_TIMEOUT", 0.01)
    for client_closes in (True, False):
        session = Session()
        peer = Peer(detaching_app(session))
        peer.transport = half = HalfClosingTransport()
        half.proto = peer.proto
        peer.proto.connection_made(half)
        await settle()
        peer.received()
        peer.send(b'{"a":"\xff\xfe"}')
        await settle()
        assert close_code(peer.received()) == 1007
        assert half.eof_written and not half.closing and not half.paused
        more = Frame(Opcode.TEXT, b"more, after the Close").serialize(mask=True)
        peer.proto.data_received(more)  # read and dropped
        assert session.data == [] and half.data == b""
        if client_closes:
            assert peer.proto.eof_received() is None  # asyncio then closes the transport
            half.close()
        else:
            await asyncio.wait_for(half.aborting.wait(), 5)
        await settle()
        assert peer.proto.lost and half.aborted is not client_closes


async def test_write_frames_respects_close_state_and_buffer_bound() -> None:
    session = Session()
    peer = Peer(detaching_app(session))
    await settle()
    peer.received()
    proto = peer.proto
    frame = b"\x81\x02hi"
    assert proto.write_frames(frame + frame, max_buffer=10)
    assert text_frames(peer.received()) == [b"hi", b"hi"]
    peer.transport.buffered = 11
    assert not proto.write_frames(frame, max_buffer=10)  # the client does not read
    assert peer.transport.data == b""
    proto.close(4000, "done")
    assert session.disconnects == 1  # at once: what the client still sends is dropped
    assert proto.write_frames(frame)  # dropped, not an overflow
    assert close_code(peer.received()) == 4000


async def test_client_that_never_answers_close_is_aborted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "CLOSE_TIMEOUT", 0.01)
    peer = Peer(detaching_app(Session()))
    await settle()
    peer.received()
    peer.proto.pause_reading()  # e.g. a task is at work
    assert peer.transport.paused
    peer.proto.close(1000)
    assert not peer.transport.paused  # the Close reply must be read
    await asyncio.wait_for(peer.transport.aborting.wait(), 5)
    await settle()  # connection_lost runs on the next loop turn
    assert peer.transport.aborted and peer.proto.lost


async def test_shutdown_closes_open_sockets_1012_and_refuses_pending_upgrades() -> None:
    session = Session()
    peer = Peer(detaching_app(session))
    await settle()
    peer.received()
    peer.proto.shutdown()
    assert close_code(peer.received()) == 1012 and session.disconnects == 1

    waiting = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await waiting.wait()
        await send({"type": "websocket.accept"})

    pending = Peer(slow)
    await settle()
    pending.proto.shutdown()
    assert pending.received()[0].status_code == 503
    waiting.set()
    await settle()  # the app's late accept fails quietly: the client is gone
    assert not pending.state.tasks
