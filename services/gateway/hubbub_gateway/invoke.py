"""Invoke: what a client does, on its way to the services that handle it (the way back).

A client's invocation (other than the built-in JoinGroup / LeaveGroup), and its connected and
disconnected events, become one entry each in the upstream stream
(:mod:`hubbub.redis.upstream`); the gateway never calls a service itself. A blocking
invocation is *pending* on its connection until its Completion comes back through the
publish stream like any send (:meth:`.deliver.LocalIndex.handle`): the first answer is
delivered, any later one dropped, and with no answer within ``HUBBUB_INVOCATION_TIMEOUT`` the
gateway answers an error itself. So the client gets exactly one Completion.

Client results, the other way round: REST ``:invoke`` sends the client an Invocation with an
id whose answer this gateway awaits (:meth:`Invoker.ask`); the gateway holding the client
takes the client's Completion if it was asked (:meth:`Invoker.take`) and forwards it to this
one's inbox (:meth:`Invoker.forward`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import orjson

from hubbub.logs import printable
from hubbub.metrics import Metrics
from hubbub.protocol.signalr import Completion, Invocation, encode_completion, encode_invocation
from hubbub.redis.pipe import Pipe
from hubbub.redis.stream import PublishStream
from hubbub.redis.upstream import UpstreamStream
from hubbub.settings import Settings
from hubbub.telemetry import current_traceparent
from hubbub.wire.envelopes import Event, Kind, MessageEntry, ResultEntry, UpstreamEntry
from hubbub.wire.keys import KeySchema

from .deliver import LocalConnection, LocalIndex

log = logging.getLogger("hubbub.gateway.invoke")

# An invocation id is held while its call is pending (up to HUBBUB_MAX_PENDING_INVOCATIONS
# per connection) and travels upstream and back: clients use short counters ("0", "1", ...).
MAX_INVOCATION_ID = 128
SHOWN = 128  # characters of a client-chosen name that an error message (and its log line) shows


def shown(name: str) -> str:
    """A client-chosen name as an error message and its log line show it: at most ``SHOWN``
    characters, control characters escaped (a newline would forge a line of the text log)."""
    return printable(name[:SHOWN])


class TooManyAsked(Exception):
    """This gateway already waits for ``HUBBUB_MAX_PENDING_INVOCATIONS`` answers from the
    connection (REST ``:invoke``): refused at once instead of timing out."""


class Invoker:
    """One gateway's side of the way back."""

    def __init__(
        self,
        settings: Settings,
        *,
        pipe: Pipe,
        publish: PublishStream,
        index: LocalIndex,
        metrics: Metrics,
    ) -> None:
        self.pipe = pipe
        self.publish = publish
        self.index = index
        self.metrics = metrics
        self.gateway = settings.gateway_id
        self.timeout = settings.invocation_timeout
        self.max_pending = settings.max_pending_invocations
        self.events = settings.upstream_connection_events
        self.schema = schema = KeySchema(settings.key_prefix)
        self.stream = UpstreamStream(
            pipe, schema, settings.upstream_partitions, settings.upstream_stream_maxlen
        )
        self._inbox_cap = ("MAXLEN", "~", settings.inbox_maxlen, "*")
        # REST :invoke calls waiting here, per connection: at most ``max_pending`` each (the
        # gateway holding the connection sends it no more than that either).
        self.asking: dict[str, int] = {}
        # Upstream services live at the last heartbeat: with none, no handler exists
        # anywhere, and an invocation is answered at once instead of waiting for a timeout.
        self.services = 0

    # ------------------------------------------------------------ client -> upstream

    async def connection_event(
        self,
        conn: LocalConnection,
        claims: bytes,
        event: Event,
        error: str | None = None,
        traceparent: str | None = None,
    ) -> None:
        """Append connected / disconnected (raises ``RedisError``); nothing while no service
        is live to consume them (the stream would only grow)."""
        if not self.events or not self.services:
            return
        await self.stream.append(
            UpstreamEntry(
                event,
                conn.hub,
                conn.id,
                self.gateway,
                conn.user,
                claims,
                error=error,
                traceparent=traceparent,
            )
        )
        self.metrics.upstream_appended.labels(event.name.lower()).inc()

    async def invoke(self, conn: LocalConnection, claims: bytes, inv: Invocation) -> str | None:
        """Append ``inv`` upstream; for a blocking one, make it pending. Returns an error to
        answer at once instead (too many pending, a reused id, Redis down), else None."""
        if not self.services:
            return f"Method '{shown(inv.target)}' does not exist on this hub."
        try:
            # Services read JSON; a MessagePack client may send what JSON cannot carry.
            arguments = orjson.dumps(inv.arguments)
        except orjson.JSONEncodeError:
            return (
                f"The arguments of '{shown(inv.target)}' hold a value JSON cannot carry "
                "(binary data, a MessagePack extension type, a map key that is not a string, "
                "or nesting too deep)."
            )
        call = inv.invocation_id or ""
        if call:
            if len(call) > MAX_INVOCATION_ID:
                return f"An invocation id may be at most {MAX_INVOCATION_ID} characters long."
            calls = conn.calls
            if calls is None:
                calls = conn.calls = {}
            if call in calls:
                return f"Invocation id '{shown(call)}' is already in use by a pending invocation."
            if len(calls) >= self.max_pending:
                return (
                    f"This connection has {self.max_pending} invocations waiting for an answer, "
                    "the most it may have; wait for one before invoking again."
                )
            loop = asyncio.get_running_loop()
            calls[call] = loop.call_later(self.timeout, self._timed_out, conn, call)
        try:
            await self.stream.append(
                UpstreamEntry(
                    Event.INVOCATION,
                    conn.hub,
                    conn.id,
                    self.gateway,
                    conn.user,
                    claims,
                    target=inv.target,
                    arguments=arguments,
                    call=call,
                    traceparent=current_traceparent(),
                )
            )
        except Exception:
            if call and conn.calls is not None and (timer := conn.calls.pop(call, None)):
                timer.cancel()
            raise
        self.metrics.upstream_appended.labels("invocation").inc()
        return None

    def _timed_out(self, conn: LocalConnection, call: str) -> None:
        calls = conn.calls
        if calls is None or calls.pop(call, None) is None:
            return
        self.metrics.invocation_outcomes.labels("timeout").inc()
        error = f"No answer within {self.timeout:g} seconds (HUBBUB_INVOCATION_TIMEOUT)."
        conn.send_record(encode_completion(call, error=error), self.index.journal)

    # ------------------------------------------------------------ client results

    async def ask(
        self, hub: str, connection: str, target: str, arguments: list[Any]
    ) -> bytes | None:
        """Invoke ``target`` on the client and wait for its answer: ``{"result": …}`` or
        ``{"error": …}`` as JSON, or None after the timeout. Whichever gateway holds the
        connection, the answer comes back to this one's inbox. Raises :class:`TooManyAsked`
        when this gateway already waits for ``max_pending`` answers from the connection."""
        asking = self.asking
        waiting = asking.get(connection, 0)
        if waiting >= self.max_pending:
            raise TooManyAsked(connection)
        asking[connection] = waiting + 1
        call = secrets.token_urlsafe(16)
        frame = encode_invocation(target, arguments, call)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.index.waiting[call] = (connection, future)
        try:
            await self.publish.append(
                MessageEntry(
                    Kind.CONNECTION,
                    hub,
                    connection,
                    frame,
                    call=call,
                    reply_to=self.gateway,
                    traceparent=current_traceparent(),
                )
            )
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            return None
        finally:
            self.index.waiting.pop(call, None)
            left = asking[connection] - 1
            if left:
                asking[connection] = left
            else:
                del asking[connection]

    def take(self, conn: LocalConnection, completion: Completion) -> tuple[str, ResultEntry] | None:
        """The client answered a server invocation: the answer, for the gateway that waits
        for it, if the connection was asked this question and had not answered it yet (taken
        here, synchronously, so a second answer is dropped where it is parsed); else None."""
        asked = conn.asked
        if asked is None:
            return None
        found = asked.pop(completion.invocation_id, None)
        if found is None:
            return None
        gateway, timer = found
        timer.cancel()
        if completion.error is not None:
            payload = orjson.dumps({"error": completion.error})
        else:
            try:
                payload = orjson.dumps({"result": completion.result})
            except orjson.JSONEncodeError:  # a MessagePack client's bytes, extension types...
                error = "The client's result holds a value JSON cannot carry."
                payload = orjson.dumps({"error": error})
        return gateway, ResultEntry(conn.hub, conn.id, completion.invocation_id, payload)

    async def forward(self, gateway: str, entry: ResultEntry) -> None:
        """Pass a client's answer (:meth:`take`) to the waiting gateway's inbox."""
        inbox = self.schema.inbox(gateway)
        await self.pipe.execute("XADD", inbox, "NOMKSTREAM", *self._inbox_cap, *entry.fields())
