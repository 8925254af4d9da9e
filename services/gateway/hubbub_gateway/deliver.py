"""Deliver: the gateway's index of its own connections, and writes to their sockets.

A delivery names its recipients the way the REST caller did (all, a group, a user, a
connection); this index resolves that name to local sockets. Each socket has a bounded send
queue drained by a short-lived task, so one slow client never holds up the others, and the
frame text is decoded once per delivery, not once per socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any, Protocol

from hubbub.envelopes import MESSAGE_KINDS, Delivery, Kind
from hubbub.signalr import PING_RECORD, encode_close

log = logging.getLogger("hubbub.gateway.deliver")

PING_TEXT = PING_RECORD.decode()
OVERFLOW_REASON = "Send queue overflow: the client did not read its messages fast enough."
CLOSE_WRITE_TIMEOUT = 5.0


class Socket(Protocol):
    """The part of a WebSocket the delivery path needs (Starlette's ``WebSocket`` fits)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class LocalConnection:
    """One client socket on this gateway. ``__slots__`` keeps idle connections small."""

    __slots__ = (
        "_close_frame",
        "_writer",
        "closing",
        "groups",
        "hub",
        "id",
        "idle_recv_ticks",
        "idle_send_ticks",
        "max_queue",
        "queue",
        "socket",
        "started",
        "user",
    )

    def __init__(
        self, conn_id: str, hub: str, user: str | None, socket: Socket, max_queue: int
    ) -> None:
        self.id = conn_id
        self.hub = hub
        self.user = user
        self.socket = socket
        self.max_queue = max_queue
        self.queue: deque[str] = deque()
        self.groups: set[str] = set()
        self.closing = False
        self.started = False
        self.idle_send_ticks = 0
        self.idle_recv_ticks = 0
        self._writer: asyncio.Task[None] | None = None
        self._close_frame: str | None = None

    def send(self, text: str) -> None:
        """Queue a pre-encoded frame; overflowing the bound closes the connection."""
        if self.closing:
            return
        if len(self.queue) >= self.max_queue:
            log.warning("closing connection %s: send queue overflow", self.id)
            self.close(OVERFLOW_REASON)
            return
        self.queue.append(text)
        self.idle_send_ticks = 0
        if self._writer is None and self.started:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def start(self, first: str) -> None:
        """Write ``first`` (the handshake answer), then whatever was queued meanwhile."""
        self.queue.appendleft(first)
        self.started = True
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def close(self, error: str | None = None, allow_reconnect: bool = False) -> None:
        """Send a SignalR Close (dropping what is still queued), then close the socket."""
        if self.closing:
            return
        self.closing = True
        self.queue.clear()
        self._close_frame = encode_close(error, allow_reconnect).decode()
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def closed(self) -> None:
        """Wait until a close started by :meth:`close` has been written."""
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)

    async def _drain(self) -> None:
        # Sends appended while a write is awaited are picked up by the same loop, and a
        # close() during it only sets the close frame, so one task per burst is enough.
        try:
            queue = self.queue
            while queue:
                await self.socket.send_text(queue.popleft())
            frame, self._close_frame = self._close_frame, None
            if frame is not None:
                await asyncio.wait_for(self._send_close(frame), CLOSE_WRITE_TIMEOUT)
        except Exception as exc:  # the peer went away; the receive loop cleans up
            log.debug("write to %s failed: %r", self.id, exc)
            self.closing = True
            self.queue.clear()
        finally:
            self._writer = None

    async def _send_close(self, frame: str) -> None:
        await self.socket.send_text(frame)
        await self.socket.close(1000)


class SeenIds:
    """The last N message ids delivered here: redeliveries after a worker crash are dropped."""

    __slots__ = ("_ids", "capacity")

    def __init__(self, capacity: int = 65536) -> None:
        self._ids: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity

    def first_time(self, message_id: bytes) -> bool:
        ids = self._ids
        if message_id in ids:
            return False
        ids[message_id] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)
        return True


