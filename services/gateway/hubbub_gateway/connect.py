"""Connect: a SignalR client's WebSocket, from handshake to close.

The protocol itself lives in :mod:`hubbub.signalr` (sans-I/O); this module only moves bytes
between the socket and that state machine, registers the connection in Redis and answers the
client's invocations.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from hubbub import names
from hubbub.membership import ConnectionExists
from hubbub.signalr import (
    HANDSHAKE_OK,
    CancelInvocation,
    Close,
    Event,
    HandshakeAccepted,
    HandshakeRejected,
    Invocation,
    Phase,
    ProtocolError,
    ServerProtocol,
    StreamInvocation,
    encode_completion,
    encode_handshake_error,
)
from hubbub.tokens import (
    ClientIdentity,
    TokenError,
    new_connection_id,
    open_connection_token,
    verify_client_token,
)
from hubbub.wsframe import text_frame

from .deliver import LocalConnection
from .negotiate import bearer_token
from .state import GatewayState
from .transport import EXTENSION

log = logging.getLogger("hubbub.gateway.connect")
router = APIRouter()

HANDSHAKE_OK_FRAME = text_frame(HANDSHAKE_OK)


async def _deny(ws: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the upgrade with an HTTP status and a JSON body (or 1008 if unsupported)."""
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
    data = message.get("bytes")
    if data is not None:
        return bytes(data)
    text = message.get("text")
    return text.encode() if text is not None else b""


@router.websocket("/hubs/{hub}")
async def hub_socket(ws: WebSocket, hub: str) -> None:
    state: GatewayState = ws.app.state.hubbub
    settings = state.settings
    try:
        hub = names.hub_name(hub)
    except names.InvalidName as exc:
        return await _deny(ws, 404, "Error.Hub.Invalid", str(exc))
    if state.draining:
        return await _deny(ws, 503, "Error.Draining", "this gateway is shutting down")
    token = bearer_token(ws.headers.get("authorization"), ws.query_params.get("access_token"))
    if token is None:
        return await _deny(ws, 401, "Error.Unauthorized", "an access token is required")
    try:
        identity = verify_client_token(token, settings.access_keys, hub)
    except TokenError as exc:
        return await _deny(ws, 401, "Error.Unauthorized", str(exc))

    raw_id = ws.query_params.get("id")
    if raw_id is None:  # skipNegotiation
        conn_id = new_connection_id()
    else:
        # v1 carries a signed connection token; v0 clients send the connection id itself.
        conn_id = open_connection_token(raw_id, settings.access_keys) or raw_id
        try:
            names.connection_id(conn_id)
        except names.InvalidName:
            return await _deny(ws, 404, "Error.Connection.NotExisted", "unknown connection id")
    if conn_id in state.index.connections:
        return await _deny(ws, 409, "Error.Connection.Exists", "connection id already in use")

    await ws.accept()
    await Session(state, ws, hub, conn_id, identity).run()


