"""Resume: stateful reconnect (the clients' ``withStatefulReconnect()``), on any gateway.

A resumable connection numbers every message it sends its client (Invocations, Completions:
what the SignalR spec counts; not Pings, Closes, Acks or Sequences). Each message goes to the
connection's *resume stream* in Redis before it is written to the socket (one fenced script
per connection per inbox read, all pipelined in one round trip: :class:`Journal`), and stays
there until the client acknowledges it. So when the transport drops without a Close, the
client re-attaches with its connection token to whichever gateway it reaches, and that
gateway resends what the client had not acknowledged, in order, then goes on numbering:

* here (:meth:`Journal.reattach`): the connection never left the index;
* elsewhere (:meth:`Journal.adopt`): one script moves the connection to the new gateway and
  returns its stream; what was routed to the old gateway after its last journal write (it
  was killed, or had not read it yet) is read back from the old gateway's inbox and the
  broadcast feed (:func:`addressed_to`), and the old gateway, told to let go (``RELEASE``),
  or fenced off by the script, stops writing.

Past ``HUBBUB_RECONNECT_BUFFER_BYTES`` unacknowledged, or ``HUBBUB_RECONNECT_WINDOW`` seconds
detached, the connection cannot resume: it is closed with a reason, or ended, and a later
re-attach is refused at the upgrade with why.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hubbub.metrics import Metrics
from hubbub.protocol.signalr import encode_ack, encode_sequence
from hubbub.redis.membership import Membership
from hubbub.redis.pipe import Pipe
from hubbub.wire.envelopes import Kind, MessageEntry, decode_entry

if TYPE_CHECKING:
    from .deliver import LocalConnection, LocalIndex

log = logging.getLogger("hubbub.gateway.resume")

OVERFLOW = (
    "The client did not acknowledge its messages: more than the reconnect buffer "
    "(HUBBUB_RECONNECT_BUFFER_BYTES) is waiting, so this connection cannot resume; "
    "start a new one."
)
WINDOW_PASSED = (
    "The client did not re-attach within the reconnect window (HUBBUB_RECONNECT_WINDOW)."
)
# Entries read back from the previous gateway's inbox or the feed, at most, per re-attach.
SCAN_LIMIT = 50_000


class Resume:
    """The stateful-reconnect state of one connection (``LocalConnection.resume``)."""

    __slots__ = (
        "acked",
        "adopted",
        "detached",
        "expect",
        "expire",
        "held",
        "next_seq",
        "protocol",
        "received",
        "received_told",
        "released",
        "sent",
        "sent_bytes",
        "timer",
        "trimmed",
        "unsent",
        "unsent_bytes",
    )

    def __init__(self, protocol: str, next_seq: int = 1, received: int = 0) -> None:
        self.protocol = protocol
        self.next_seq = next_seq  # the sequence id of the next message to the client
        # Journaled and written (or to write at the re-attach), not acknowledged: (seq, record).
        self.sent: deque[tuple[int, bytes]] = deque()
        self.sent_bytes = 0
        # Numbered, waiting for the journal: (seq, message id, record).
        self.unsent: list[tuple[int, bytes, bytes]] = []
        self.unsent_bytes = 0
        self.acked = next_seq - 1  # the client's last Ack
        self.trimmed = self.acked  # what the resume stream was trimmed to
        # The client's messages: the id the next one has, and the last one handled.
        self.expect = received + 1
        self.received = received
        self.received_told = received  # the last Ack we sent (and stored)
        self.detached = False
        self.timer: asyncio.TimerHandle | None = None
        self.expire: Callable[[str], None] | None = None  # ends it while detached, with why
        self.released = False  # another gateway holds it now: never unregister it here
        self.adopted = False  # taken over from another gateway: its pending calls are unknown
        # While an adoption reads back what it missed: deliveries wait here, unnumbered.
        self.held: list[tuple[bytes, bytes]] | None = None

    def counted(self) -> bool:
        """One more counted message from the client: False if it is a resend of one handled
        already (the client resends what we had not acknowledged)."""
        seq = self.expect
        self.expect = seq + 1
        if seq <= self.received:
            return False
        self.received = seq
        return True

    def first_unacked(self) -> int:
        if self.sent:
            return self.sent[0][0]
        if self.unsent:
            return self.unsent[0][0]
        return self.next_seq


def addressed_to(entry: MessageEntry, conn: LocalConnection) -> bool:
    """Whether ``conn`` is one of a message's recipients, by its own membership: for what is
    read back from another gateway's inbox or the feed at an adoption."""
    if entry.hub != conn.hub or conn.id in entry.excluded:
        return False
    kind = entry.kind
    if kind is Kind.ALL:
        return True
    if kind is Kind.GROUP:
        return entry.target in conn.groups
    if kind is Kind.USER:
        return entry.target == conn.user
    return entry.target == conn.id and not entry.reply_to


