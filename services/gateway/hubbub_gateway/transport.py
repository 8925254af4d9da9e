"""The gateway's WebSocket server protocol: uvicorn's sans-I/O ``websockets`` protocol, which
also hands the application its own instance, so that pre-framed messages can be written
straight to the transport (no ASGI ``send`` per socket) and a client that never reads can be
cut off (``abort``) instead of blocking its close forever.

An open SignalR connection is not served by a coroutine: once the handshake is done, the
session detaches the socket from the ASGI app (:meth:`HubbubWebSocketProtocol.detach`), the
app returns, and the protocol hands the session each message and the disconnect by callback.
So an idle connection holds no task, no suspended ASGI/middleware stack, no ``asyncio.Queue``
and no request headers: only this object, its transport and the session (see :mod:`.connect`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "hubbub.socket"


class SocketSession(Protocol):
    """What a detached socket calls: each message the client sends, then its disconnect."""

    def on_data(self, data: bytes) -> None: ...

    def on_disconnect(self) -> None: ...


def payload(message: dict[str, Any]) -> bytes:
    """A WebSocket receive event's data as bytes, whether the frame was text or binary."""
    data = message.get("bytes")
    if data is not None:
        return bytes(data)
    text = message.get("text")
    return text.encode() if text is not None else b""


class _Inbox:
    """Stands in for uvicorn's per-socket ``asyncio.Queue`` of ASGI receive events (three
    deques and an Event's, ~3 KB each socket): a list and the one receiver's future. Once the
    socket is detached, events go to the session instead of the list."""

    __slots__ = ("_items", "_waiter", "session")

    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []
        self._waiter: asyncio.Future[None] | None = None
        self.session: SocketSession | None = None

    def put_nowait(self, message: dict[str, Any]) -> None:
        session = self.session
        if session is not None:
            if message["type"] == "websocket.disconnect":
                session.on_disconnect()
            else:
                session.on_data(payload(message))
            return
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def take_all(self) -> list[dict[str, Any]]:
        items, self._items = self._items, []
        return items

    async def get(self) -> dict[str, Any]:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("the socket already has a receiver")
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Flag:
    """Stands in for uvicorn's ``writable`` ``asyncio.Event`` (a deque each socket)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class HubbubWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue: _Inbox = _Inbox()  # type: ignore[assignment]
        self.writable: _Flag = _Flag()  # type: ignore[assignment]
        self.detached = False

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # absent when the upgrade itself was refused
            scope["extensions"][EXTENSION] = self

    # ------------------------------------------------------------ detached serving

    def detach(self, session: SocketSession) -> None:
        """From now on, hand ``session`` every message and the disconnect, and let the ASGI app
        return without closing the socket. What was received meanwhile goes to it first."""
        self.detached = True
        # The upgrade request is not needed any more. The websockets parser's generator keeps
        # it alive as long as the socket is open, so its path (with the access token) and
        # headers are dropped here (~2 KB); the scope also held this protocol (a cycle).
        request = self.request
        request.path = ""
        request.headers.clear()
        self.request = None  # type: ignore[assignment]
        self.response = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]
        inbox = self.queue
        queued = inbox.take_all()
        inbox.session = session
        self.resume_reading()  # uvicorn pauses reading until its queue is read
        for message in queued:
            inbox.put_nowait(message)
        if self.disconnected:  # it went while being registered
            inbox.session = None

    def send_receive_event_to_app(self) -> None:
        session = self.queue.session
        if session is None:
            return super().send_receive_event_to_app()
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # like uvicorn: past our close, what the client still sends is dropped
        if self.curr_msg_data_type == "text":
            try:
                data.decode()  # the same check as uvicorn's, which decodes to str
            except UnicodeDecodeError:
                self.logger.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        session.on_data(bytes(data))

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Send a WebSocket close (what ``starlette.websockets.WebSocket.close`` sends)."""
        await self.send({"type": "websocket.close", "code": code, "reason": reason or ""})

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task the server waits for on shutdown, like the ASGI task."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # the session hears of the disconnect
        self.queue.session = None  # the session and this protocol referred to each other

    async def run_asgi(self) -> None:
        """uvicorn's, except that the socket stays open when the app returned after
        :meth:`detach`."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if not self.detached and self.close_timer is None:
            self.transport.close()
