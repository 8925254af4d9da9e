"""The gateway's WebSocket edge: an ``asyncio.Protocol`` on the public sans-I/O
``websockets.server.ServerProtocol``, mounted with ``uvicorn.Config(ws=HubbubWebSocketProtocol)``.

Why our own protocol rather than uvicorn's: the application writes pre-framed messages
straight to the socket (one frame built per delivery, no ASGI ``send`` per recipient), cuts
off clients that never read, and serves open SignalR connections without a coroutine. Once
the SignalR handshake is done, the session detaches the socket from the ASGI app
(:meth:`HubbubWebSocketProtocol.detach`), the app returns, and the protocol hands the session
each message and the disconnect by callback. An idle connection then holds no task, no
suspended ASGI/middleware stack, no queue and no request headers: this object, its
transport, websockets' parser state and the session (see :mod:`.connect`).

What uvicorn provides, through public names only: its HTTP protocol hands an upgrade request
over by constructing the ``ws`` class with ``config``, ``server_state`` and ``app_state``
keyword arguments, then calling ``connection_made(transport)``, ``data_received(request)``
and ``transport.set_protocol(protocol)`` (uvicorn 0.22 and later). The protocol registers in
``server_state.connections`` (its :meth:`~HubbubWebSocketProtocol.shutdown` is called on a
graceful shutdown) and its tasks in ``server_state.tasks`` (the server waits for them).
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol, cast
from urllib.parse import unquote

import uvicorn
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

from hubbub.logs import REFUSALS

EXTENSION = "hubbub.socket"
"""Scope extension under which the app finds this protocol (to detach the socket)."""

CLOSE_TIMEOUT = 5.0
"""Seconds a client gets to answer our Close before its connection is aborted."""

log = logging.getLogger("hubbub.gateway.transport")
refusals = logging.getLogger(REFUSALS)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


class SocketSession(Protocol):
    """What a detached socket calls: each message the client sends, then its disconnect."""

    def on_data(self, data: bytes) -> None: ...

    def on_disconnect(self) -> None: ...


class SocketClosed(OSError):
    """Raised by the ASGI ``send`` once the connection is gone (the ASGI spec asks servers for
    an ``OSError`` subclass; Starlette turns it into ``WebSocketDisconnect``)."""


class _WarningsOnly(logging.LoggerAdapter[logging.Logger]):
    """websockets logs every connection's open and close at INFO and every frame at DEBUG;
    this edge logs each upgrade once itself, so only websockets' warnings and errors pass."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


_WS_LOGGER = _WarningsOnly(logging.getLogger("hubbub.gateway.websockets"))


def payload(message: Mapping[str, Any]) -> bytes:
    """A WebSocket receive event's data as bytes, whether the frame was text or binary."""
    data = message.get("bytes")
    if data is not None:
        return bytes(data)
    text = message.get("text")
    return text.encode() if text is not None else b""


def _address(transport: asyncio.BaseTransport, name: str) -> tuple[str, int] | None:
    info = transport.get_extra_info(name)
    if isinstance(info, (tuple, list)) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None  # a Unix socket, or unknown


def _log_failure(chunks: list[bytes]) -> None:
    """Log why websockets failed the connection, from the Close it queued for the client (a
    control frame: two header bytes, unmasked, then at most 125 bytes of payload)."""
    for chunk in chunks:
        if len(chunk) >= 4 and chunk[0] == 0x88:
            close = Close.parse(chunk[2 : 2 + chunk[1]])
            refusals.warning("closing WebSocket (%d): %s", close.code, close.reason)
            return


