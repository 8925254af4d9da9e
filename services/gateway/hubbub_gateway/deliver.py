"""Deliver: the gateway's index of its own connections, and writes to their sockets.

A delivery names its recipients the way the REST caller did (all, a group, a user, a
connection); this index resolves that name to local sockets. The WebSocket frame is built once
per delivery and the same bytes are written to every recipient's transport, with no task or
ASGI message per socket; a slow client overflows its own bounded buffer and is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Collection, Iterable, Set
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.trace import SpanKind, Tracer

from hubbub.metrics import Metrics
from hubbub.protocol.codec import JSON, MESSAGEPACK, HubCodec
from hubbub.protocol.signalr import ProtocolError
from hubbub.protocol.wsframe import text_frame
from hubbub.telemetry import (
    BODY_SIZE,
    DESTINATION,
    MESSAGE_ID,
    OPERATION,
    SYSTEM,
    context_from,
)
from hubbub.wire.envelopes import ControlEntry, Entry, Kind, MessageEntry, Op, ResultEntry

if TYPE_CHECKING:
    from .resume import Journal, Resume

log = logging.getLogger("hubbub.gateway.deliver")

OVERFLOW_REASON = "Send buffer overflow: the client did not read its messages fast enough."
NO_GROUPS: frozenset[str] = frozenset()
# An ``excluded`` tuple longer than this is turned into a set once per delivery, so a delivery
# costs O(recipients + excluded), not recipients x excluded; shorter ones are scanned as they are.
EXCLUDED_AS_SET = 8


class Socket(Protocol):
    """What the delivery path needs of a client's socket
    (:class:`.transport.HubbubWebSocketProtocol`)."""

    def write_frames(self, frames: bytes, max_buffer: int | None = None) -> bool: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def drain(self) -> None: ...


class LocalConnection:
    """One client socket on this gateway. ``__slots__`` keeps idle connections small.

    Frames are written straight to the socket (:meth:`.transport.HubbubWebSocketProtocol.
    write_frames`). The transport's buffer is the bounded send queue: past ``max_buffer``
    bytes the client is closed with a reason, and cut off if it does not answer the Close
    either, so it never holds memory or anyone else up.
    """

    __slots__ = (
        "asked",
        "calls",
        "closing",
        "codec",
        "error",
        "groups",
        "hub",
        "id",
        "idle_recv_ticks",
        "idle_send_ticks",
        "max_buffer",
        "overflowed",
        "pending",
        "resume",
        "socket",
        "user",
    )

    def __init__(
        self, conn_id: str, hub: str, user: str | None, socket: Socket, max_buffer: int
    ) -> None:
        self.id = conn_id
        self.hub = hub
        self.user = user
        self.socket = socket
        self.max_buffer = max_buffer
        # Its groups: a set of its own from the first join (most connections never join one).
        self.groups: Set[str] = NO_GROUPS
        self.closing = False
        self.overflowed = False
        # Frames that arrive before the handshake answer is written wait here.
        self.pending: list[bytes] | None = []
        self.idle_send_ticks = 0
        self.idle_recv_ticks = 0
        # The way back (:mod:`.invoke`), None until first used: the client's blocking
        # invocations waiting for their Completion (id -> its timeout), and the server's
        # invocations waiting for the client's answer (id -> the waiting gateway, timeout).
        self.calls: dict[str, asyncio.TimerHandle] | None = None
        self.asked: dict[str, tuple[str, asyncio.TimerHandle]] | None = None
        self.error: str | None = None  # why it was closed, for the disconnected event
        # The hub protocol it negotiated: every record written to it is in this codec.
        self.codec: HubCodec = JSON
        # Stateful reconnect (:mod:`.resume`): counted messages are numbered and journaled.
        self.resume: Resume | None = None

    def frame(self, record: bytes) -> bytes:
        """A JSON hub record as the WebSocket frame this client reads (b"" if its protocol
        cannot carry it, which never happens for the records Hubbub makes)."""
        codec = self.codec
        if codec is JSON:
            return text_frame(record)
        try:
            return codec.frame(codec.from_json(record))
        except ProtocolError as exc:
            log.warning("record not transcoded for %s: %s", self.id, exc)
            return b""

    def send_record(self, record: bytes, journal: Journal | None) -> None:
        """A counted message the gateway itself answers (a JSON Completion): journaled first
        on a resumable connection; in the connection's protocol."""
        if self.resume is not None and journal is not None:
            journal.add(self, record)
            journal.kick()
        elif frame := self.frame(record):
            self.send(frame)

    def settle(self, call: str) -> bool:
        """Whether ``call`` was pending (it is not any more): only its first answer goes out."""
        calls = self.calls
        timer = calls.pop(call, None) if calls is not None else None
        if timer is None:
            return False
        timer.cancel()
        return True

    def forget_calls(self) -> None:
        """The connection is gone: its pending calls and questions time out no more."""
        for timer in (self.calls or {}).values():
            timer.cancel()
        for _, timer in (self.asked or {}).values():
            timer.cancel()
        self.calls = self.asked = None

    def send(self, frame: bytes) -> None:
        """Write one or more complete WebSocket frames."""
        if self.closing:
            return
        pending = self.pending
        if pending is not None:
            pending.append(frame)
            return
        if not self.socket.write_frames(frame, self.max_buffer):
            log.warning("closing connection %s: send buffer overflow", self.id)
            self.overflowed = True
            self.close(OVERFLOW_REASON)
            return
        self.idle_send_ticks = 0

    def start(self, first: bytes) -> None:
        """Write ``first`` (the handshake answer), then whatever arrived meanwhile."""
        pending, self.pending = self.pending or [], None
        self.send(first)
        for frame in pending:
            self.send(frame)

    def close(self, error: str | None = None, allow_reconnect: bool = False) -> None:
        """Write a SignalR Close, then close the WebSocket (the socket aborts it if the peer
        does not answer in time)."""
        if self.closing:
            return
        self.closing = True
        self.error = error
        socket = self.socket
        codec = self.codec
        socket.write_frames(codec.frame(codec.close(error, allow_reconnect)))  # past any bound
        socket.close(1000)

    async def closed(self) -> None:
        """Wait until a close started by :meth:`close` has gone out: the socket's write buffer
        drained (the client reads) or the socket is gone (at most the close timeout)."""
        await self.socket.drain()


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

    def __init__(
        self,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        inbox: str = "",
        feed: str = "",
        invocation_timeout: float = 30.0,
        max_pending_invocations: int = 100,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.tracer = tracer
        self.inbox = inbox
        self.feed = feed
        self.connections: dict[str, LocalConnection] = {}
        # Ids claimed by sockets between the upgrade and the end of their registration.
        self.reserved: set[str] = set()
        self._hubs: dict[str, set[LocalConnection]] = {}
        self._groups: dict[tuple[str, str], set[LocalConnection]] = {}
        # A user's connection, or a set of them once it has several (most users have one).
        self._users: dict[tuple[str, str], LocalConnection | set[LocalConnection]] = {}
        self.seen = SeenIds()
        # The newest lease epoch seen per publish partition: deliveries of an older one come
        # from a worker that stalled past its lease, and are refused (fencing).
        self.epochs: dict[bytes, int] = {}
        self._current_epochs: set[int] = set()
        self.delivered = 0
        self.duplicates = 0
        self.invocation_timeout = invocation_timeout
        self.max_asked = max_pending_invocations
        # REST client-result calls waiting here: invocation id -> (connection id, future).
        self.waiting: dict[str, tuple[str, asyncio.Future[bytes]]] = {}
        # While an inbox read's entries are handled: the frames for each socket, written as one.
        self._batch: dict[LocalConnection, list[bytes]] | None = None
        # Resumable connections' messages go through it (set by the gateway).
        self.journal: Journal | None = None

    # ------------------------------------------------------------ membership

    def reserve(self, conn_id: str) -> bool:
        """Claim ``conn_id`` for a socket about to handshake; False if it is live or claimed.
        Synchronous, so two sockets opening one id cannot both pass; :meth:`release` it once
        the socket is registered (then :attr:`connections` holds it) or has failed."""
        if conn_id in self.connections or conn_id in self.reserved:
            return False
        self.reserved.add(conn_id)
        return True

    def release(self, conn_id: str) -> None:
        self.reserved.discard(conn_id)

    def add(self, conn: LocalConnection) -> None:
        self.connections[conn.id] = conn
        self._hubs.setdefault(conn.hub, set()).add(conn)
        if conn.user is not None:
            key = (conn.hub, conn.user)
            found = self._users.get(key)
            if found is None:
                self._users[key] = conn
            elif isinstance(found, set):
                found.add(conn)
            elif found is not conn:
                self._users[key] = {found, conn}

    def remove(self, conn: LocalConnection) -> None:
        if self.connections.get(conn.id) is not conn:
            return
        del self.connections[conn.id]
        _discard(self._hubs, conn.hub, conn)
        if conn.user is not None:
            key = (conn.hub, conn.user)
            found = self._users.get(key)
            if found is conn:
                del self._users[key]
            elif isinstance(found, set):
                found.discard(conn)
                if not found:
                    del self._users[key]
        for group in conn.groups:
            _discard(self._groups, (conn.hub, group), conn)
        conn.groups = NO_GROUPS

    def join(self, hub: str, group: str, conn_ids: Iterable[str]) -> None:
        for conn in self._local(hub, conn_ids):
            if group not in conn.groups:
                groups = conn.groups if isinstance(conn.groups, set) else set()
                groups.add(group)
                conn.groups = groups
                self._groups.setdefault((hub, group), set()).add(conn)

    def leave(self, hub: str, group: str, conn_ids: Iterable[str]) -> None:
        """Leave one group, or every group when ``group`` is empty."""
        for conn in self._local(hub, conn_ids):
            groups = conn.groups
            if not isinstance(groups, set):  # it never joined one
                continue
            for name in list(groups) if not group else [group] if group in groups else []:
                groups.discard(name)
                _discard(self._groups, (hub, name), conn)

    def _local(self, hub: str, conn_ids: Iterable[str]) -> Iterable[LocalConnection]:
        for conn_id in conn_ids:
            conn = self.connections.get(conn_id)
            if conn is not None and conn.hub == hub:
                yield conn

    # ------------------------------------------------------------ delivery

    def handle_many(self, deliveries: list[Entry]) -> None:
        """Handle one read's entries in order. A socket that several of them reach gets its
        frames in one write: one system call per socket per read, not per message."""
        if len(deliveries) == 1:
            self.handle(deliveries[0])
            return
        self._batch = {}
        try:
            for delivery in deliveries:
                self.handle(delivery)
        finally:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        for conn, frames in (batch or {}).items():
            conn.send(frames[0] if len(frames) == 1 else b"".join(frames))

    def handle(self, entry: Entry) -> None:
        if isinstance(entry, MessageEntry):
            self._deliver(entry)
        elif isinstance(entry, ControlEntry):
            self._control(entry)
        else:
            self._result(entry)

    def _result(self, entry: ResultEntry) -> None:
        """A client's answer to a REST ``:invoke`` made here: to the caller, if it still
        waits and the answer comes from the connection it asked."""
        found = self.waiting.get(entry.call)
        if found is None or found[0] != entry.connection or found[1].done():
            return
        found[1].set_result(entry.payload)

    def _control(self, entry: ControlEntry) -> None:
        op = entry.op
        if op is Op.JOIN:
            self.join(entry.hub, entry.target, entry.connections)
        elif op is Op.LEAVE:
            self.leave(entry.hub, entry.target, entry.connections)
        elif op is Op.CLOSE:
            if self._batch:  # what was sent before the close goes out before it
                self._flush()
                self._batch = {}
            for conn in list(self._local(entry.hub, entry.connections)):
                resume = conn.resume
                if resume is not None and resume.detached and resume.expire is not None:
                    # No socket to close: it ends now, not when its window would have.
                    resume.expire(entry.reason or "The connection was closed by the server.")
                else:
                    conn.close(entry.reason or None)
        elif op is Op.RELEASE and self.journal is not None:
            for conn in list(self._local(entry.hub, entry.connections)):
                self.journal.release(conn)

    def _deliver(self, delivery: MessageEntry) -> None:
        epoch = delivery.epoch
        if epoch and epoch not in self._current_epochs and self._stale(delivery):
            return
        if not self.seen.first_time(delivery.message_id):
            self.duplicates += 1
            self.metrics.drops.labels("duplicate").inc()
            return
        if self.tracer is not None and delivery.traceparent:
            self._deliver_traced(delivery)
            return
        self._write(delivery)

    def _stale(self, delivery: MessageEntry) -> bool:
        """Fencing, for an epoch that is not its partition's newest known: older is refused
        (a worker that lost the partition since), newer becomes the partition's newest. The
        newest epochs are kept as a set too, so the usual delivery costs one lookup."""
        epoch = delivery.epoch
        partition = delivery.message_id.partition(b":")[0]
        newest = self.epochs.get(partition, 0)
        if epoch < newest:
            self.metrics.drops.labels("stale_epoch").inc()
            return True
        self._current_epochs.discard(newest)
        self._current_epochs.add(epoch)
        self.epochs[partition] = epoch
        return False

    def _call(self, delivery: MessageEntry) -> int:
        """A Completion to a pending client invocation (delivered once, while pending), or
        a server invocation whose answer a gateway awaits (client results)."""
        conn = self.connections.get(delivery.target)
        if conn is None or conn.hub != delivery.hub:
            return 0
        call = delivery.call
        if delivery.reply_to:
            asked = conn.asked
            if asked is None:
                asked = conn.asked = {}
            if call in asked or len(asked) >= self.max_asked:
                self.metrics.drops.labels("too_many_asked").inc()
                return 0
            timer = asyncio.get_running_loop().call_later(
                self.invocation_timeout, asked.pop, call, None
            )
            asked[call] = (delivery.reply_to, timer)
        elif not conn.settle(call) and not (conn.resume is not None and conn.resume.adopted):
            self.metrics.drops.labels("late_completion").inc()
            return 0
        else:
            self.metrics.invocation_outcomes.labels("answered").inc()
        if conn.resume is not None and self.journal is not None:
            self.journal.add(conn, delivery.frame, delivery.message_id)
            self.delivered += 1
            self.metrics.deliveries.inc()
            return 1
        if conn.codec is JSON:
            frame = text_frame(delivery.frame)
        else:
            found = self._transcoded(delivery)
            if found is None:
                return 0
            frame = found
        batch = self._batch
        if batch is None:
            conn.send(frame)
        else:
            batch.setdefault(conn, []).append(frame)
        self.delivered += 1
        self.metrics.deliveries.inc()
        return 1

    def _write(self, delivery: MessageEntry) -> int:
        if delivery.call:
            return self._call(delivery)
        recipients = self._recipients(delivery)
        if not recipients:
            return 0
        frame = text_frame(delivery.frame)
        # Its MessagePack frame, made for the first MessagePack recipient and only then:
        # encoded once per protocol on this gateway, whatever the number of recipients.
        binary: bytes | None = None
        excluded: Collection[str] = delivery.excluded
        if len(excluded) > EXCLUDED_AS_SET:
            excluded = frozenset(excluded)
        batch = self._batch
        written = 0
        # Copy: a send that overflows a buffer must not disturb the set being walked.
        for conn in tuple(recipients):
            if excluded and conn.id in excluded:
                continue
            out = frame
            if conn.resume is not None and self.journal is not None:
                # Journaled as JSON; written in its protocol once stored (``resume.py``).
                self.journal.add(conn, delivery.frame, delivery.message_id)
                written += 1
                continue
            if conn.codec is not JSON:
                if binary is None:
                    binary = self._transcoded(delivery) or b""
                if not binary:
                    continue
                out = binary
            if batch is None:
                conn.send(out)
            elif (frames := batch.get(conn)) is None:
                batch[conn] = [out]
            else:
                frames.append(out)
            written += 1
        self.delivered += written
        self.metrics.deliveries.inc(written)
        return written

    def _transcoded(self, delivery: MessageEntry) -> bytes | None:
        """The delivery as a MessagePack frame; None (and a drop counted) if its JSON cannot
        be transcoded, which a record from :func:`hubbub.wire.messages.build_message` or an
        upstream service's Completion always can."""
        try:
            return MESSAGEPACK.frame(MESSAGEPACK.from_json(delivery.frame))
        except ProtocolError as exc:
            log.warning("delivery %r not transcoded: %s", delivery.message_id, exc)
            self.metrics.drops.labels("not_transcoded").inc()
            return None

    def _deliver_traced(self, delivery: MessageEntry) -> None:
        assert self.tracer is not None
        source = self.feed if delivery.kind is Kind.ALL else self.inbox
        with self.tracer.start_as_current_span(
            f"process {source}",
            context=context_from(delivery.traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                SYSTEM: "redis",
                OPERATION: "process",
                DESTINATION: source,
                MESSAGE_ID: delivery.message_id.decode(),
                BODY_SIZE: len(delivery.frame),
            },
        ) as span:
            span.set_attribute("hubbub.recipients", self._write(delivery))

    def _recipients(self, delivery: MessageEntry) -> Iterable[LocalConnection] | None:
        kind = delivery.kind
        if kind is Kind.ALL:
            return self._hubs.get(delivery.hub)
        if kind is Kind.GROUP:
            return self._groups.get((delivery.hub, delivery.target))
        if kind is Kind.USER:
            found = self._users.get((delivery.hub, delivery.target))
            return (found,) if isinstance(found, LocalConnection) else found
        conn = self.connections.get(delivery.target)
        return (conn,) if conn is not None and conn.hub == delivery.hub else None

    # ------------------------------------------------------------ keep-alive

    def tick(self, keepalive_ticks: int, timeout_ticks: int) -> None:
        """Called once a second: Ping idle connections, close silent ones."""
        for conn in tuple(self.connections.values()):
            if conn.resume is not None and conn.resume.detached:
                continue  # no socket: its window timer ends it
            conn.idle_recv_ticks += 1
            if conn.idle_recv_ticks > timeout_ticks:
                conn.close("Server timeout elapsed without receiving a message from the client.")
                continue
            conn.idle_send_ticks += 1
            if conn.idle_send_ticks >= keepalive_ticks:
                conn.send(conn.codec.ping_frame)


def _discard(index: dict[Any, set[LocalConnection]], key: object, conn: LocalConnection) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(conn)
        if not members:
            del index[key]
