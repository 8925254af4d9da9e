"""Connect: a SignalR client's WebSocket, from handshake to close.

The protocol itself lives in :mod:`hubbub.protocol.signalr` (sans-I/O); this module only moves bytes
between the socket and that state machine, registers the connection in Redis and answers the
client's invocations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from hubbub.logs import REFUSALS
from hubbub.protocol import names
from hubbub.protocol.codec import CODECS
from hubbub.protocol.signalr import (
    HANDSHAKE_OK,
    Ack,
    Close,
    Completion,
    Event,
    HandshakeAccepted,
    HandshakeRejected,
    Invocation,
    Phase,
    ProtocolError,
    Sequence,
    ServerProtocol,
    StreamInvocation,
    counted,
    encode_completion,
    encode_handshake_error,
)
from hubbub.protocol.wsframe import text_frame
from hubbub.redis.membership import (
    ENDED,
    ConnectionExists,
    NotResumable,
    TooManyConnections,
    TooManyGroups,
)
from hubbub.telemetry import context_from, current_traceparent
from hubbub.tokens import (
    ClientIdentity,
    TokenError,
    new_connection_id,
    read_connection_token,
    verify_connection_id,
)
from hubbub.wire.envelopes import Event as Upstream
from hubbub.wire.envelopes import ResultEntry

from .deliver import LocalConnection
from .errors import REFUSAL_CODE, REFUSAL_PATH, REFUSAL_STATUS, ApiError
from .middleware import origin_allowed
from .negotiate import admit_client
from .resume import WINDOW_PASSED, Resume
from .state import GatewayState
from .transport import EXTENSION, HubbubWebSocketProtocol, SocketClosed, payload

log = logging.getLogger("hubbub.gateway.connect")
refusals = logging.getLogger(REFUSALS)
router = APIRouter()

HANDSHAKE_OK_FRAME = text_frame(HANDSHAKE_OK)
NO_ROLES = ClientIdentity(user_id=None, roles=frozenset())


async def _deny(ws: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the upgrade with an HTTP status and a JSON body (or 1008 if unsupported)."""
    refusals.warning(
        "upgrade refused: %s %s: %s", status, code, message,
        extra={REFUSAL_STATUS: status, REFUSAL_CODE: code, REFUSAL_PATH: ws.scope.get("path")},
    )  # fmt: skip
    try:
        await ws.send_denial_response(
            JSONResponse({"code": code, "message": message}, status_code=status)
        )
    except RuntimeError:
        await ws.close(1008, message[:120])