class LocalIndex:
    """Connections of this gateway by id, hub, group and user; and delivery to them."""

    def __init__(self) -> None:
        self.connections: dict[str, LocalConnection] = {}
        self._hubs: dict[str, set[LocalConnection]] = {}
        self._groups: dict[tuple[str, str], set[LocalConnection]] = {}
        self._users: dict[tuple[str, str], set[LocalConnection]] = {}
        self.seen = SeenIds()
        self.delivered = 0
        self.duplicates = 0

    # ------------------------------------------------------------ membership

    def add(self, conn: LocalConnection) -> None:
        self.connections[conn.id] = conn
        self._hubs.setdefault(conn.hub, set()).add(conn)
        if conn.user is not None:
            self._users.setdefault((conn.hub, conn.user), set()).add(conn)

    def remove(self, conn: LocalConnection) -> None:
        if self.connections.get(conn.id) is not conn:
            return
        del self.connections[conn.id]
        _discard(self._hubs, conn.hub, conn)
        if conn.user is not None:
            _discard(self._users, (conn.hub, conn.user), conn)
        for group in conn.groups:
            _discard(self._groups, (conn.hub, group), conn)
        conn.groups.clear()

    def join(self, hub: str, group: str, conn_ids: Iterable[str]) -> None:
        for conn in self._local(hub, conn_ids):
            if group not in conn.groups:
                conn.groups.add(group)
                self._groups.setdefault((hub, group), set()).add(conn)

    def leave(self, hub: str, group: str, conn_ids: Iterable[str]) -> None:
        """Leave one group, or every group when ``group`` is empty."""
        for conn in self._local(hub, conn_ids):
            groups = list(conn.groups) if not group else [group] if group in conn.groups else []
            for name in groups:
                conn.groups.discard(name)
                _discard(self._groups, (hub, name), conn)

    def _local(self, hub: str, conn_ids: Iterable[str]) -> Iterable[LocalConnection]:
        for conn_id in conn_ids:
            conn = self.connections.get(conn_id)
            if conn is not None and conn.hub == hub:
                yield conn

    # ------------------------------------------------------------ delivery

    def handle(self, delivery: Delivery) -> None:
        kind = delivery.kind
        if kind in MESSAGE_KINDS:
            self._deliver(delivery)
        elif kind is Kind.JOIN:
            self.join(delivery.hub, delivery.target, delivery.connections)
        elif kind is Kind.LEAVE:
            self.leave(delivery.hub, delivery.target, delivery.connections)
        elif kind is Kind.CLOSE:
            for conn in list(self._local(delivery.hub, delivery.connections)):
                conn.close(delivery.reason or None)

    def _deliver(self, delivery: Delivery) -> None:
        if not self.seen.first_time(delivery.message_id):
            self.duplicates += 1
            return
        recipients = self._recipients(delivery)
        if not recipients:
            return
        text = delivery.frame.decode()
        excluded = delivery.connections
        # Copy: a send that overflows a queue must not disturb the set being walked.
        for conn in tuple(recipients):
            if excluded and conn.id in excluded:
                continue
            conn.send(text)
            self.delivered += 1

    def _recipients(self, delivery: Delivery) -> Iterable[LocalConnection] | None:
        kind = delivery.kind
        if kind is Kind.ALL:
            return self._hubs.get(delivery.hub)
        if kind is Kind.GROUP:
            return self._groups.get((delivery.hub, delivery.target))
        if kind is Kind.USER:
            return self._users.get((delivery.hub, delivery.target))
        conn = self.connections.get(delivery.target)
        return (conn,) if conn is not None and conn.hub == delivery.hub else None

    # ------------------------------------------------------------ keep-alive

    def tick(self, keepalive_ticks: int, timeout_ticks: int) -> None:
        """Called once a second: Ping idle connections, close silent ones."""
        for conn in tuple(self.connections.values()):
            conn.idle_recv_ticks += 1
            if conn.idle_recv_ticks > timeout_ticks:
                conn.close("Server timeout elapsed without receiving a message from the client.")
                continue
            conn.idle_send_ticks += 1
            if conn.idle_send_ticks >= keepalive_ticks:
                conn.send(PING_TEXT)


def _discard(index: dict[Any, set[LocalConnection]], key: object, conn: LocalConnection) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(conn)
        if not members:
            del index[key]
