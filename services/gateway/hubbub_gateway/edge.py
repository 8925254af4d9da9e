"""The HTTP edge before authentication: bounds on what an unauthenticated peer may cost.

uvicorn's httptools protocol puts no limit on a request head (llhttp has none, and uvicorn and
httptools accumulate the URL and header values), on the time a head may take, or on sockets that
never send a byte. :class:`EdgeProtocol` wraps that protocol, unchanged, and adds:

- **head size**: at most ``HUBBUB_MAX_HEAD_BYTES`` of an incomplete head reach uvicorn; beyond
  it the peer gets ``431 Error.RequestHeaderTooLarge`` (a short JSON body) and the connection
  is closed. Counted per read, so a head that completes within one read is not refused; what
  uvicorn may buffer is the cap plus one read.
- **head time**: the first head must be complete within ``HUBBUB_HEAD_TIMEOUT`` seconds of the
  connection opening, and each later one within that time of its first byte; else the
  connection is closed. A socket that sends nothing is closed then too. Between requests,
  uvicorn's ``timeout_keep_alive`` (5 s) closes idle keep-alive connections.
- **sockets without a head**: at most ``HUBBUB_MAX_PENDING_SOCKETS`` connections may be open
  that have not completed their first head; each one beyond closes the oldest of them, so idle
  sockets cannot take every file descriptor (and health probes, which send their head at once,
  keep getting answers).

How: a second, cheap ``httptools.HttpRequestParser`` (the *shadow*) sees each read first. It
has only the message-begin, headers-complete and message-complete callbacks, so it keeps no URL
or header bytes and calls Python three times per request. A WebSocket upgrade ends the
tracking: uvicorn then swaps the transport's protocol to
:class:`.transport.HubbubWebSocketProtocol` (which has its own handshake timeout) and this
object receives nothing more. A head the shadow cannot parse is left to uvicorn, which answers
400 and closes.

uvicorn's protocol writes to a :class:`CoalescingTransport`, so a response's head and body
leave in one system call; a WebSocket takes the real transport from it.

What is relied on in uvicorn beyond ``transport.py``'s needs: ``Config(http=<class>)`` called with
``config``, ``server_state``, ``app_state`` and ``_loop`` keyword arguments;
``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`` with those arguments and the
``asyncio.Protocol`` methods; the upgrade hand-off by ``transport.set_protocol``; and its
``cycle.response_complete`` (to answer 431 only when no response is in flight; else it closes).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hubbub.logs import REFUSALS
from hubbub.settings import Settings

log = logging.getLogger("hubbub.gateway.edge")
refusals = logging.getLogger(REFUSALS)

FD_RESERVE = 64
"""File descriptors kept for everything but clients: Redis connections, logs, health probes."""


def raise_fd_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (many sockets are the job);
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %r", soft, hard, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass
class EdgeLimits:
    """The bounds of one gateway process, fitted under its file-descriptor limit."""

    max_head_bytes: int
    head_timeout: float
    max_pending: int
    max_connections: int
    # Connections that have not completed their first head, oldest first.
    pending: dict[EdgeProtocol, None] = field(default_factory=dict)

    @classmethod
    def fit(cls, settings: Settings, fd_limit: int) -> EdgeLimits:
        """Settings, lowered if needed so that pending sockets, WebSocket connections and
        :data:`FD_RESERVE` fit in ``fd_limit`` (pending sockets get at most a quarter)."""
        budget = max(2, fd_limit - FD_RESERVE)
        pending = max(1, min(settings.max_pending_sockets, budget // 4))
        connections = max(1, min(settings.max_connections, budget - pending))
        limits = cls(settings.max_head_bytes, settings.head_timeout, pending, connections)
        if (pending, connections) != (settings.max_pending_sockets, settings.max_connections):
            log.warning(
                "open-file limit %d: at most %d WebSocket connections and %d sockets awaiting "
                "their first request (settings: %d, %d)",
                fd_limit,
                connections,
                pending,
                settings.max_connections,
                settings.max_pending_sockets,
            )
        return limits

    def protocol(self) -> type[EdgeProtocol]:
        """The class to give ``uvicorn.Config(http=...)``, bound to these limits."""
        return type("BoundEdgeProtocol", (EdgeProtocol,), {"__slots__": (), "limits": self})


def _refusal(status: bytes, code: str, message: str) -> bytes:
    body = orjson.dumps({"code": code, "message": message})
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: application/json\r\nx-ms-error-code: ",
            code.encode(),
            b"\r\nconnection: close\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\n\r\n",
            body,
        )
    )


class CoalescingTransport:
    """The transport uvicorn's HTTP protocol is given: what it writes within one turn of the
    event loop leaves in one system call, at the end of that turn.

    uvicorn writes a response's head when the app starts it and its body when the app sends
    it, so every answer (a REST send's ``202``, negotiate's ``200``) cost two ``send`` calls,
    and on loopback each one costs the sender the receiver's TCP work too: they were 57 % of
    a negotiate's gateway CPU (py-spy, wrk). A WebSocket gets the real transport
    (:attr:`real`, taken by :class:`.transport.HubbubWebSocketProtocol`): its writes are
    already one per socket per batch, and delivery latency must not wait for a loop turn.
    Everything that ends or hands over the connection (``close``, ``write_eof``,
    ``set_protocol``) sends what is pending first; ``abort`` drops it, as a transport does.
    """

    __slots__ = ("loop", "pending", "real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.real = real
        self.loop = loop
        self.pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.pending is None:
            self.pending = [data]
            self.loop.call_soon(self.flush)
        else:
            self.pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending and not self.real.is_closing():
            self.real.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self.real.close()

    def write_eof(self) -> None:
        self.flush()
        self.real.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self.real.set_protocol(protocol)

    def abort(self) -> None:
        self.pending = None
        self.real.abort()

    def get_write_buffer_size(self) -> int:
        pending = sum(len(p) for p in self.pending) if self.pending else 0
        return self.real.get_write_buffer_size() + pending

    def is_closing(self) -> bool:
        return self.real.is_closing()

    def can_write_eof(self) -> bool:
        return self.real.can_write_eof()

    def pause_reading(self) -> None:
        self.real.pause_reading()

    def resume_reading(self) -> None:
        self.real.resume_reading()

    def is_reading(self) -> bool:
        return self.real.is_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.real.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.real.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.real.get_write_buffer_limits()


class EdgeProtocol(asyncio.Protocol):
    """uvicorn's ``HttpToolsProtocol`` with the bounds above; see the module docstring."""

    __slots__ = (
        "done_in_read",
        "first",
        "head_bytes",
        "head_started",
        "in_head",
        "inner",
        "loop",
        "shadow",
        "timer",
        "transport",
    )

    limits: ClassVar[EdgeLimits]  # set by EdgeLimits.protocol()
    transport: asyncio.Transport

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inner = HttpToolsProtocol(
            config=config, server_state=server_state, app_state=app_state, _loop=_loop
        )
        self.loop = _loop or asyncio.get_running_loop()  # uvicorn builds it in the loop
        shadow = httptools.HttpRequestParser(self)
        try:  # the same leniency uvicorn gives its own parser, so both agree
            shadow.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # pragma: no cover - httptools < 0.6.3
            pass
        self.shadow: httptools.HttpRequestParser | None = shadow
        # One timer per connection, re-armed only when it fires during a head (a timer per
        # request would cost every keep-alive request a call_later and a cancel).
        self.timer: asyncio.TimerHandle | None = None
        self.head_started = 0.0  # loop time: the connection opened, or the head's first byte
        self.in_head = False  # a head has begun and is not complete
        self.head_bytes = 0  # bytes read since it began (see data_received)
        self.done_in_read = False  # a request ended within the read being parsed
        self.first = True  # the first head is not complete yet

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.inner.connection_made(CoalescingTransport(self.transport, self.loop))  # type: ignore[arg-type]
        self.head_started = self.loop.time()
        self.timer = self.loop.call_later(self.limits.head_timeout, self._head_timeout)
        pending = self.limits.pending
        pending[self] = None
        if len(pending) > self.limits.max_pending:
            oldest = next(iter(pending))
            oldest._refuse(
                f"closing the oldest of more than {self.limits.max_pending} sockets "
                "without a request (HUBBUB_MAX_PENDING_SOCKETS)"
            )

    def data_received(self, data: bytes) -> None:
        shadow = self.shadow
        if shadow is None:  # closing (a WebSocket's transport no longer calls this object)
            return
        self.done_in_read = False
        upgraded = False
        try:
            shadow.feed_data(data)
        except httptools.HttpParserUpgrade:
            upgraded = True
        except httptools.HttpParserError:
            self._untrack()  # uvicorn answers 400 and closes
            self.inner.data_received(data)
            if not self.transport.is_closing():
                self.transport.close()
            return
        # A head still incomplete after this read owns the whole read, unless a request ended
        # earlier in it (pipelining): then the head began inside it and is not counted, so a
        # body is never taken for a head; what escapes the count is less than one read.
        if self.in_head and not self.done_in_read:
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_head_bytes:
                self._too_large()
                return
        self.inner.data_received(data)
        if upgraded and self.transport.get_protocol() is not self:
            self._untrack()  # a WebSocket now: the transport calls its protocol directly

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None  # uvicorn's answer: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._untrack()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # ------------------------------------------------------------ the shadow parser's callbacks

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_bytes = 0
        if not self.first:  # the first head's time runs from connection_made
            self.head_started = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_later(self.limits.head_timeout, self._head_timeout)

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.first:
            self.first = False
            self.limits.pending.pop(self, None)

    def on_message_complete(self) -> None:
        self.done_in_read = True

    # ------------------------------------------------------------ refusals

    def _head_timeout(self) -> None:
        self.timer = None
        if self.shadow is None or not (self.in_head or self.first):
            return  # between requests: uvicorn's keep-alive timeout; re-armed at the next one
        left = self.head_started + self.limits.head_timeout - self.loop.time()
        if left > 0:  # this head began after the timer was armed
            self.timer = self.loop.call_later(left, self._head_timeout)
            return
        what = "part of a request head" if self.in_head else "nothing"
        self._refuse(f"sent {what} within {self.limits.head_timeout:g} s (HUBBUB_HEAD_TIMEOUT)")

    def _too_large(self) -> None:
        limit = self.limits.max_head_bytes
        cycle = getattr(self.inner, "cycle", None)
        if cycle is None or cycle.response_complete:  # no response of uvicorn's in flight
            self.transport.write(
                _refusal(
                    b"431 Request Header Fields Too Large",
                    "Error.RequestHeaderTooLarge",
                    f"the request head exceeds {limit} bytes",
                )
            )
        self._refuse(f"request head over {limit} bytes (HUBBUB_MAX_HEAD_BYTES)")

    def _refuse(self, why: str) -> None:
        """Log the refusal (one WARNING line on the rate-limited refusal logger) and close the
        connection."""
        self._untrack()
        transport = self.transport
        if transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
        refusals.warning("%s - connection closed: %s", client, why)
        transport.close()

    def _untrack(self) -> None:
        """Stop bounding this connection: it is closing, or it is a WebSocket now."""
        self.shadow = None  # also breaks the parser <-> protocol cycle
        self.in_head = False
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        if self.first:
            self.first = False
            self.limits.pending.pop(self, None)