async def _receive(ws: WebSocket) -> bytes | None:
    """The next data frame's bytes, or None once the client has gone."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return payload(message)


@router.websocket("/hubs/{hub}")
async def hub_socket(ws: WebSocket, hub: str) -> None:
    state: GatewayState = ws.app.state.hubbub
    settings = state.settings
    origin = ws.headers.get("origin")
    if origin is not None and not origin_allowed(
        origin, ws.headers.get("host"), settings.cors_origins
    ):
        return await _deny(
            ws, 403, "Error.Origin.NotAllowed", "this origin may not connect (HUBBUB_CORS_ORIGINS)"
        )
    try:
        hub, identity = await admit_client(
            state, hub, ws.headers.get("authorization"), ws.query_params.get("access_token")
        )
    except ApiError as exc:
        return await _deny(ws, exc.status, exc.code, exc.message)

    # A connection id is never a capability: it must be one issued to this user on this hub
    # (see hubbub.tokens), so nobody else can take over a connection id.
    raw_id = ws.query_params.get("id")
    keys, user = settings.access_keys, identity.user_id
    resumable = False
    if raw_id is None:  # skipNegotiation
        conn_id = new_connection_id(settings.access_key, hub, user)
    elif "." in raw_id:  # v1: a connection token, with an expiry
        try:
            token = read_connection_token(raw_id, keys, hub, user)
        except TokenError as exc:
            return await _deny(ws, 404, "Error.Connection.NotExisted", str(exc))
        conn_id = token.connection_id
        resumable = token.resumable and settings.reconnect_window > 0
        if resumable and await _resume(state, ws, hub, conn_id, identity, token.expired):
            return  # re-attached, or refused
        if token.expired:
            return await _deny(
                ws, 404, "Error.Connection.NotExisted", "connection token has expired"
            )
    elif verify_connection_id(raw_id, keys, hub, user):
        # v0 clients send the id itself; pysignalr reconnects with its old one: a fresh session.
        conn_id = raw_id
    else:
        return await _deny(ws, 404, "Error.Connection.NotExisted", "unknown connection id")
    # Claimed before any await, so two sockets opening one id cannot both be accepted here;
    # across gateways, the registration in Redis refuses an id that is live.
    if not state.index.reserve(conn_id):
        return await _deny(ws, 409, "Error.Connection.Exists", "connection id already in use")
    try:
        await ws.accept()
        session = Session(state, ws, hub, conn_id, identity)
        if resumable:
            session.conn.resume = Resume("json")
            session.conn.resume.held = []  # until registered: the journal is fenced on it
        await session.run(ws)
    finally:
        state.index.release(conn_id)


class SocketEndpoint:
    """The hub's WebSocket for the shortcut (:func:`.endpoints.send_shortcut`): straight to
    :func:`hub_socket`, without FastAPI's routing and dependencies; the route above serves
    what the shortcut leaves to the router (a ``root_path``), with the same function."""

    def serve(
        self, scope: Scope, receive: Receive, send: Send, hub: str, name: str
    ) -> Awaitable[None]:
        """Serve the socket at ``hub`` (``name``: no recipient here, always empty)."""
        return hub_socket(WebSocket(scope, receive, send), hub)


async def _resume(
    state: GatewayState,
    ws: WebSocket,
    hub: str,
    conn_id: str,
    identity: ClientIdentity,
    expired: bool,
) -> bool:
    """A resumable connection token: re-attach the connection here, adopt it from another
    gateway, or refuse (all True); False for a first connect (no such connection yet).

    A re-attach that cannot succeed is refused at the upgrade, with why: the official client
    then starts a new connection."""
    journal = state.index.journal
    assert journal is not None
    conn = state.index.connections.get(conn_id)
    if conn is not None:
        resume = conn.resume
        if resume is None or resume.released or resume.held is not None or conn.hub != hub:
            await _deny(ws, 409, "Error.Connection.Exists", "connection id already in use")
            return True
        old = conn.socket
        session = Session(state, ws, hub, conn_id, identity, resumed=conn)  # the new socket
        if not resume.detached:  # the client saw its transport drop before we did
            resume.detached = True
            old.close(1000)
        await _accept_reattach(ws, session)
        return True
    if not state.index.reserve(conn_id):
        await _deny(ws, 409, "Error.Connection.Exists", "connection id already in use")
        return True
    try:
        adopted = await _adopt(state, ws, hub, conn_id, identity)
        if adopted is None:
            if expired:
                await _deny(ws, 404, "Error.Connection.NotResumable", "the connection ended")
                return True
            return False
        if isinstance(adopted, str):
            state.metrics.resumes.labels("refused").inc()
            await _deny(ws, 404, "Error.Connection.NotResumable", adopted)
            return True
        await _accept_reattach(ws, Session(state, ws, hub, conn_id, identity, resumed=adopted))
        return True
    finally:
        state.index.release(conn_id)


async def _accept_reattach(ws: WebSocket, session: Session) -> None:
    """Accept a re-attach and serve it; a client gone again before the accept leaves its
    connection detached, with its window, like any dropped transport."""
    try:
        await ws.accept()
    except SocketClosed:
        session.on_disconnect()
        return
    await session.run(ws)


async def _adopt(
    state: GatewayState, ws: WebSocket, hub: str, conn_id: str, identity: ClientIdentity
) -> LocalConnection | str | None:
    """Take a resumable connection over from the gateway that held it: the connection (its
    socket not accepted yet), why it cannot resume, or None if it does not exist."""
    settings, index, journal = state.settings, state.index, state.index.journal
    assert journal is not None
    hk = state.schema.hub(hub)
    conn = LocalConnection(
        conn_id, hub, identity.user_id, ws.scope["extensions"][EXTENSION], settings.send_buffer_max
    )
    conn.pending = None
    resume = conn.resume = Resume("json")
    resume.held = []  # deliveries from now on wait, unnumbered, until the read-back is done
    resume.detached = True  # nothing is written before the socket is accepted
    resume.adopted = True
    try:
        # In the index (with its groups as they are now) before it moves here, so nothing
        # routed here after the move is missed.
        raw = await state.redis.smembers(hk.connection_groups(conn_id))
        groups = {g.decode() if isinstance(g, bytes) else g for g in raw}
        index.add(conn)
        for group in groups:
            index.join(hub, group, (conn_id,))
        claimed = await state.membership.claim(hub, conn_id, settings.gateway_id, conn.user)
    except NotResumable as exc:
        index.remove(conn)
        return str(exc)
    except ConnectionExists:
        index.remove(conn)
        return "The connection id is in use by a connection that cannot resume."
    except RedisError as exc:
        index.remove(conn)
        log.warning("re-attach failed: %r", exc, extra={"connection_id": conn_id})
        return "The server is temporarily unavailable."
    if claimed is None:
        index.remove(conn)
        return None
    for group in groups - set(claimed.groups):
        index.leave(hub, group, (conn_id,))
    for group in claimed.groups:
        index.join(hub, group, (conn_id,))
    codec = CODECS.get(claimed.protocol)
    if codec is None:  # stored by a gateway of a later version
        index.remove(conn)
        return f"This gateway does not speak the connection's protocol ({claimed.protocol})."
    resume.protocol = claimed.protocol
    conn.codec = codec
    resume.next_seq = claimed.next_seq
    resume.received = resume.received_told = claimed.received
    resume.expect = claimed.received + 1
    resume.acked = resume.trimmed = (
        claimed.entries[0][0] - 1 if claimed.entries else claimed.next_seq - 1
    )
    for seq, _, record in claimed.entries:
        resume.sent.append((seq, record))
        resume.sent_bytes += len(record)
    known = {m for _, m, _ in claimed.entries if m}
    previous = claimed.previous
    try:
        if previous != settings.gateway_id:
            await state.membership.release(hub, conn_id, previous)
        complete = await journal.read_back(
            conn, state.schema.inbox(previous).encode(), (claimed.inbox_at, claimed.feed_at), known
        )
    except RedisError as exc:
        log.warning("re-attach read-back failed: %r", exc, extra={"connection_id": conn_id})
        complete = False
    if complete and resume.sent_bytes + resume.unsent_bytes > settings.reconnect_buffer_bytes:
        complete = False  # more than the buffer waits for it
    if not complete:
        resume.released = True  # ended below, as a connection that cannot resume
        index.remove(conn)
        await _end_quietly(state, hub, conn_id, "Too much was missed to resume.")
        return "Too much was missed to resume."
    state.metrics.resumes.labels("adopted").inc()
    state.metrics.connections.labels(state.metrics.hub_label(hub)).inc()
    log.info("connection adopted from gateway %s", previous, extra={"connection_id": conn_id})
    return conn


async def _end_quietly(state: GatewayState, hub: str, conn_id: str, why: str) -> None:
    try:
        await state.membership.unregister(hub, conn_id, why)
    except RedisError as exc:
        log.warning("could not end connection: %r", exc, extra={"connection_id": conn_id})


class Session:
    """One accepted WebSocket: handshake and register (in the ASGI app), then serve, then
    unregister.

    Serving is callback-driven: once registered, the session :meth:`detaches
    <.transport.HubbubWebSocketProtocol.detach>` the socket and the ASGI app returns; the
    protocol then calls :meth:`on_data` for each message and :meth:`on_disconnect` once. Only
    what needs awaiting (invocations, the client's Close, unregistering) runs in a task, one at
    a time, with reading paused meanwhile so messages are handled in order; an idle
    connection has no task or coroutine at all.
    """

    __slots__ = (
        "allowance",
        "backlog",
        "claims",
        "conn",
        "gone",
        "hub",
        "identity",
        "proto",
        "protocol",
        "resumed",
        "said_close",
        "stamp",
        "state",
        "trace",
    )

    def __init__(
        self,
        state: GatewayState,
        ws: WebSocket,
        hub: str,
        conn_id: str,
        identity: ClientIdentity,
        resumed: LocalConnection | None = None,
    ) -> None:
        self.state = state
        self.hub = hub
        # Only for may_join (the user is conn.user): clients without roles share one.
        self.identity = identity if identity.roles else NO_ROLES
        self.claims = identity.claims  # for upstream entries
        # The connection span's traceparent (tracing on): invocations without a trace of
        # their own, and the connection events, continue it.
        self.trace: str | None = None
        self.proto: HubbubWebSocketProtocol = ws.scope["extensions"][EXTENSION]
        self.resumed = resumed is not None
        if resumed is None:
            self.protocol = ServerProtocol(state.settings.max_message_size)
            self.conn = LocalConnection(
                conn_id, hub, identity.user_id, self.proto, state.settings.send_buffer_max
            )
        else:  # a re-attach (stateful reconnect): no handshake, the connection goes on
            assert resumed.resume is not None
            resumed.socket = self.proto
            self.protocol = ServerProtocol.resumed(
                state.settings.max_message_size, resumed.resume.protocol
            )
            self.conn = resumed
        # While a task handles messages, those that arrive meanwhile wait here (else None).
        self.backlog: list[bytes] | None = None
        self.gone = False  # the socket is closed (or closing): unregister, once
        self.said_close = False  # the client sent Close: a resumable connection ends too
        # Invocation rate limit: a token bucket of ``invocation_burst`` tokens refilled at
        # ``max_invocations_per_second``; ``allowance`` tokens were left at ``stamp``
        # (monotonic seconds). The two settings are read when a client invokes, not kept here.
        self.allowance = float(state.settings.invocation_burst)
        self.stamp = time.monotonic()

    async def run(self, ws: WebSocket) -> None:
        if self.resumed:
            journal = self.state.index.journal
            assert journal is not None
            journal.reattach(self.conn)
            journal.kick()
            self.proto.detach(self)
            return
        try:
            first = await asyncio.wait_for(
                self._handshake(ws), self.state.settings.handshake_timeout
            )
        except TimeoutError:
            first = None
            await self._refuse(ws, "Handshake was not received in time.")
        if first is None:
            return
        telemetry = self.state.telemetry
        if telemetry is None:
            registered = await self._register(ws)
        else:
            with telemetry.tracer.start_as_current_span(
                f"connect {self.hub}",
                kind=SpanKind.SERVER,
                attributes={"hubbub.hub": self.hub, "hubbub.connection_id": self.conn.id},
            ):
                self.trace = current_traceparent()
                registered = await self._register(ws)
        if registered:
            self._dispatch(self._admit(first))
            self.proto.detach(self)

    async def _handshake(self, ws: WebSocket) -> list[Event] | None:
        """Events that came with the handshake, or None if it failed (already answered)."""
        while True:
            data = await _receive(ws)
            if data is None:
                return None
            try:
                events = self.protocol.receive(data)
            except ProtocolError as exc:
                await self._refuse(ws, str(exc))
                return None
            if not events:
                continue
            head, rest = events[0], events[1:]
            if isinstance(head, HandshakeRejected):
                await self._refuse(ws, head.error)
                return None
            assert isinstance(head, HandshakeAccepted)
            # Before the connection is indexed: everything written to it is in its protocol.
            self.conn.codec = self.protocol.codec
            if self.conn.resume is not None:  # stored: a gateway that adopts it speaks it too
                self.conn.resume.protocol = self.protocol.codec.name
            return rest

    async def _refuse(self, ws: WebSocket, error: str, logged: bool = False) -> None:
        if not logged:
            refusals.warning("handshake refused: %s", error, extra={"connection_id": self.conn.id})
        try:
            await ws.send_text(encode_handshake_error(error).decode())
            await ws.close(1000)
        except Exception:
            log.debug("client left during handshake refusal")

    async def _register(self, ws: WebSocket) -> bool:
        state, conn = self.state, self.conn
        # Index first: a JOIN control entry that races the registration must find it.
        state.index.add(conn)
        try:
            registration = await state.membership.register(
                self.hub,
                conn.id,
                state.settings.gateway_id,
                conn.user,
                conn.resume.protocol if conn.resume is not None else None,
            )
        except (ConnectionExists, TooManyConnections, RedisError) as exc:
            state.index.remove(conn)
            if isinstance(exc, ConnectionExists):
                await self._refuse(ws, "The connection id is already in use.")
            elif isinstance(exc, TooManyConnections):
                await self._refuse(
                    ws,
                    f"This user has {exc.limit} connections, the most one user may have; "
                    "close one before opening another.",
                )
            else:
                log.warning("registration failed: %r", exc, extra={"connection_id": conn.id})
                await self._refuse(ws, "The server is temporarily unavailable.", logged=True)
            return False
        except BaseException:  # cancelled: the id must not stay in the index
            state.index.remove(conn)
            raise
        for group in registration.groups:
            state.index.join(self.hub, group, (conn.id,))
        conn.start(HANDSHAKE_OK_FRAME)
        resume, journal = conn.resume, state.index.journal
        if resume is not None and journal is not None:
            journal.unhold(conn)  # numbered now, and its position stored
        state.metrics.connections.labels(state.metrics.hub_label(self.hub)).inc()
        log.debug("connection open", extra={"connection_id": conn.id, "hub": self.hub})
        # Before any invocation of this connection: the upstream stream keeps their order.
        await self._connection_event(Upstream.CONNECTED)
        return True

    async def _connection_event(self, event: Upstream, error: str | None = None) -> None:
        try:
            await self.state.invoker.connection_event(
                self.conn, self.claims, event, error, self.trace
            )
        except RedisError as exc:
            self.state.metrics.redis_errors.labels("upstream").inc()
            log.warning(
                "%s event not appended upstream: %r",
                event.name.lower(),
                exc,
                extra={"connection_id": self.conn.id},
            )

    # ------------------------------------------------------------ serving (callbacks)

    def on_data(self, data: bytes) -> None:
        """A message from the client. Once the connection is closing, what the client still
        sends is dropped."""
        conn = self.conn
        if self.gone or conn.closing or self.protocol.phase is not Phase.OPEN:
            return
        conn.idle_recv_ticks = 0
        backlog = self.backlog
        if backlog is not None:  # a task is at work: this message waits its turn
            backlog.append(data)
            self.proto.pause_reading()
            return
        events = self._parse(data)
        if events:
            self._dispatch(events)

    def on_disconnect(self) -> None:
        """The socket closed (either side), or our close was sent: unregister, after
        whatever a task is doing for this connection."""
        if self.gone:
            return
        self.gone = True
        if self.backlog is None:
            self._finish()

    def _finish(self) -> None:
        """The socket is gone: unregister; or, a resumable connection whose transport dropped
        without a Close either way, wait for its client to re-attach (on any gateway)."""
        conn = self.conn
        if conn.socket is not self.proto:
            return  # re-attached on a new socket meanwhile
        resume, journal = conn.resume, self.state.index.journal
        if resume is not None and resume.released:
            return  # resumed on another gateway
        if (
            resume is not None
            and journal is not None
            and resume.held is None
            and not conn.closing
            and not self.said_close
        ):
            log.debug("transport dropped: detached", extra={"connection_id": conn.id})
            journal.detach(conn, self._expire)
            return
        self.proto.spawn(self._unregister())

    def _expire(self, why: str = WINDOW_PASSED) -> None:
        """The window passed (or the buffer overflowed) with the connection detached."""
        resume = self.conn.resume
        if (
            resume is None
            or resume.released
            or not resume.detached
            or self.conn.socket is not self.proto
        ):
            return
        self.state.metrics.resumes.labels("ended").inc()
        self.conn.error = why
        self.proto.spawn(self._unregister())

    def _parse(self, data: bytes) -> list[Event]:
        try:
            events = self.protocol.receive(data)
        except ProtocolError as exc:
            refusals.warning("closing connection: %s", exc, extra={"connection_id": self.conn.id})
            self.conn.close(str(exc))
            return []
        return self._admit(events)

    def _admit(self, events: list[Event]) -> list[Event]:
        """``events``, or none if they exceed the invocation rate (the connection closes).

        Rate limited is what makes the server work: each Invocation and StreamInvocation (a
        Completion to write, maybe a Redis call). Pings, CancelInvocations, Completions,
        StreamItems, Acks and Sequences are free: dropped where they are parsed, with no
        write, no task and no Redis call, they cost what reading their bytes costs.
        """
        if self.conn.resume is not None:
            events = self._sequenced(events)
        cost = 0
        for event in events:
            if isinstance(event, (Invocation, StreamInvocation)):
                cost += 1
        if cost and not self._spend(cost):
            return []
        return events

    def _sequenced(self, events: list[Event]) -> list[Event]:
        """Stateful reconnect: Acks and Sequences taken here; a counted message the client
        resends after a re-attach, handled already, is dropped."""
        conn, journal = self.conn, self.state.index.journal
        resume = conn.resume
        assert resume is not None and journal is not None
        kept: list[Event] = []
        for event in events:
            if isinstance(event, Ack):
                journal.acked(conn, event.sequence_id)
            elif isinstance(event, Sequence):
                if event.sequence_id > resume.received + 1:
                    reason = "Sequence ID greater than amount of messages we've received."
                    refusals.warning(
                        "closing connection: %s", reason, extra={"connection_id": conn.id}
                    )
                    conn.close(reason)
                    return []
                resume.expect = event.sequence_id
            elif not counted(event) or resume.counted():
                kept.append(event)
        return kept

    def _spend(self, cost: int) -> bool:
        """Take ``cost`` tokens from the bucket; False (and the connection closed) if it
        does not hold them."""
        settings = self.state.settings
        rate, burst = settings.max_invocations_per_second, settings.invocation_burst
        now = time.monotonic()
        allowance = self.allowance + (now - self.stamp) * rate
        self.stamp = now
        if allowance > burst:
            allowance = burst
        allowance -= cost
        self.allowance = allowance
        if allowance >= 0:
            return True
        reason = (
            f"Too many invocations: more than {rate:g} a second "
            f"(bursts of {burst:g}) from this connection."
        )
        refusals.warning("closing connection: %s", reason, extra={"connection_id": self.conn.id})
        self.conn.close(reason)
        return False

    def _dispatch(self, events: list[Event]) -> None:
        """Handle ``events`` now, up to the first that needs awaiting; a task does the rest."""
        for n, event in enumerate(events):
            if isinstance(event, (Invocation, Close)):
                self.backlog = []
                self.proto.spawn(self._work(events[n:]))
                return
            if isinstance(event, StreamInvocation):
                self._refuse_stream(event)
            elif isinstance(event, Completion):
                # The answer to a REST :invoke (client results). Taken here: one never asked,
                # or answered already, is dropped where it is parsed, with no task.
                answer = self.state.invoker.take(self.conn, event)
                if answer is not None:
                    self.proto.spawn(self._forward(*answer))
            # CancelInvocation (nothing streams, so nothing to cancel), Ping, StreamItem, Ack,
            # Sequence: nothing to do.

    async def _work(self, events: list[Event]) -> None:
        """Handle ``events``, then the messages that came meanwhile, in order. Once the
        connection is closing, the rest is dropped."""
        conn, backlog = self.conn, self.backlog
        assert backlog is not None
        try:
            while await self._handle(events):
                if not backlog or self.gone or conn.closing:
                    break
                if self.protocol.phase is not Phase.OPEN:
                    break
                events = self._parse(backlog.pop(0))
        except Exception:
            log.exception("error serving connection", extra={"connection_id": conn.id})
            self.proto.close(1011)  # what an ASGI app's failure gets
        finally:
            self.backlog = None
        if self.gone:
            self._finish()
        else:
            self.proto.resume_reading()

    def _refuse_stream(self, event: StreamInvocation) -> None:
        error = "Streaming invocations are not supported."
        self.conn.send_record(
            encode_completion(event.invocation_id, error=error), self.state.index.journal
        )

    async def _handle(self, events: list[Event]) -> bool:
        """False once the client sent Close."""
        for event in events:
            if isinstance(event, Invocation):
                await self._invoke(event)
            elif isinstance(event, StreamInvocation):
                self._refuse_stream(event)
            elif isinstance(event, Completion):
                answer = self.state.invoker.take(self.conn, event)
                if answer is not None:
                    await self._forward(*answer)
            elif isinstance(event, Close):
                self.conn.error = event.error
                self.said_close = True
                self.proto.close(1000)
                return False
        return True

    async def _forward(self, gateway: str, answer: ResultEntry) -> None:
        try:
            await self.state.invoker.forward(gateway, answer)
        except RedisError as exc:
            log.warning("client result lost: %r", exc, extra={"connection_id": self.conn.id})

    async def _invoke(self, inv: Invocation) -> None:
        telemetry = self.state.telemetry
        if telemetry is None:
            return await self._answer(inv)
        with telemetry.tracer.start_as_current_span(
            f"invoke {inv.target[:64]}",
            context=context_from(inv.traceparent or self.trace),  # the client's, if it sent one
            kind=SpanKind.SERVER,
            attributes={"hubbub.hub": self.hub, "hubbub.connection_id": self.conn.id},
        ):
            return await self._answer(inv)

    async def _answer(self, inv: Invocation) -> None:
        method = inv.target.lower()
        result_error: str | None = None
        if method in ("joingroup", "leavegroup"):
            result_error = await self._group_invocation(method == "joingroup", inv.arguments)
            if result_error is None and self.state.settings.upstream_group_invocations:
                # Told upstream after the fact: the Completion is the gateway's own.
                await self._upstream(Invocation(inv.target, inv.arguments))
        else:
            result_error = await self._upstream(inv)
            if result_error is None:
                return  # pending: the Completion comes from upstream (or the timeout)
        if result_error is not None:
            refusals.warning(
                "invocation refused: %s", result_error, extra={"connection_id": self.conn.id}
            )
        if inv.invocation_id is not None:
            self.conn.send_record(
                encode_completion(inv.invocation_id, error=result_error), self.state.index.journal
            )

    async def _upstream(self, inv: Invocation) -> str | None:
        """Append the invocation upstream; an error to answer at once, or None."""
        try:
            error = await self.state.invoker.invoke(self.conn, self.claims, inv)
        except RedisError as exc:
            self.state.metrics.redis_errors.labels("upstream").inc()
            log.warning("invocation not appended: %r", exc, extra={"connection_id": self.conn.id})
            return "The server is temporarily unavailable; try again."
        if error is not None:
            self.state.metrics.invocation_outcomes.labels("refused").inc()
        return error

    async def _group_invocation(self, join: bool, arguments: list[object]) -> str | None:
        if len(arguments) != 1 or not isinstance(arguments[0], str):
            return "JoinGroup and LeaveGroup take one argument: the group name."
        try:
            group = names.group_name(arguments[0])
        except names.InvalidName as exc:
            return str(exc)
        if not self.identity.may_join(group):
            return f"This connection is not permitted to join or leave group '{group[:100]}'."
        state, conn = self.state, self.conn
        try:
            if join:
                await state.membership.add_connection_to_group(self.hub, conn.id, group)
                state.index.join(self.hub, group, (conn.id,))
            else:
                await state.membership.remove_connection_from_group(self.hub, conn.id, group)
                state.index.leave(self.hub, group, (conn.id,))
        except TooManyGroups as exc:
            return (
                f"This connection is in {exc.limit} groups, the most a connection may join; "
                "leave one before joining another."
            )
        except RedisError:
            return "The server is temporarily unavailable; try again."
        return None

    async def _unregister(self) -> None:
        conn = self.conn
        if conn.resume is not None:
            if conn.resume.timer is not None:
                conn.resume.timer.cancel()
            conn.resume.released = True  # nothing more is journaled
            if self.state.index.journal is not None:
                self.state.index.journal.changed.set()
        self.state.index.remove(conn)
        conn.forget_calls()
        metrics = self.state.metrics
        metrics.connections.labels(metrics.hub_label(self.hub)).dec()
        if conn.overflowed:
            metrics.drops.labels("slow_consumer").inc()
        try:
            await self.state.membership.unregister(self.hub, conn.id, conn.error or ENDED)
        except RedisError as exc:
            metrics.redis_errors.labels("unregister").inc()
            log.warning(
                "could not unregister, retrying once Redis answers: %r",
                exc,
                extra={"connection_id": conn.id},
            )
            self.state.reconcile_soon.set()
        await self._connection_event(Upstream.DISCONNECTED, conn.error)
        log.debug("connection closed", extra={"connection_id": conn.id})