class Journal:
    """The resume streams of this gateway's resumable connections: numbering, the fenced
    write-through to Redis, Acks both ways, re-attaching and adopting."""

    def __init__(
        self,
        redis: Redis,
        membership: Membership,
        gateway: str,
        metrics: Metrics,
        buffer_max: int,
        window: float,
        inbox: bytes,
        feed: bytes,
        index: LocalIndex,
        pipe: Pipe,
    ) -> None:
        self.index = index
        self.pipe = pipe  # the hot path's connection: the journal writes go through it
        self.redis = redis
        self.membership = membership
        self.gateway = gateway
        self.metrics = metrics
        self.buffer_max = buffer_max
        self.window = window
        self.inbox = inbox
        self.feed = feed
        # The inbox reader's positions (set when it starts): what has been handled here.
        self.positions: dict[bytes, bytes] = {}
        self.dirty: dict[LocalConnection, None] = {}  # insertion-ordered set
        self.lock = asyncio.Lock()
        self.changed = asyncio.Event()  # a connection was let go of, or ended (for drain)
        self.kicked = False
        self.tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ numbering

    def add(self, conn: LocalConnection, record: bytes, message_id: bytes = b"") -> None:
        """A counted message to ``conn`` (a JSON hub record): numbered now, journaled, then
        written in order."""
        resume = conn.resume
        assert resume is not None
        if resume.released:
            return
        if resume.sent_bytes + resume.unsent_bytes > self.buffer_max:
            return  # it cannot resume: being closed or ended (below, or by the flush)
        resume.unsent_bytes += len(record)
        if resume.held is not None:
            resume.held.append((message_id, record))
        else:
            seq = resume.next_seq
            resume.next_seq = seq + 1
            resume.unsent.append((seq, message_id, record))
            self.dirty[conn] = None
        if resume.sent_bytes + resume.unsent_bytes > self.buffer_max:
            # Bounded while Redis is away too (nothing journaled: nothing moves to ``sent``).
            self._cannot_resume(conn)

    def kick(self) -> None:
        """Flush soon: for messages numbered outside an inbox read (the gateway's own
        Completions, timeouts), which the inbox reader does not flush."""
        if self.kicked or not self.dirty:
            return
        self.kicked = True
        task = asyncio.get_running_loop().create_task(self.flush())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------ the write-through

    async def flush(self) -> None:
        """Journal every waiting message (one script per hub, all in one round trip), then
        write them."""
        async with self.lock:
            self.kicked = False
            if not self.dirty:
                return
            batch = [c for c in self.dirty if c.resume is not None and not c.resume.released]
            self.dirty.clear()
            if not batch:
                return
            position = (self.positions.get(self.inbox, b""), self.positions.get(self.feed, b""))
            by_hub: dict[str, list[LocalConnection]] = {}
            # How many of each connection's messages this flush takes: more may be numbered
            # while it waits for Redis; they go with the next flush.
            taken: dict[LocalConnection, int] = {}
            for conn in batch:
                by_hub.setdefault(conn.hub, []).append(conn)
                taken[conn] = len(conn.resume.unsent) if conn.resume is not None else 0
            commands = [
                self.membership.journal(
                    hub,
                    self.gateway,
                    position,
                    [
                        (c.id, c.resume.unsent[taken[c] - 1][0] + 1, c.resume.unsent[: taken[c]])
                        if taken[c]
                        else (c.id, c.resume.next_seq, [])
                        for c in conns
                        if c.resume is not None
                    ],
                )
                for hub, conns in by_hub.items()
            ]
            try:
                replies: list[Any] = await self.pipe.execute_many(commands)
            except RedisError as exc:
                replies = [exc] * len(by_hub)
            failed: Exception | None = None
            for conns, reply in zip(by_hub.values(), replies, strict=True):
                if isinstance(reply, Exception):
                    failed = reply
                    for conn in conns:
                        self.dirty[conn] = None  # retried with the next flush
                    continue
                for conn, written in zip(conns, reply, strict=True):
                    if written == 0:
                        self.release(conn)
                    else:
                        self._written(conn, taken[conn])
            if failed is not None:  # retried by the next read's flush, or the next tick
                self.metrics.redis_errors.labels("resume").inc()
                log.warning("resume streams not written, retrying: %r", failed)
            elif self.dirty:  # numbered while this flush waited
                self.kick()

    def _written(self, conn: LocalConnection, n: int) -> None:
        """The first ``n`` messages waiting are stored: write them."""
        resume = conn.resume
        assert resume is not None
        unsent, resume.unsent = resume.unsent[:n], resume.unsent[n:]
        if resume.unsent:
            self.dirty[conn] = None
        frames: list[bytes] = []
        for seq, _, record in unsent:
            resume.sent.append((seq, record))
            resume.sent_bytes += len(record)
            resume.unsent_bytes -= len(record)
            frames.append(conn.frame(record))
        if frames and not resume.detached and not conn.closing:
            conn.send(b"".join(frames))

    def _cannot_resume(self, conn: LocalConnection) -> None:
        """More than the buffer waits for the client's Ack: closed with why (allowReconnect:
        a new connection), or, detached, ended (a re-attach is refused with why)."""
        resume = conn.resume
        assert resume is not None
        self.metrics.drops.labels("resume_overflow").inc()
        log.warning(
            "connection cannot resume: reconnect buffer full", extra={"connection_id": conn.id}
        )
        if resume.detached:
            if resume.expire is not None:
                resume.expire(OVERFLOW)
        else:
            conn.close(OVERFLOW, allow_reconnect=True)

    def release(self, conn: LocalConnection) -> None:
        """Another gateway holds ``conn`` now: let it go here, silently."""
        resume = conn.resume
        if resume is None or resume.released:
            return
        resume.released = True
        self.changed.set()
        if resume.timer is not None:
            resume.timer.cancel()
        log.info("connection resumed elsewhere", extra={"connection_id": conn.id})
        if self.index.connections.get(conn.id) is conn:
            self.index.remove(conn)
            conn.forget_calls()
            self.metrics.connections.labels(self.metrics.hub_label(conn.hub)).dec()
        conn.socket.close(1000)  # no SignalR Close: the client is elsewhere already

    # ------------------------------------------------------------ acknowledgements

    def acked(self, conn: LocalConnection, seq: int) -> None:
        """The client's Ack: what it has up to ``seq`` need not be kept."""
        resume = conn.resume
        if resume is None or seq <= resume.acked:
            return
        resume.acked = seq
        sent = resume.sent
        while sent and sent[0][0] <= seq:
            resume.sent_bytes -= len(sent.popleft()[1])

    async def tick(self, connections: Iterable[LocalConnection]) -> None:
        """Once a second: trim the resume streams to what clients acknowledged, store how
        many client messages were handled, then acknowledge them to the clients. What a
        failed flush left is retried here too."""
        self.kick()
        todo = [
            conn
            for conn in connections
            if (r := conn.resume) is not None
            and not r.released
            and (r.acked > r.trimmed or r.received > r.received_told)
        ]
        if not todo:
            return
        schema = self.membership.schema
        async with self.redis.pipeline(transaction=False) as pipe:
            for conn in todo:
                resume = conn.resume
                assert resume is not None
                hk = schema.hub(conn.hub)
                if resume.acked > resume.trimmed:
                    pipe.xtrim(hk.resume(conn.id), minid=f"0-{resume.acked + 1}")
                if resume.received > resume.received_told:
                    pipe.hset(hk.connection(conn.id), "rx", resume.received)
            await pipe.execute()
        for conn in todo:
            resume = conn.resume
            assert resume is not None
            resume.trimmed = max(resume.trimmed, resume.acked)
            if resume.received > resume.received_told:
                resume.received_told = resume.received
                if not resume.detached:
                    conn.send(conn.frame(encode_ack(resume.received)))

    # ------------------------------------------------------------ detaching and re-attaching

    def detach(self, conn: LocalConnection, expire: Callable[[str], None]) -> None:
        """The transport dropped without a Close: keep the connection for the window."""
        resume = conn.resume
        assert resume is not None
        resume.detached = True
        resume.expire = expire
        resume.timer = asyncio.get_running_loop().call_later(self.window, expire, WINDOW_PASSED)
        self.metrics.resumes.labels("detached").inc()

    def reattach(self, conn: LocalConnection) -> None:
        """A new socket for ``conn`` (``conn.socket`` set already): the Sequence, then every
        message the client has not acknowledged; what waits for the journal follows."""
        resume = conn.resume
        assert resume is not None
        if resume.timer is not None:
            resume.timer.cancel()
            resume.timer = None
        resume.detached = False
        frames = [conn.frame(encode_sequence(resume.first_unacked()))]
        frames.extend(conn.frame(record) for _, record in resume.sent)
        conn.send(b"".join(frames))
        self.metrics.resumes.labels("resumed").inc()
        self.metrics.resumed_messages.inc(len(resume.sent))

    async def read_back(
        self, conn: LocalConnection, inbox: bytes, since: tuple[bytes, bytes], known: set[bytes]
    ) -> bool:
        """Number what was routed to ``conn`` at its previous gateway and not journaled
        there (that gateway's ``inbox`` and the feed after ``since``), then what was held here
        meanwhile, each message once (``known``: the message ids in its resume stream). False
        if there was more than :data:`SCAN_LIMIT` to read."""
        resume = conn.resume
        assert resume is not None and resume.held is not None
        found: list[tuple[bytes, bytes]] = []
        for stream, after in ((inbox, since[0]), (self.feed, since[1])):
            if not after:
                continue
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(
                stream, min=b"(" + after, count=SCAN_LIMIT
            )  # type: ignore[assignment]
            if len(entries) >= SCAN_LIMIT:
                return False
            for _, fields in entries:
                try:
                    entry = decode_entry(fields)
                except Exception:  # a malformed entry is the inbox reader's to report
                    continue
                if isinstance(entry, MessageEntry) and addressed_to(entry, conn):
                    found.append((entry.message_id, entry.frame))
        self.metrics.resumed_messages.inc(len(found))
        self.unhold(conn, found, known)
        return True

    def unhold(
        self,
        conn: LocalConnection,
        first: list[tuple[bytes, bytes]] = [],  # noqa: B006 (never mutated)
        known: set[bytes] | None = None,
    ) -> None:
        """Number ``first``, then what was held while the connection was not ready (not
        registered yet, or being adopted), each message once; and store its position."""
        resume = conn.resume
        assert resume is not None
        held, resume.held = resume.held or [], None
        resume.unsent_bytes = 0  # counted again as they are numbered
        known = known if known is not None else set()
        for message_id, record in (*first, *held):
            if message_id:
                if message_id in known:
                    continue
                known.add(message_id)
            self.add(conn, record, message_id)
        self.dirty[conn] = None  # its new position, even with nothing to add
        self.kick()