def _status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Handshake:
    """The ASGI side of one upgrade, from the request until the app returns or detaches the
    socket: the scope, the receive events not read yet, and the app's progress. Dropped at
    :meth:`HubbubWebSocketProtocol.detach`, so an idle connection does not carry it."""

    __slots__ = (
        "app_state",
        "config",
        "denial",
        "detached",
        "disconnected",
        "inbox",
        "phase",
        "proto",
        "request",
        "response",
        "scope",
        "waiter",
    )

    CONNECTING, OPEN, DENYING, DONE = range(4)

    def __init__(
        self, proto: HubbubWebSocketProtocol, config: uvicorn.Config, app_state: dict[str, Any]
    ) -> None:
        self.proto = proto
        self.config = config
        self.app_state = app_state
        self.phase = self.CONNECTING
        self.request: Request | None = None
        self.response: Response | None = None  # the 101 to send once the app accepts
        self.scope: dict[str, Any] = {}
        self.inbox: list[Message] = []
        self.waiter: asyncio.Future[None] | None = None  # the app waits in receive()
        self.denial: tuple[int, list[tuple[str, str]], list[bytes]] | None = None
        self.disconnected = False
        self.detached = False

    def put(self, message: Message) -> None:
        self.inbox.append(message)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def disconnect(self, code: int, reason: str = "") -> None:
        if not self.disconnected:
            self.disconnected = True
            self.put({"type": "websocket.disconnect", "code": code, "reason": reason})

    def target(self) -> str:
        """The request path with its query, for the log line (secrets are redacted there)."""
        return self.request.path if self.request is not None else ""

    # ------------------------------------------------------------ the ASGI callables

    async def receive(self) -> Message:
        inbox = self.inbox
        while not inbox:
            if self.waiter is not None:
                raise RuntimeError("the socket already has a receiver")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        message = inbox.pop(0)
        if not inbox and not self.detached:
            self.proto.resume_reading()  # paused while a message waited for the app
        return message

    async def send(self, message: Message) -> None:
        proto = self.proto
        await proto.drain()
        if proto.lost or proto.transport.is_closing():
            raise SocketClosed("the WebSocket connection is closed")
        kind = message["type"]
        phase = self.phase
        if phase == self.CONNECTING:
            if kind == "websocket.accept":
                self._accept(message.get("subprotocol"), message.get("headers") or ())
            elif kind == "websocket.close":  # before accept: the ASGI spec says 403
                self.respond(proto.ws.reject(http.HTTPStatus.FORBIDDEN, ""))
            elif kind == "websocket.http.response.start":
                status = int(message["status"])
                if not 100 <= status < 600:
                    raise RuntimeError(f"Invalid HTTP status code {status} in response.")
                headers = [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in message.get("headers") or ()
                ]
                self.denial = (status, headers, [])
                self.phase = self.DENYING
            else:
                raise RuntimeError(f"Unexpected ASGI message {kind!r} before accept.")
        elif phase == self.DENYING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected 'websocket.http.response.body', got {kind!r}.")
            assert self.denial is not None
            status, headers, body = self.denial
            body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                denial = self._denial_response(status, headers, b"".join(body))
                self.respond(denial, logged=True)
        elif phase == self.OPEN:
            try:
                if kind == "websocket.send":
                    data = message.get("bytes")
                    if data is not None:
                        proto.ws.send_binary(data)
                    else:
                        proto.ws.send_text(message["text"].encode())
                    proto.flush()
                elif kind == "websocket.close":
                    proto.close(int(message.get("code", 1000)), message.get("reason") or "")
                else:
                    raise RuntimeError(f"Unexpected ASGI message {kind!r} after accept.")
            except InvalidState as exc:  # the client's Close came first
                raise SocketClosed("the WebSocket connection is closing") from exc
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} after the response or close.")

    # ------------------------------------------------------------ answering the upgrade

    def _accept(self, subprotocol: str | None, app_headers: Iterable[tuple[bytes, bytes]]) -> None:
        proto, response = self.proto, self.response
        assert response is not None
        extra = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in (*proto.server_state.default_headers, *app_headers)
        ]
        if subprotocol:
            extra.append(("Sec-WebSocket-Protocol", subprotocol))
        headers = response.headers
        for name, _ in extra:
            if name in headers:
                del headers[name]  # e.g. websockets' Date, replaced by uvicorn's
        for name, value in extra:
            headers[name] = value
        self.phase = self.OPEN
        self.response = None
        proto.ws.send_response(response)
        proto.flush()
        log.info('%s - "WebSocket %s" [accepted]', proto.peer(), self.target())

    def respond(self, response: Response, *, logged: bool = False) -> None:
        """Refuse the upgrade with ``response`` (the denial-response extension, a close before
        accept, or an app failure), log it once, and close the connection. ``logged``: the
        app logged the refusal with its reason (a denial response); else this logs it."""
        proto = self.proto
        self.phase = self.DONE
        self.response = None
        if proto.lost or proto.transport.is_closing():
            return
        if logged:
            log.debug('%s - "WebSocket %s" %d', proto.peer(), self.target(), response.status_code)
        else:
            refusals.warning(
                '%s - "WebSocket %s" %d %s',
                proto.peer(),
                self.target(),
                response.status_code,
                response.body[:200].decode("utf-8", "replace").strip(),
            )
        proto.ws.send_response(response)  # then EOF: flush() closes the transport
        proto.flush()
        self.disconnect(1006)

    def _server_error(self) -> Response:
        return self.proto.ws.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR, "")

    def _denial_response(self, status: int, raw: list[tuple[str, str]], body: bytes) -> Response:
        headers = Headers(raw)
        for name, value in self.proto.server_state.default_headers:  # Date, Server
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        headers.setdefault("Connection", "close")
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        return Response(status, _status_phrase(status), headers, body)

    # ------------------------------------------------------------ running the app

    async def run(self, app: ASGIApp) -> None:
        """Run the app for this upgrade. A refusal it sends is logged once (at INFO, in
        :meth:`respond`); an exception is logged once and answered with 500 before accept,
        or a 1011 close after; a client that left meanwhile is no error."""
        proto = self.proto
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:  # uvicorn's graceful-shutdown timeout
            if not proto.lost:
                proto.transport.abort()
            raise
        except Exception:
            if proto.lost or self.disconnected:
                log.debug("ASGI app ended after the client left", exc_info=True)
            elif self.phase in (self.CONNECTING, self.DENYING):
                log.exception("Exception in ASGI application (WebSocket %s)", self.target())
                self.respond(self._server_error(), logged=True)
            else:
                log.exception("Exception in ASGI application (WebSocket %s)", self.target())
                proto.close(1011)
        else:
            if proto.lost or self.detached:
                return
            if self.phase in (self.CONNECTING, self.DENYING):
                log.warning("ASGI app returned without answering WebSocket %s", self.target())
                self.respond(self._server_error(), logged=True)
            elif self.phase == self.OPEN:
                proto.close(1000)  # the app is done with an open socket it did not detach
        finally:
            if proto.handshake is self:  # not detached: what is left is the closing handshake
                proto.handshake = None
            self.scope = {}


class HubbubWebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection: websockets parses and frames, this class moves bytes between
    it and the transport and speaks ASGI (with the ``websocket.http.response`` denial
    extension) until the app detaches the socket, then calls the session directly.

    ``ws_max_size`` from uvicorn's config bounds client messages (1009 beyond it). Not
    supported: per-message deflate (frames are pre-encoded once for all recipients, see
    :meth:`write_frames`) and uvicorn's ``ws_ping_interval`` keep-alive Pings (SignalR Ping
    records keep connections alive); a client's Pings are answered.
    """

    __slots__ = (
        "close_timer",
        "drain_waiter",
        "handshake",
        "lost",
        "partial",
        "partial_text",
        "read_paused",
        "server_state",
        "session",
        "transport",
        "write_paused",
        "ws",
    )

    transport: asyncio.Transport  # from connection_made, which uvicorn calls right away

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        **_ignored: object,  # what other uvicorn versions may pass (an event loop)
    ) -> None:
        if not config.loaded:
            config.load()
        self.server_state = server_state
        self.ws = ServerProtocol(max_size=config.ws_max_size, logger=_WS_LOGGER)
        self.handshake: _Handshake | None = _Handshake(self, config, app_state)
        self.session: SocketSession | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.drain_waiter: asyncio.Future[None] | None = None  # see drain()
        # A fragmented message being received: its frames so far, and whether it is text.
        self.partial: list[bytes] | None = None
        self.partial_text = False
        self.read_paused = False
        self.write_paused = False
        self.lost = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvicorn hands over the transport it was given: behind the edge, a coalescing one
        # (.edge.CoalescingTransport); the socket's frames go to the real one.
        self.transport = cast(asyncio.Transport, getattr(transport, "real", transport))
        connections: set[Any] = self.server_state.connections
        connections.add(self)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        was_open = ws.state is State.OPEN
        ws.receive_data(data)
        client_closed = False
        for event in ws.events_received():
            if isinstance(event, Frame):
                client_closed |= self._frame(event)
            elif isinstance(event, Request):  # first and once
                self._request(event)
        chunks = ws.data_to_send()  # Pongs, the Close echo, a failure's Close; then EOF
        if (
            was_open
            and ws.state is not State.OPEN
            and not client_closed
            and self.close_timer is None
        ):
            _log_failure(chunks)  # websockets failed the connection: 1002, 1007, 1009, 1011
        self._write(chunks)

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self.flush()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        connections: set[Any] = self.server_state.connections
        connections.discard(self)
        timer, self.close_timer = self.close_timer, None
        if timer is not None:
            timer.cancel()
        self._disconnected(1006)  # unless the client's Close said otherwise before
        self._writable()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._writable()

    # ------------------------------------------------------------ uvicorn's Server

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown (after the gateway's own drain): answer an upgrade
        still pending with 503, close an open socket with 1012 (service restart), and stop
        waiting for the Close reply of one already closing."""
        if self.lost:
            return
        handshake = self.handshake
        state = self.ws.state
        if state is State.OPEN:
            self.close(1012)
        elif (
            state is State.CONNECTING
            and handshake is not None
            and handshake.phase in (handshake.CONNECTING, handshake.DENYING)
            and handshake.request is not None
            and not self.transport.is_closing()
        ):
            handshake.respond(self.ws.reject(http.HTTPStatus.SERVICE_UNAVAILABLE, ""))
        else:
            self.transport.close()

    # ------------------------------------------------------------ for the session

    def detach(self, session: SocketSession) -> None:
        """From now on, hand ``session`` every message and the disconnect, and let the ASGI app
        return without closing the socket. What was received meanwhile goes to it first."""
        handshake, self.handshake = self.handshake, None
        assert handshake is not None, "detached twice"
        handshake.detached = True
        # The upgrade request is not needed any more. websockets' parser (a generator) keeps
        # it alive as long as the socket is open, so its path (with the access token) and
        # headers are emptied (~2 KB); the scope, which refers to this protocol, goes too.
        request = handshake.request
        if request is not None:
            request.path = ""
            request.headers.clear()
        handshake.request = None
        handshake.scope = {}
        queued, handshake.inbox = handshake.inbox, []
        self.session = session
        self.resume_reading()  # it was paused while messages waited for the app
        for message in queued:
            if self.session is not session:  # told of the disconnect already
                return
            if message["type"] == "websocket.disconnect":
                self._disconnected(message["code"])
            elif message["type"] == "websocket.receive":
                session.on_data(payload(message))
        if self.lost:
            self._disconnected(1006)

    def write_frames(self, frames: bytes, max_buffer: int | None = None) -> bool:
        """Write already-encoded server-to-client WebSocket frames (``hubbub.protocol.wsframe``)
        as they are, in one ``transport.write``; the same bytes may go to many sockets.

        websockets' ``ServerProtocol`` keeps its own state but has no part in these bytes, so
        this is only right for complete data frames from server to client: unmasked, no RSV
        bits and no extensions (per-message deflate is never negotiated here), and never
        inside a fragmented message of its own (none is sent). Frames are dropped (True) when
        the socket is not open: not accepted yet, closing, or gone. With ``max_buffer``, when
        the transport already buffers more than that many bytes (the client does not read),
        nothing is written and the answer is False: the caller decides what to do about it.
        """
        if self.lost or self.ws.state is not State.OPEN:
            return True
        transport = self.transport
        if transport.is_closing():
            return True
        if max_buffer is not None and transport.get_write_buffer_size() > max_buffer:
            return False
        transport.write(frames)
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake: send a Close, read on until the client's Close comes
        (then the transport is closed), and abort the connection if it has not come within
        :data:`CLOSE_TIMEOUT`. The session hears of the disconnect now: what the client still
        sends is dropped. Nothing happens if the socket is not open."""
        if self.lost or self.ws.state is not State.OPEN or self.transport.is_closing():
            return
        self.ws.send_close(code, reason)
        self.flush()
        self.resume_reading()  # the Close reply must be read even if a task paused reading
        self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)
        self._disconnected(code, reason)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark (the client
        reads), or the connection is gone. After :meth:`close`, that is at most
        :data:`CLOSE_TIMEOUT`: a client that reads nothing is aborted then."""
        if self.lost or not self.write_paused:
            return
        if self.drain_waiter is None:
            self.drain_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self.drain_waiter)

    def pause_reading(self) -> None:
        if not self.read_paused and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.lost:
            self.read_paused = False
            self.transport.resume_reading()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task that uvicorn's graceful shutdown waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    def peer(self) -> str:
        """The client's address, for log lines."""
        client = _address(self.transport, "peername")
        return f"{client[0]}:{client[1]}" if client else "-"

    # ------------------------------------------------------------ internals

    def flush(self) -> None:
        """Write what websockets has to send; its end-of-stream mark closes the transport."""
        self._write(self.ws.data_to_send())

    def _write(self, chunks: list[bytes]) -> None:
        if not chunks or self.lost:
            return
        transport = self.transport
        data = b"".join(chunks)
        if data and not transport.is_closing():
            transport.write(data)
        if SEND_EOF in chunks:
            self._end()

    def _end(self) -> None:
        """websockets is done with the connection. After a Close frame (the closing handshake,
        or a failure: 1002, 1007, 1009), half-close and read on, dropping what the client still
        sends: closing a socket with unread data sends a reset, which can discard our Close
        in the client's buffers (it would see 1006, not why). The client closes its side on
        our FIN; one that does not is aborted after :data:`CLOSE_TIMEOUT`."""
        transport = self.transport
        if self.ws.close_sent is None or transport.is_closing() or not transport.can_write_eof():
            transport.close()  # e.g. a refused upgrade: an HTTP response
            return
        transport.write_eof()
        self.resume_reading()
        if self.close_timer is None:
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def _writable(self) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _abort(self) -> None:
        self.close_timer = None
        if not self.lost:
            log.debug("no Close reply within %.0f s: aborting the connection", CLOSE_TIMEOUT)
            self.transport.abort()

    def _disconnected(self, code: int, reason: str = "") -> None:
        """Tell the session (once) or the ASGI app that the connection is closing or gone."""
        session, self.session = self.session, None
        if session is not None:
            session.on_disconnect()
        elif self.handshake is not None:
            self.handshake.disconnect(code, reason)

    def _request(self, request: Request) -> None:
        """The upgrade request: answer a malformed one at once, else start the ASGI app."""
        handshake = self.handshake
        assert handshake is not None
        handshake.request = request
        response = self.ws.accept(request)  # validates the upgrade; the app decides the rest
        if response.status_code != 101:
            handshake.respond(response)
            return
        handshake.response = response
        config = handshake.config
        raw_path, _, query = request.path.partition("?")
        root_path = config.root_path
        subprotocols = [
            token.strip()
            for header in request.headers.get_all("Sec-WebSocket-Protocol")
            for token in header.split(",")
        ]
        transport = self.transport
        handshake.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if transport.get_extra_info("sslcontext") else "ws",
            "server": _address(transport, "sockname"),
            "client": _address(transport, "peername"),
            "root_path": root_path,
            "path": root_path + unquote(raw_path),
            "raw_path": (root_path + raw_path).encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in request.headers.raw_items()
            ],
            "subprotocols": subprotocols,
            "state": handshake.app_state.copy(),
            "extensions": {"websocket.http.response": {}, EXTENSION: self},
        }
        handshake.put({"type": "websocket.connect"})
        self.spawn(handshake.run(cast(ASGIApp, config.loaded_app)))

    def _frame(self, frame: Frame) -> bool:
        """Handle one frame from the client; True if it was its Close."""
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self.partial, self.partial_text = [bytes(frame.data)], opcode is Opcode.TEXT
            else:
                self._message(bytes(frame.data), opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            partial = self.partial
            if partial is not None:  # else websockets would have failed the connection
                partial.append(bytes(frame.data))
                if frame.fin:
                    self.partial = None
                    self._message(b"".join(partial), self.partial_text)
        elif opcode is Opcode.CLOSE:
            close = Close.parse(frame.data)  # valid: websockets checked it
            self._disconnected(close.code, close.reason)
            return True
        # PING: websockets queued the Pong (written after these events); PONG: unsolicited.
        return False

    def _message(self, data: bytes, text: bool) -> None:
        """A complete message from the client, for the session or the app; dropped once they
        were told of the disconnect: after our Close or a failure (a client's own Close comes
        after its last message, even in the same read)."""
        session, handshake = self.session, self.handshake
        if session is None and (handshake is None or handshake.disconnected):
            return
        decoded: str | None = None
        # The ASGI app wants text as str; for the session, bytes are checked (ASCII is UTF-8).
        if text and (session is None or not data.isascii()):
            try:
                decoded = data.decode()
            except UnicodeDecodeError as exc:
                if self.ws.state is State.OPEN:
                    self.ws.fail(1007, f"invalid UTF-8 at position {exc.start}")
                self._disconnected(1007)
                return
        if session is not None:
            session.on_data(data)
        elif handshake is not None:
            if text:
                handshake.put({"type": "websocket.receive", "text": decoded})
            else:
                handshake.put({"type": "websocket.receive", "bytes": data})
            self.pause_reading()  # until the app has read it (the session paces itself)
