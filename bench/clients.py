"""Load-client processes: each holds its share of the WebSocket connections (SignalR for Hubbub,
in the hub protocol ``--client-protocol`` names, Engine.IO / Socket.IO for the peers), counts what
arrives, and reports it per phase.

Hubbub's client protocols (:data:`CLIENT_PROTOCOLS`), each a :class:`Receiver` subclass that
only parses; the counting (latency, duplicates, wrong recipient, late) is
:meth:`Receiver.deliver` for all of them, on the payload ``arguments[0]``:

- ``json``: SignalR JSON, version 1 (:class:`SignalRReceiver`).
- ``stateful``: SignalR JSON, version 2, after a negotiate with ``useStatefulReconnect=true``
  (:class:`StatefulSignalRReceiver`): counts the messages the server numbers (Invocations,
  Completions) and acknowledges them as the JS client does, at most once a second.
- ``messagepack``: the SignalR MessagePack protocol (:class:`MessagePackReceiver`): binary
  frames of varint-length-prefixed MessagePack arrays.
"""

from __future__ import annotations

import abc
import array
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from bench.common import (
    ACCESS_KEY,
    CLIENT_PING_INTERVAL,
    HUB,
    RS,
    TARGET_METHOD,
    ClientSpec,
    pipe_recv,
    run_loop,
)


@dataclass
class ClientStats:
    """What one load-client process saw in the current phase; shipped to the orchestrator."""

    received: int = 0
    duplicates: int = 0
    misdelivered: int = 0
    other_records: int = 0
    closed_by_server: int = 0
    close_reasons: dict[str, int] = field(default_factory=dict)
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    last_receive: float = 0.0
    first_latency: dict[int, float] = field(default_factory=dict)  # seq -> earliest latency
    late: int = 0  # messages of an earlier phase
    frames: int = 0  # every message ever received (all phases): tells when traffic stopped
    seq_base: int = 0  # the current phase's first sequence number
    generation: int = 0  # bumped per phase: receivers then forget the sequences they saw
    stopping: bool = False  # our own closes at the end are not the server's doing
    negotiate_retries: dict[str, int] = field(default_factory=dict)  # SignalR: why, how often

    def record_close(self, reason: str) -> None:
        self.closed_by_server += 1
        self.close_reasons[reason] = self.close_reasons.get(reason, 0) + 1

    def new_phase(self, seq_base: int) -> None:
        self.received = self.duplicates = self.misdelivered = self.other_records = 0
        self.closed_by_server = self.late = 0
        self.close_reasons = {}
        self.latencies = array.array("d")
        self.last_receive = 0.0
        self.first_latency = {}
        self.seq_base = seq_base
        self.generation += 1


class Receiver(abc.ABC):
    """One load client's counting of the messages it gets (protocol-independent part).

    Latency is sampled on every message (receive time - the publish time it carries); a repeated
    sequence number is a duplicate, a message for another group or user a misdelivery.
    """

    __slots__ = ("closed", "generation", "group", "handshake", "loads", "seen", "send", "stats",
                 "user")  # fmt: skip

    def __init__(self, spec: ClientSpec, stats: ClientStats, handshake: asyncio.Future[Any]):
        import orjson

        self.loads = orjson.loads
        self.stats = stats
        self.group, self.user = spec.group, spec.user
        self.handshake = handshake
        self.seen: set[int] = set()
        self.generation = stats.generation
        self.closed = False
        self.send: Callable[[str | bytes], None] = lambda data: None  # set by the opener

    def deliver(self, payload: dict[str, Any], now: float) -> None:
        stats = self.stats
        stats.frames += 1
        if self.generation != stats.generation:
            self.seen.clear()
            self.generation = stats.generation
        seq = payload["s"]
        if seq < stats.seq_base:
            stats.late += 1
            return
        if seq in self.seen:
            stats.duplicates += 1
            return
        self.seen.add(seq)
        stats.received += 1
        latency = now - payload["t"]
        stats.latencies.append(latency)
        if latency < stats.first_latency.get(seq, 1e9):
            stats.first_latency[seq] = latency
        stats.last_receive = now
        group, user = payload.get("g"), payload.get("u")
        if (group is not None and group != self.group) or (user is not None and user != self.user):
            stats.misdelivered += 1

    @abc.abstractmethod
    def feed(self, data: bytes, now: float) -> bool:
        """One WebSocket message; False once the server closed the session."""

    def lost(self, reason: str) -> None:
        """The socket ended (for whatever reason)."""
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(reason))
        elif not self.closed and not self.stats.stopping:
            self.stats.record_close(reason)
        self.closed = True