class Session:
    """One accepted WebSocket: handshake, register, serve, unregister."""

    def __init__(
        self,
        state: GatewayState,
        ws: WebSocket,
        hub: str,
        conn_id: str,
        identity: ClientIdentity,
    ) -> None:
        self.state = state
        self.ws = ws
        self.hub = hub
        self.identity = identity
        self.protocol = ServerProtocol(state.settings.max_message_size)
        self.conn = LocalConnection(
            conn_id,
            hub,
            identity.user_id,
            ws.scope["extensions"][EXTENSION],
            ws,
            state.settings.send_buffer_max,
        )

    async def run(self) -> None:
        try:
            first = await asyncio.wait_for(self._handshake(), self.state.settings.handshake_timeout)
        except TimeoutError:
            first = None
            await self._refuse("Handshake was not received in time.")
        if first is None:
            return
        telemetry = self.state.telemetry
        if telemetry is None:
            registered = await self._register()
        else:
            with telemetry.tracer.start_as_current_span(
                f"connect {self.hub}",
                kind=SpanKind.SERVER,
                attributes={"hubbub.hub": self.hub, "hubbub.connection_id": self.conn.id},
            ):
                registered = await self._register()
        if not registered:
            return
        try:
            await self._serve(first)
        finally:
            await self._unregister()

    async def _handshake(self) -> list[Event] | None:
        """Events that came with the handshake, or None if it failed (already answered)."""
        while True:
            data = await _receive(self.ws)
            if data is None:
                return None
            try:
                events = self.protocol.receive(data)
            except ProtocolError as exc:
                await self._refuse(str(exc))
                return None
            if not events:
                continue
            head, rest = events[0], events[1:]
            if isinstance(head, HandshakeRejected):
                await self._refuse(head.error)
                return None
            assert isinstance(head, HandshakeAccepted)
            return rest

    async def _refuse(self, error: str) -> None:
        log.info("handshake refused: %s", error)
        try:
            await self.ws.send_text(encode_handshake_error(error).decode())
            await self.ws.close(1000)
        except Exception:
            log.debug("client left during handshake refusal")

    async def _register(self) -> bool:
        state, conn = self.state, self.conn
        # Index first: a JOIN control entry that races the registration must find it.
        state.index.add(conn)
        try:
            registration = await state.membership.register(
                self.hub, conn.id, state.settings.gateway_id, conn.user
            )
        except (ConnectionExists, RedisError) as exc:
            log.warning("registration failed: %r", exc, extra={"connection_id": conn.id})
            state.index.remove(conn)
            error = (
                "The connection id is already in use."
                if isinstance(exc, ConnectionExists)
                else "The server is temporarily unavailable."
            )
            await self._refuse(error)
            return False
        for group in registration.groups:
            state.index.join(self.hub, group, (conn.id,))
        conn.start(HANDSHAKE_OK_FRAME)
        state.metrics.connections.labels(self.hub).inc()
        log.debug("connection open", extra={"connection_id": conn.id, "hub": self.hub})
        return True

    async def _serve(self, first: list[Event]) -> None:
        conn = self.conn
        if not await self._handle(first):
            return
        while self.protocol.phase is Phase.OPEN and not conn.closing:
            data = await _receive(self.ws)
            if data is None:
                return
            conn.idle_recv_ticks = 0
            try:
                events = self.protocol.receive(data)
            except ProtocolError as exc:
                log.info("closing connection: %s", exc, extra={"connection_id": conn.id})
                conn.close(str(exc))
                break
            if not await self._handle(events):
                return
        # We are closing: wait for the Close record to be written, then for the client's close.
        await conn.closed()
        while await _receive(self.ws) is not None:
            pass

    async def _handle(self, events: list[Event]) -> bool:
        """False once the client sent Close."""
        for event in events:
            if isinstance(event, Invocation):
                await self._invoke(event)
            elif isinstance(event, StreamInvocation):
                error = "Streaming invocations are not supported."
                self.conn.send(text_frame(encode_completion(event.invocation_id, error=error)))
            elif isinstance(event, Close):
                try:
                    await self.ws.close(1000)
                except Exception:
                    log.debug("socket already closed")
                return False
            elif isinstance(event, CancelInvocation):
                continue  # nothing streams, so nothing to cancel
            # Ping, Completion (client results), StreamItem, Ack, Sequence: nothing to do.
        return True

    async def _invoke(self, inv: Invocation) -> None:
        telemetry = self.state.telemetry
        if telemetry is None:
            return await self._answer(inv)
        with telemetry.tracer.start_as_current_span(
            f"invoke {inv.target[:64]}",
            kind=SpanKind.SERVER,
            attributes={"hubbub.hub": self.hub, "hubbub.connection_id": self.conn.id},
        ):
            return await self._answer(inv)

    async def _answer(self, inv: Invocation) -> None:
        method = inv.target.lower()
        result_error: str | None = None
        if method in ("joingroup", "leavegroup"):
            result_error = await self._group_invocation(method == "joingroup", inv.arguments)
        else:
            result_error = f"Method '{inv.target}' does not exist on this hub."
        if inv.invocation_id is not None:
            self.conn.send(text_frame(encode_completion(inv.invocation_id, error=result_error)))

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
        except RedisError:
            return "The server is temporarily unavailable; try again."
        return None

    async def _unregister(self) -> None:
        conn = self.conn
        self.state.index.remove(conn)
        metrics = self.state.metrics
        metrics.connections.labels(self.hub).dec()
        if conn.overflowed:
            metrics.drops.labels("slow_consumer").inc()
        try:
            await self.state.membership.unregister(self.hub, conn.id)
        except RedisError as exc:
            metrics.redis_errors.labels("unregister").inc()
            log.warning(
                "could not unregister, the connection stays in Redis: %r",
                exc,
                extra={"connection_id": conn.id},
            )
        log.debug("connection closed", extra={"connection_id": conn.id})
