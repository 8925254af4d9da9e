"""The hot path's Redis connection: one pipelined socket, bytes in and out.

Everything that every message pays for (publish appends, the worker's read-route-acknowledge
loop, the gateway's inbox reads) goes through :class:`Pipe`; everything else uses redis-py
(:meth:`hubbub.redis.endpoint.RedisEndpoint.redis`). Both are configured by the same
:class:`~hubbub.redis.endpoint.RedisEndpoint`.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.resp import Arg, Command, Replies, first_error, pack, pack_many


class Pipe:
    """One Redis connection for the hot path, about three times cheaper per call than redis-py.

    Commands are written as they come (flushed once per event-loop turn) and replies matched
    in order, so concurrent callers share writes and round trips. The publish stream, the
    worker's read-route-acknowledge loop and the gateway's inbox reads use it. It speaks RESP2
    over TCP, TLS (CA, client certificate, verification as the endpoint says) or a Unix socket,
    with AUTH and SELECT from the URL; it does not retry (see :mod:`hubbub.redis.endpoint`),
    speak RESP3, follow Sentinel or Cluster redirections. A lost connection fails the calls in
    flight with :class:`redis.exceptions.ConnectionError` and is reopened by the next call; a
    reply later than ``timeout`` (plus a blocking command's own ``block``) aborts the
    connection with :class:`redis.exceptions.TimeoutError`, so a frozen server cannot hang a
    caller.
    """

    def __init__(self, endpoint: RedisEndpoint) -> None:
        self.endpoint = endpoint
        self.timeout = endpoint.timeout
        self._address = endpoint.address()
        self._ssl = endpoint.ssl_context()
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, name: str | None = None, *, timeout: float = 5.0) -> Pipe:
        """A pipe to ``url`` with the endpoint's defaults otherwise."""
        return cls(RedisEndpoint(url, name, timeout=timeout))

    async def execute(self, *command: Arg, block: float = 0.0) -> Any:
        """One command's reply; an error reply is raised as ``ResponseError``."""
        connection = await self._live()
        reply = await connection.send(pack(command), 0, block)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one write; every reply, or the first error reply raised."""
        return await self.execute_packed(pack_many(commands), len(commands))

    async def execute_packed(self, commands: bytes, count: int) -> list[Any]:
        """Like :meth:`execute_many`, for ``count`` commands already packed (``resp.Prefix``)."""
        if not count:
            return []
        connection = await self._live()
        replies: list[Any] = await connection.send(commands, count, 0.0)
        error = first_error(replies)
        if error is not None:
            raise error
        return replies

    async def aclose(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _live(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.alive:
            return connection
        return await self._connect()

    async def _connect(self) -> _Connection:
        async with self._lock:
            connection = self._connection
            if connection is not None and connection.alive:
                return connection
            if self._closed:
                raise RedisConnectionError("pipe is closed")
            connection = await self._open()
            hello = self._hello()
            try:
                error = first_error(await connection.send(pack_many(hello), len(hello), 0.0))
                if error is not None:
                    raise error
            except BaseException:
                connection.close()
                raise
            self._connection = connection
            return connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self._address
        timeout = self.timeout

        def factory() -> _Connection:
            return _Connection(timeout)

        try:
            async with asyncio.timeout(self.endpoint.connect_timeout):
                if address.path is not None:
                    _, connection = await loop.create_unix_connection(factory, address.path)
                else:
                    _, connection = await loop.create_connection(
                        factory, address.host, address.port, ssl=self._ssl
                    )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"Error connecting to Redis at {address}: {exc!r}") from exc
        return connection

    def _hello(self) -> list[Command]:
        address = self._address
        hello: list[Command] = []
        if address.password:
            if address.username:
                hello.append(("AUTH", address.username, address.password))
            else:
                hello.append(("AUTH", address.password))
        if address.db:
            hello.append(("SELECT", address.db))
        if self.endpoint.name:
            hello.append(("CLIENT", "SETNAME", self.endpoint.name))
        return hello or [("PING",)]


class _Waiter:
    __slots__ = ("deadline", "expected", "future", "replies")

    def __init__(self, future: asyncio.Future[Any], expected: int, deadline: float) -> None:
        self.future = future
        self.expected = expected  # 0: one command, its reply itself; n: a list of n replies
        self.replies: list[Any] = []
        self.deadline = deadline


class _Connection(asyncio.Protocol):
    """The socket half of :class:`Pipe`: write buffer, reply parser, waiters in order."""

    WATCH_INTERVAL = 0.5

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self.replies = Replies()
        self.waiters: deque[_Waiter] = deque()
        self.out: list[bytes] = []
        self.flushing = False
        self.watchdog: asyncio.TimerHandle | None = None
        self.failure: RedisError | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.alive = True
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        failure = self.failure or RedisConnectionError(
            f"Redis connection lost: {exc!r}" if exc else "Redis closed the connection"
        )
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(failure)
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    def data_received(self, data: bytes) -> None:
        replies = self.replies
        try:
            replies.feed(data)
            waiters = self.waiters
            for reply in replies:
                waiter = waiters[0]
                if waiter.expected == 0:
                    waiters.popleft()
                    if not waiter.future.done():
                        waiter.future.set_result(reply)
                    continue
                waiter.replies.append(reply)
                if len(waiter.replies) == waiter.expected:
                    waiters.popleft()
                    if not waiter.future.done():
                        waiter.future.set_result(waiter.replies)
        except (InvalidResponse, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._abort(RedisConnectionError(f"Redis protocol error: {exc!r}"))

    def send(self, commands: bytes, expected: int, block: float) -> asyncio.Future[Any]:
        """``expected``: 0 for one command answered by its reply itself, else the number of
        commands in ``commands``, answered by the list of their replies."""
        if not self.alive:
            raise self.failure or RedisConnectionError("Redis connection lost")
        future: asyncio.Future[Any] = self.loop.create_future()
        idle = not self.waiters
        self.waiters.append(_Waiter(future, expected, self.loop.time() + self.timeout + block))
        if idle and self.transport is not None:
            # Nothing in flight, nothing buffered: write now (a lone caller, like the worker's
            # loop, pays no extra event-loop turn).
            self.transport.write(commands)
        else:
            # Replies are pending anyway: gather what other callers send in this loop turn
            # into one write.
            self.out.append(commands)
            if not self.flushing:
                self.flushing = True
                self.loop.call_soon(self._flush)
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.WATCH_INTERVAL, self._watch)
        return future

    def _flush(self) -> None:
        self.flushing = False
        if self.alive and self.transport is not None and self.out:
            out, self.out = self.out, []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _watch(self) -> None:
        self.watchdog = None
        if not self.waiters:
            return
        if self.waiters[0].deadline < self.loop.time():
            self._abort(RedisTimeoutError(f"no reply from Redis within {self.timeout:g}s"))
            return
        self.watchdog = self.loop.call_later(self.WATCH_INTERVAL, self._watch)

    def _abort(self, failure: RedisError) -> None:
        self.failure = failure
        self.alive = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()