class SignalRReceiver(Receiver):
    """SignalR JSON: the handshake answer ``{}``, then records; Pings (type 6) are ignored; a
    Close (type 7) is recorded with its error."""

    __slots__ = ()

    def feed(self, data: bytes, now: float) -> bool:
        records = data.split(RS)
        if not self.handshake.done():
            if records[0] != b"{}":
                self.handshake.set_exception(RuntimeError(f"handshake refused: {data[:200]!r}"))
                return False
            self.handshake.set_result(None)
            records = records[1:]
        stats, loads = self.stats, self.loads
        for record in records:
            if not record:
                continue
            message = loads(record)
            kind = message.get("type")
            if kind == 1:
                self.deliver(message["arguments"][0], now)
            elif kind == 6:
                continue
            elif kind == 7:
                self.closed = True
                stats.record_close(str(message.get("error") or "Close record without error"))
                return False
            else:
                stats.other_records += 1
        return True


class StatefulSignalRReceiver(Receiver):
    """SignalR JSON version 2 (stateful reconnect) as the JS client does it: every Invocation
    (type 1) or Completion (type 3) counts; the first one not yet acknowledged arms a 1 s timer,
    which then sends an Ack (type 8) with the count so far. The server's Acks (of the client's
    own messages: none here) are ignored like Pings; a Sequence (type 9, only after a
    re-attach) is an other record."""

    __slots__ = ("ack_timer", "counted", "loop")

    def __init__(self, spec: ClientSpec, stats: ClientStats, handshake: asyncio.Future[Any]):
        super().__init__(spec, stats, handshake)
        self.loop = asyncio.get_running_loop()
        self.counted = 0  # messages the server numbered, received so far
        self.ack_timer: asyncio.TimerHandle | None = None

    def _ack(self) -> None:
        self.ack_timer = None
        if not self.closed:
            self.send(f'{{"type":8,"sequenceId":{self.counted}}}\x1e')  # a text frame

    def feed(self, data: bytes, now: float) -> bool:
        records = data.split(RS)
        if not self.handshake.done():
            if records[0] != b"{}":
                self.handshake.set_exception(RuntimeError(f"handshake refused: {data[:200]!r}"))
                return False
            self.handshake.set_result(None)
            records = records[1:]
        stats, loads = self.stats, self.loads
        counted = self.counted
        for record in records:
            if not record:
                continue
            message = loads(record)
            kind = message.get("type")
            if kind == 1:
                counted += 1
                self.deliver(message["arguments"][0], now)
            elif kind == 6 or kind == 8:
                continue
            elif kind == 3:
                counted += 1
                stats.other_records += 1
            elif kind == 7:
                self.closed = True
                stats.record_close(str(message.get("error") or "Close record without error"))
                return False
            else:
                stats.other_records += 1
        if counted != self.counted:
            self.counted = counted
            if self.ack_timer is None:
                self.ack_timer = self.loop.call_later(1.0, self._ack)
        return True

    def lost(self, reason: str) -> None:
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        super().lost(reason)


class MessagePackReceiver(Receiver):
    """SignalR MessagePack: the handshake answer is still JSON text (``{}``); then binary
    frames, each one or more records, each a varint length (7 bits a byte, least significant
    group first, high bit = more) and a MessagePack array: Invocation ``[1, headers,
    invocationId, target, arguments]``, Ping ``[6]`` (ignored), Close ``[7, error, ...]``
    (recorded with its error)."""

    __slots__ = ("unpackb",)

    def __init__(self, spec: ClientSpec, stats: ClientStats, handshake: asyncio.Future[Any]):
        import msgpack

        super().__init__(spec, stats, handshake)
        self.unpackb = msgpack.unpackb

    def feed(self, data: bytes, now: float) -> bool:
        if not self.handshake.done():
            records = data.split(RS)
            if records[0] != b"{}":
                self.handshake.set_exception(RuntimeError(f"handshake refused: {data[:200]!r}"))
                return False
            self.handshake.set_result(None)
            if any(records[1:]):  # binary records never share the handshake's text frame
                self.stats.other_records += 1
            return True
        stats, unpackb = self.stats, self.unpackb
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            byte = data[pos]
            pos += 1
            length = byte & 0x7F
            shift = 7
            while byte & 0x80:
                byte = data[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
            message = unpackb(view[pos : pos + length])
            pos += length
            kind = message[0]
            if kind == 1:
                self.deliver(message[4][0], now)
            elif kind == 6:
                continue
            elif kind == 7:
                self.closed = True
                error = message[1] if len(message) > 1 else None
                stats.record_close(str(error or "Close record without error"))
                return False
            else:
                stats.other_records += 1
        return True


class SocketIOReceiver(Receiver):
    """Engine.IO v4 / Socket.IO v5 over a WebSocket: ``0{...}`` (open) → send ``40``; ``40{sid}``
    completes the handshake (its result is the Socket.IO sid); ``2`` (ping) → send ``3``;
    ``42["newMessage",payload]`` is a message; ``41`` / ``1`` / ``44`` end the session."""

    __slots__ = ()

    def feed(self, data: bytes, now: float) -> bool:
        if not data:
            return True
        head = data[0]
        stats = self.stats
        if head == 0x34:  # "4": an Engine.IO message, i.e. a Socket.IO packet
            kind = data[1:2]
            if kind == b"2":  # EVENT (namespace "/", no ack id)
                event = self.loads(data[2:])
                if event[0] == TARGET_METHOD:
                    self.deliver(event[1], now)
                else:
                    stats.other_records += 1
            elif kind == b"0":  # CONNECT ack
                if not self.handshake.done():
                    self.handshake.set_result(self.loads(data[2:])["sid"])
            elif kind in (b"1", b"4"):  # DISCONNECT, CONNECT_ERROR
                reason = f"socket.io packet {data[:200]!r}"
                if not self.handshake.done():
                    self.handshake.set_exception(RuntimeError(reason))
                elif not self.closed:
                    stats.record_close(reason)
                self.closed = True
                return False
            else:
                stats.other_records += 1
        elif head == 0x32:  # "2": Engine.IO ping
            self.send("3")
        elif head == 0x30:  # "0": Engine.IO open
            self.send("40")
        elif head == 0x31:  # "1": Engine.IO close
            if self.handshake.done() and not self.closed:
                stats.record_close("engine.io close packet")
            self.closed = True
            return False
        else:
            stats.other_records += 1
        return True


class WebsocketsClient:
    """``--client-impl websockets``: the websockets library's asyncio client, a reader task per
    connection. Simple and obviously right; costs a task wake-up, a future and a message
    assembler per frame."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.extensions = ""
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None
        self.pending: set[asyncio.Task[None]] = set()

    async def open(self, url: str, compression: bool) -> None:
        import websockets

        self.ws = await websockets.connect(
            url,
            max_size=None,
            ping_interval=None,
            compression="deflate" if compression else None,
            open_timeout=60,
        )
        self.extensions = self.ws.response.headers.get("Sec-WebSocket-Extensions", "")
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        import websockets

        recv, feed = self.ws.recv, self.receiver.feed
        try:
            while True:
                if not feed(await recv(decode=False), time.time()):
                    return
        except websockets.ConnectionClosed as exc:
            self.receiver.lost(f"socket closed: {exc}")

    async def send(self, data: str | bytes) -> None:
        await self.ws.send(data)  # bytes: a binary frame

    def send_now(self, data: str | bytes) -> None:
        task = asyncio.get_running_loop().create_task(self.send(data))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()


class SansIOClient(asyncio.Protocol):
    """``--client-impl sansio`` (default): the same library's sans-I/O ``ClientProtocol`` (its
    handshake, frame parser, control frames and permessage-deflate) driven straight from an
    asyncio transport callback: no task, future or assembler per frame.

    Kept (over :class:`WebsocketsClient`, the library's own client) because of this measurement
    (Hubbub, W1 broadcast, 2 client processes, 3-5 s phases taking turns, websockets 17.4, on the
    shared 2-core machine with 1-1.6 cores of other load):

    - 200 clients at 300 msg/s (60,000 deliveries/s, a ramp-sized step): with ``sansio`` the
      clients kept up (58,000-60,000 deliveries/s, latency p50 13-49 ms); with ``websockets``
      they did not (46,000-53,000 deliveries/s, p50 320-880 ms, p99 0.9-2.5 s), so a ramp step
      would have failed on the load clients rather than on the servers. Client CPU per
      delivery: 6.0-8.3 µs vs 7.1-7.9 µs.
    - 1,000 clients at 10 msg/s: 24.3-24.5 vs 31.4-32.1 µs of client CPU per delivery (the
      busiest client process 0.12 vs 0.15 CPU-s/s), i.e. about a quarter less.
    """

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.extensions = ""
        self.protocol: Any = None
        self.transport: Any = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.fragments: list[bytes] = []
        self.reading = True

    async def open(self, url: str, compression: bool) -> None:
        from websockets.client import ClientProtocol
        from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        self.protocol = ClientProtocol(
            uri,
            extensions=[ClientPerMessageDeflateFactory()] if compression else None,
            max_size=None,
        )
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, uri.host, uri.port)
        await asyncio.wait_for(asyncio.shield(self.opened), 60)

    # asyncio.Protocol

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self.transport = transport
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode

        protocol = self.protocol
        protocol.receive_data(data)
        now = time.time()
        events = protocol.events_received()
        self._flush()  # pongs, close replies
        for event in events:
            if not isinstance(event, Frame):  # the handshake response
                if protocol.handshake_exc is not None:
                    self.opened.set_exception(protocol.handshake_exc)
                else:
                    self.extensions = event.headers.get("Sec-WebSocket-Extensions", "")
                    self.opened.set_result(None)
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                if not event.fin:
                    self.fragments.append(bytes(event.data))
                    continue
                payload = bytes(event.data)
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments = []
                if self.reading and not self.receiver.feed(payload, now):
                    self.reading = False

    def connection_lost(self, exc: Exception | None) -> None:
        protocol = self.protocol
        protocol.receive_eof()
        reason = f"socket closed: {protocol.close_code} {protocol.close_reason or ''}".strip()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        self.receiver.lost(reason)
        if not self.done.done():
            self.done.set_result(None)

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    # what the load client calls

    def send_now(self, data: str | bytes) -> None:
        """Text for a ``str``, a binary frame for ``bytes``; nothing once the connection is
        closing (a Socket.IO ping answered while the peer closes it at the end of a run)."""
        from websockets.protocol import State

        if self.transport is None or self.transport.is_closing():
            return
        if self.protocol.state is not State.OPEN:
            return
        if isinstance(data, str):
            self.protocol.send_text(data.encode())
        else:
            self.protocol.send_binary(data)
        self._flush()

    async def send(self, data: str | bytes) -> None:
        self.send_now(data)

    async def close(self) -> None:
        if self.transport is None or self.done.done():
            return
        with contextlib.suppress(Exception):
            self.protocol.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.done), 5)
        except TimeoutError:
            self.transport.abort()


AnyClient = WebsocketsClient | SansIOClient
CLIENT_IMPLS: dict[str, Callable[[Receiver], AnyClient]] = {
    "websockets": WebsocketsClient,
    "sansio": SansIOClient,
}
HANDSHAKE = '{"protocol":"json","version":1}\x1e'
PING = '{"type":6}\x1e'


@dataclass(frozen=True)
class ClientProtocol:
    """How a SignalR load client speaks to Hubbub (``--client-protocol``)."""

    receiver: type[Receiver]
    handshake: str  # always a JSON text frame
    ping: str | bytes  # bytes: a binary frame
    stateful: bool = False  # negotiate with useStatefulReconnect=true (and insist on it)
    label: str = ""
    # Sent before the WebSocket closes at the end: a resumable connection whose socket just
    # closes waits for its client to re-attach (the reconnect window), as after a drop.
    goodbye: str | bytes | None = None


CLIENT_PROTOCOLS: dict[str, ClientProtocol] = {
    "json": ClientProtocol(SignalRReceiver, HANDSHAKE, PING, label="SignalR JSON v1"),
    "stateful": ClientProtocol(
        StatefulSignalRReceiver,
        '{"protocol":"json","version":2}\x1e',
        PING,
        stateful=True,
        label="SignalR JSON v2, stateful reconnect (Acks at most once a second)",
        goodbye='{"type":7}\x1e',  # a Close, as the JS client's stop() sends
    ),
    "messagepack": ClientProtocol(
        MessagePackReceiver,
        '{"protocol":"messagepack","version":1}\x1e',
        b"\x02\x91\x06",  # length 2, then the MessagePack array [6] (0x91 0x06)
        label="SignalR MessagePack v1",
    ),
}


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of :class:`Negotiator`: one request at a time,
    the response parsed by httptools' C parser (what uvicorn uses)."""

    def __init__(self) -> None:
        import httptools

        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None

    async def request(self, data: bytes) -> tuple[int, bytes, bool]:
        """Status, body, and whether the connection may be reused."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.body = []
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await asyncio.wait_for(self.waiter, 60)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol and the parser's callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc!r}"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            response = self.parser.get_status_code(), b"".join(self.body)
            self.waiter.set_result((*response, self.parser.should_keep_alive()))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class Negotiator:
    """The load clients' negotiate POSTs, over keep-alive connections to each gateway.

    httpx spent 56 % of a load-client process's CPU while W4 opened 6,000 connections
    (py-spy: its connection pool's bookkeeping per request), so the clients, not the
    gateways, set W4's connect time. This does the one request shape negotiate needs,
    in a few Python calls per request: connect time is then the servers' to set.
    """

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[_HttpConnection]] = {}

    async def post(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST with an empty body; status and body. A reused connection the server closed
        meanwhile (uvicorn closes idle ones after 5 s) is retried once on a new one."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        head = [f"POST {parts.path}?{parts.query} HTTP/1.1", f"Host: {parts.netloc}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        data = ("\r\n".join([*head, "Content-Length: 0", "", ""])).encode()
        pool = self.idle.setdefault((host, port), [])
        while True:
            reused = bool(pool)
            if reused:
                connection = pool.pop()
            else:
                _, connection = await asyncio.get_running_loop().create_connection(
                    _HttpConnection, host, port
                )
            try:
                status, body, keep_alive = await connection.request(data)
            except ConnectionError:
                connection.close()
                if reused:
                    continue  # closed while idle: try the next one, or a new one
                raise
            if keep_alive:
                pool.append(connection)
            else:
                connection.close()
            return status, body

    def close(self) -> None:
        for pool in self.idle.values():
            for connection in pool:
                connection.close()
        self.idle.clear()


async def open_signalr_client(
    spec: ClientSpec,
    http: Any,
    stats: ClientStats,
    impl: str,
    compression: bool,
    client_protocol: str = "json",
) -> tuple[str, AnyClient]:
    """Negotiate, open the WebSocket, complete the SignalR handshake in ``client_protocol``;
    then the receiver counts everything that arrives. Returns the connection id and the
    client."""
    import orjson

    from hubbub.tokens import mint_token

    proto = CLIENT_PROTOCOLS[client_protocol]
    query = "negotiateVersion=1" + ("&useStatefulReconnect=true" if proto.stateful else "")
    token = mint_token(ACCESS_KEY, "http://bench/client", user_id=spec.user)
    for attempt in range(3):
        try:
            status, raw = await http.post(
                f"{spec.base_url}/hubs/{HUB}/negotiate?{query}",
                headers={"Authorization": f"Bearer {token}"},
            )
            break
        except (ConnectionError, OSError) as exc:  # a new connection refused or lost
            stats.negotiate_retries[repr(exc)[:80]] = (
                stats.negotiate_retries.get(repr(exc)[:80], 0) + 1
            )
            if attempt == 2:
                raise
    if status != 200:
        raise RuntimeError(f"negotiate answered {status}: {raw[:200]!r}")
    body = orjson.loads(raw)
    if proto.stateful and body.get("useStatefulReconnect") is not True:
        raise RuntimeError(f"negotiate did not grant stateful reconnect: {body}")
    ws_url = spec.base_url.replace("http://", "ws://", 1)
    url = f"{ws_url}/hubs/{HUB}?id={body['connectionToken']}&access_token={token}"
    receiver = proto.receiver(spec, stats, asyncio.get_running_loop().create_future())
    client = CLIENT_IMPLS[impl](receiver)
    receiver.send = client.send_now
    await client.open(url, compression)
    try:
        await client.send(proto.handshake)
        await asyncio.wait_for(asyncio.shield(receiver.handshake), 30)
    except BaseException:
        await client.close()
        raise
    return body["connectionId"], client


async def open_socketio_client(
    spec: ClientSpec,
    http: Any,
    stats: ClientStats,
    impl: str,
    compression: bool,
    client_protocol: str = "json",  # Hubbub's only: Socket.IO is always Socket.IO
) -> tuple[str, AnyClient]:
    """Open ``/socket.io/?EIO=4&transport=websocket`` (no polling first) with the rooms to join
    in the query; the receiver answers ``0{...}`` with ``40`` and the handshake completes on
    ``40{"sid": ...}``. Returns the Socket.IO sid and the client."""
    query = {"EIO": "4", "transport": "websocket", "user": spec.user}
    if spec.group:
        query["group"] = spec.group
    url = f"{spec.base_url.replace('http://', 'ws://', 1)}/socket.io/?{urlencode(query)}"
    receiver = SocketIOReceiver(spec, stats, asyncio.get_running_loop().create_future())
    client = CLIENT_IMPLS[impl](receiver)
    receiver.send = client.send_now
    await client.open(url, compression)
    try:
        sid: str = await asyncio.wait_for(asyncio.shield(receiver.handshake), 30)
    except BaseException:
        await client.close()
        raise
    return sid, client


OPENERS = {"signalr": open_signalr_client, "socketio": open_socketio_client}


def protocol_label(client_protocol: str) -> str:
    """``json`` → its description; a mix (``json+messagepack``) → each, joined."""
    return " + ".join(CLIENT_PROTOCOLS[p].label for p in client_protocol.split("+"))


def client_process_main(
    conn: multiprocessing.connection.Connection, config: dict[str, Any]
) -> None:
    """Entry point of one load-client process (spawned: no inherited event loop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator handles Ctrl-C
    run_loop(_client_process(conn, config))


async def _client_process(
    conn: multiprocessing.connection.Connection, config: dict[str, Any]
) -> None:
    loop = asyncio.get_running_loop()
    stats = ClientStats()
    specs = [ClientSpec(**s) for s in config["specs"]]
    clients: dict[int, AnyClient] = {}
    ids: dict[int, str] = {}
    errors: list[str] = []
    limit = asyncio.Semaphore(config["connect_concurrency"])
    opener = OPENERS[config["protocol"]]

    async def open_one(spec: ClientSpec, http: Negotiator) -> None:
        async with limit:
            try:
                ids[spec.index], clients[spec.index] = await opener(
                    spec,
                    http,
                    stats,
                    config["client_impl"],
                    config["compression"],
                    config["client_protocol"],
                )
            except Exception as exc:
                errors.append(f"client {spec.index}: {exc!r}")

    ping = CLIENT_PROTOCOLS[config["client_protocol"]].ping

    async def pinger() -> None:  # SignalR: the client keeps its connection alive
        while True:
            await asyncio.sleep(CLIENT_PING_INTERVAL)
            for client in list(clients.values()):
                with contextlib.suppress(Exception):
                    await client.send(ping)

    # Pings from the first connection on: opening thousands takes longer than the 30 s after
    # which the gateway closes a silent client (W4 once measured 10,000 connections of which
    # 2,000 had been closed so).
    ping_task = loop.create_task(pinger()) if config["protocol"] == "signalr" else None
    http = Negotiator()
    try:
        await asyncio.gather(*(open_one(s, http) for s in specs))
    finally:
        http.close()
    first = next(iter(clients.values()), None)
    conn.send(
        {
            "ready": ids,
            "errors": errors,
            "retries": stats.negotiate_retries,
            "extensions": first.extensions if first else "",
        }
    )

    cpu_start, wall_start = time.process_time(), time.monotonic()
    while True:
        command, arg = await loop.run_in_executor(None, conn.recv)
        if command == "phase":
            stats.new_phase(arg)
            cpu_start, wall_start = time.process_time(), time.monotonic()
        elif command == "count":
            conn.send((stats.received + stats.duplicates, stats.frames))
        elif command == "collect":
            conn.send(
                {
                    "received": stats.received,
                    "duplicates": stats.duplicates,
                    "misdelivered": stats.misdelivered,
                    "other_records": stats.other_records,
                    "closed_by_server": stats.closed_by_server,
                    "close_reasons": stats.close_reasons,
                    "late": stats.late,
                    "latencies": stats.latencies.tobytes(),
                    "last_receive": stats.last_receive,
                    "first_latency": stats.first_latency,
                    "cpu_seconds": time.process_time() - cpu_start,
                    "wall_seconds": time.monotonic() - wall_start,
                    "connections": len(clients),
                    "client_protocol": config["client_protocol"],
                }
            )
        elif command == "stop":
            break
    stats.stopping = True
    if ping_task is not None:
        ping_task.cancel()
    goodbye = CLIENT_PROTOCOLS[config["client_protocol"]].goodbye
    if goodbye is not None and config["protocol"] == "signalr":
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.send(goodbye)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True), 30
        )
    conn.send("closed")


class ClientPool:
    """The load-client processes and the pipe to each."""

    def __init__(self, procs: int) -> None:
        self.n = procs
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[multiprocessing.connection.Connection] = []

    async def start(
        self,
        specs: list[ClientSpec],
        protocol: str,
        impl: str,
        compression: bool,
        within: float,
        concurrency: int = 32,
        client_protocol: str = "json",
    ) -> list[dict[str, Any]]:
        """Start the processes and connect their clients; ``client_protocol`` may be a mix,
        ``json+messagepack``: process ``p`` then speaks the ``p % 2``-th."""
        context = multiprocessing.get_context("spawn")
        share = -(-len(specs) // self.n)
        for p in range(self.n):
            # Contiguous shares: each process holds clients of every gateway (they alternate).
            mine = [s.__dict__ for s in specs[p * share : (p + 1) * share]]
            mix = client_protocol.split("+")  # a mix: the processes take them in turn
            parent, child = context.Pipe()
            config = {
                "specs": mine,
                "protocol": protocol,
                "client_impl": impl,
                "compression": compression,
                "connect_concurrency": concurrency,
                "client_protocol": mix[p % len(mix)],
            }
            process = context.Process(
                target=client_process_main, args=(child, config), name=f"client{p}", daemon=True
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)
        return list(await asyncio.gather(*(pipe_recv(p, within) for p in self.pipes)))

    def broadcast(self, command: str, arg: Any = None) -> None:
        for pipe in self.pipes:
            pipe.send((command, arg))

    async def count(self) -> tuple[int, int]:
        """(messages of the current phase received, every message ever received)."""
        self.broadcast("count")
        answers = await asyncio.gather(*(pipe_recv(p, 10) for p in self.pipes))
        return sum(a[0] for a in answers), sum(a[1] for a in answers)

    async def collect(self) -> list[dict[str, Any]]:
        self.broadcast("collect")
        return list(await asyncio.gather(*(pipe_recv(p, 60) for p in self.pipes)))

    async def quiesce(self, quiet: float = 0.3, within: float = 20.0) -> float:
        """Wait until no message arrived for ``quiet`` seconds; returns the time it took."""
        start = time.monotonic()
        _, before = await self.count()
        while time.monotonic() - start < within:
            await asyncio.sleep(quiet)
            _, now = await self.count()
            if now == before:
                break
            before = now
        return time.monotonic() - start

    async def close(self) -> None:
        """The normal way out: each client closes its sockets, says so, and exits."""
        self.broadcast("stop")
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                await pipe_recv(pipe, 45)  # "closed"
        for process in self.processes:
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5)
        self.terminate()

    def terminate(self) -> None:
        """Idempotent; also the Ctrl-C path: whatever still runs is terminated."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
