"""The hot path's Redis connection: pipelined sockets, bytes in and out.

Everything that every message pays for (publish appends, the worker's read-route-acknowledge
loop, the gateway's inbox reads) goes through :class:`Pipe`; everything else uses redis-py
(:meth:`hubbub.redis.endpoint.RedisEndpoint.redis`). Both are configured by the same
:class:`~hubbub.redis.endpoint.RedisEndpoint`, so both follow the same mode: one server, the
primary the Sentinels name, or the masters of a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hubbub.redis.endpoint import Address, RedisEndpoint
from hubbub.redis.resp import Arg, Command, Replies, first_error, pack, pack_many
from hubbub.redis.slots import Node, SlotTable, command_key, key_slot, redirect_of, try_again

log = logging.getLogger("hubbub.redis")

MAX_REDIRECTS = 5
_ASKING = pack(("ASKING",))
# Error replies after which this connection is to the wrong server (a failover demoted it,
# or it is still loading): drop it, so the next call finds the primary again.
_WRONG_SERVER = ("READONLY", "UNBLOCKED", "LOADING", "MASTERDOWN")


class Pipe:
    """Redis connections for the hot path, about three times cheaper per call than redis-py.

    Commands are written as they come (flushed once per event-loop turn) and replies matched
    in order, so concurrent callers share writes and round trips. It speaks RESP2 over TCP,
    TLS (CA, client certificate, verification as the endpoint says) or a Unix socket, with
    AUTH and SELECT from the URL. It does not retry a command that may have run (see
    :mod:`hubbub.redis.endpoint`): a lost connection fails the calls in flight with
    :class:`redis.exceptions.ConnectionError` and is reopened by the next call; a reply later
    than ``timeout`` (plus a blocking command's own ``block``) aborts the connection with
    :class:`redis.exceptions.TimeoutError`, so a frozen server cannot hang a caller.

    Sentinel mode: each (re)connection asks the Sentinels for the primary and checks its
    ``ROLE``; a reply that says the server is no longer the primary (``READONLY``) drops the
    connection. Cluster mode: one connection per master; each command goes to its key's slot
    (:mod:`hubbub.redis.slots`), ``MOVED``/``ASK``/``TRYAGAIN`` are followed (the command did not
    run), and the slot table is read again after a redirection or a lost connection.
    """

    def __init__(self, endpoint: RedisEndpoint) -> None:
        self.endpoint = endpoint
        self.timeout = endpoint.timeout
        self.sharded = endpoint.sharded
        self._ssl = endpoint.ssl_context()
        self._closed = False
        self._links: dict[Node, _Link] = {}
        self._readers: dict[bytes, _Link] = {}  # cluster: a blocking read's own connection
        self._table: SlotTable | None = None
        self._table_lock = asyncio.Lock()
        resolve = self._sentinel_primary if endpoint.mode == "sentinel" else self._own_address
        self._main = _Link(self, resolve, check_role=endpoint.mode == "sentinel")

    @classmethod
    def from_url(cls, url: str, name: str | None = None, *, timeout: float = 5.0) -> Pipe:
        """A pipe to ``url`` with the endpoint's defaults otherwise."""
        return cls(RedisEndpoint(url, name, timeout=timeout))

    async def execute(self, *command: Arg, block: float = 0.0) -> Any:
        """One command's reply; an error reply is raised as ``ResponseError``."""
        if self.sharded:
            (reply,) = await self._routed([(command_key(command), pack(command))], block)
        else:
            reply = await self._main.send(pack(command), 0, block)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one write (per master); every reply, or the first error reply
        raised."""
        if self.sharded:
            return _raise_first(await self._routed([(command_key(c), pack(c)) for c in commands]))
        return await self.execute_packed(pack_many(commands), len(commands))

    async def execute_packed(self, commands: bytes, count: int, key: Arg = b"") -> list[Any]:
        """Like :meth:`execute_many`, for ``count`` commands already packed (``resp.Prefix``);
        in cluster mode they must be one command, on ``key``'s slot."""
        if not count:
            return []
        if self.sharded:
            if count != 1:
                raise ValueError("in cluster mode, pack one command per call (execute_keyed)")
            return _raise_first(await self._routed([(key, commands)]))
        return _raise_first(await self._main.send(commands, count, 0.0))

    async def execute_keyed(
        self,
        commands: Sequence[tuple[Arg, bytes]],
        *,
        block: float = 0.0,
        raise_errors: bool = True,
    ) -> list[Any]:
        """Packed commands, each with the key that places it: one write per master (a
        standalone server gets them all in one), replies in order, the first error raised
        (else returned among them). ``block``: how long a blocking command among them
        (``WAIT``) may take."""
        if not commands:
            return []
        if self.sharded:
            replies = await self._routed(commands, block)
        else:
            packed = b"".join(c for _, c in commands)
            replies = await self._main.send(packed, len(commands), block)
        return _raise_first(replies) if raise_errors else replies

    async def read_streams(
        self, head: Command, positions: Mapping[bytes, bytes | str], block_ms: int
    ) -> Any:
        """``<head> BLOCK <block_ms> STREAMS <keys> <ids>`` (``XREAD``/``XREADGROUP``): what is
        new in any of the streams, ``None`` when nothing came within ``block_ms``.

        In cluster mode every stream has its own slot, and a command may touch one slot only.
        So: one non-blocking read per stream, all at once (one write per master); if none had
        anything, one blocking read per stream, each on its own connection, and when the first
        answers the others are ended with ``CLIENT UNBLOCK`` (a read unblocked that way reads
        nothing). Every reply is kept, so nothing a consumer group handed out is dropped."""
        if not self.sharded:
            command = (*head, "BLOCK", block_ms, "STREAMS", *positions, *positions.values())
            return await self.execute(*command, block=block_ms / 1000)
        reads = [(key, pack((*head, "STREAMS", key, at))) for key, at in positions.items()]
        found = _merge_reads(await self._routed(reads))
        if found is not None:
            return found
        return await self._block_on_each(head, positions, block_ms)

    async def aclose(self) -> None:
        self._closed = True
        for link in (self._main, *self._links.values(), *self._readers.values()):
            link.close()

    # -- where the server is -------------------------------------------------------------

    async def _own_address(self) -> Address:
        return self.endpoint.address()

    async def _sentinel_primary(self) -> Address:
        """Ask each Sentinel in turn for the primary's address."""
        endpoint = self.endpoint
        failures: list[str] = []
        for host, port in endpoint.sentinels:
            try:
                async with asyncio.timeout(endpoint.connect_timeout):
                    reader, writer = await asyncio.open_connection(host, port)
                    try:
                        if endpoint.sentinel_password:
                            writer.write(pack(("AUTH", endpoint.sentinel_password)))
                            if isinstance(auth := await _read_one(reader), ResponseError):
                                raise InvalidResponse(f"AUTH: {auth}")
                        writer.write(
                            pack(("SENTINEL", "GET-MASTER-ADDR-BY-NAME", endpoint.sentinel_master))
                        )
                        reply = await _read_one(reader)
                    finally:
                        writer.close()
            except (OSError, TimeoutError, InvalidResponse) as exc:
                failures.append(f"{host}:{port}: {exc!r}")
                continue
            if isinstance(reply, list) and len(reply) == 2:
                return replace(
                    endpoint.address(), host=reply[0].decode(), port=int(reply[1]), path=None
                )
            failures.append(f"{host}:{port}: no primary named {endpoint.sentinel_master!r}")
        raise RedisConnectionError(
            f"no Sentinel named the primary {endpoint.sentinel_master!r}: " + "; ".join(failures)
        )

    # -- cluster -------------------------------------------------------------------------

    def _link(self, node: Node) -> _Link:
        link = self._links.get(node)
        if link is None:
            address = replace(self.endpoint.address(), host=node[0], port=node[1], path=None)

            async def resolve() -> Address:
                return address

            link = self._links[node] = _Link(self, resolve, client_id=True)
        return link

    async def _slot_table(self) -> SlotTable:
        table = self._table
        if table is not None:
            return table
        async with self._table_lock:
            if self._table is None:
                self._table = await self._read_table()
            return self._table

    async def _read_table(self) -> SlotTable:
        """``CLUSTER SLOTS`` from the first node that answers: the seeds, then every master
        known so far (a seed may be the node that died)."""
        known = [*self.endpoint.seeds(), *sorted(self._links)]
        failures: list[str] = []
        for node in dict.fromkeys(known):
            try:
                reply = await self._link(node).send(pack(("CLUSTER", "SLOTS")), 0, 0.0)
            except RedisError as exc:
                failures.append(f"{node[0]}:{node[1]}: {exc!r}")
                continue
            if isinstance(reply, ResponseError) or not reply:
                failures.append(f"{node[0]}:{node[1]}: {reply!r}")
                continue
            return SlotTable.parse(reply, node)
        raise RedisConnectionError("no Redis Cluster node answered: " + "; ".join(failures))

    def _forget_table(self) -> None:
        self._table = None

    async def _routed(
        self, commands: Sequence[tuple[Arg | None, bytes]], block: float = 0.0
    ) -> list[Any]:
        """Each packed command to the master of its key's slot; redirections followed."""
        slots = [key_slot(key) if key else 0 for key, _ in commands]
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        asking: dict[int, Node] = {}
        for attempt in range(MAX_REDIRECTS + 1):
            table = await self._slot_table()
            groups: dict[tuple[Node, bool], list[int]] = {}
            for i in todo:
                ask = asking.get(i)
                node = ask if ask is not None else table.node(slots[i])
                groups.setdefault((node, ask is not None), []).append(i)
            sent = await asyncio.gather(
                *(self._send_group(node, ask, idx, commands, results, block)
                  for (node, ask), idx in groups.items()),
                return_exceptions=True,
            )  # fmt: skip
            for failure in sent:
                if isinstance(failure, BaseException):
                    self._forget_table()
                    raise failure
            todo, asking, wait = [], {}, False
            for i in (i for idx in groups.values() for i in idx):
                reply = results[i]
                redirect = redirect_of(reply)
                if redirect is not None:
                    if redirect.ask:
                        asking[i] = redirect.node
                    else:
                        table.moved(redirect.slot, redirect.node)
                        self._forget_table()  # read it whole again on the next call
                    todo.append(i)
                elif try_again(reply):
                    todo.append(i)
                    wait = True
            if not todo or attempt == MAX_REDIRECTS:
                break
            if wait:
                await asyncio.sleep(0.02 * (attempt + 1))
        return results

    async def _send_group(
        self,
        node: Node,
        ask: bool,
        indexes: list[int],
        commands: Sequence[tuple[Arg | None, bytes]],
        results: list[Any],
        block: float,
    ) -> None:
        link = self._link(node)
        if ask:  # ASKING applies to the next command only
            packed = b"".join(_ASKING + commands[i][1] for i in indexes)
            replies = await link.send(packed, 2 * len(indexes), block)
            replies = replies[1::2]
        elif len(indexes) == 1:
            replies = [await link.send(commands[indexes[0]][1], 0, block)]
        else:
            packed = b"".join(commands[i][1] for i in indexes)
            replies = await link.send(packed, len(indexes), block)
        for i, reply in zip(indexes, replies, strict=True):
            results[i] = reply

    def _reader(self, key: bytes) -> _Link:
        """The connection a blocking read of ``key`` waits on, to the master of its slot (as
        the slot table says when it connects)."""
        link = self._readers.get(key)
        if link is None:
            slot = key_slot(key)

            async def resolve() -> Address:
                node = (await self._slot_table()).node(slot)
                return replace(self.endpoint.address(), host=node[0], port=node[1], path=None)

            link = self._readers[key] = _Link(self, resolve, client_id=True)
        return link

    async def _block_on_each(
        self, head: Command, positions: Mapping[bytes, bytes | str], block_ms: int
    ) -> Any:
        block = block_ms / 1000
        reads: dict[bytes, asyncio.Future[Any]] = {
            key: asyncio.ensure_future(
                self._reader(key).send(
                    pack((*head, "BLOCK", block_ms, "STREAMS", key, at)), 0, block
                )
            )
            for key, at in positions.items()
        }
        try:
            _, pending = await asyncio.wait(reads.values(), return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.gather(
                    *(self._unblock(key, read) for key, read in reads.items() if read in pending)
                )
        except BaseException:  # cancelled (shutting down): what was read stays pending
            for read in reads.values():
                read.cancel()
            raise
        answers = await asyncio.gather(*reads.values(), return_exceptions=True)
        for key, answer in zip(reads, answers, strict=True):
            if isinstance(answer, BaseException) or redirect_of(answer) is not None:
                self._readers.pop(key).close()  # reconnects to the slot's master, as it is now
                self._forget_table()
        return _merge_reads(answers)

    async def _unblock(self, key: bytes, read: asyncio.Future[Any]) -> None:
        """End a blocked read early. It may not have reached the server yet: try again while
        it is still pending, a few times; at worst it ends by its own timeout."""
        reader = self._readers[key]
        for _ in range(3):
            node = reader.node
            if reader.client_id is None or node is None or read.done():
                return
            try:
                await self._link(node).send(pack(("CLIENT", "UNBLOCK", reader.client_id)), 0, 0.0)
            except RedisError:
                return
            done, _ = await asyncio.wait({read}, timeout=0.05)
            if done:
                return


class PipeScript:
    """A Lua script run on a :class:`Pipe`: ``EVALSHA``, and ``EVAL`` of its text only when
    the server does not know it yet (``NOSCRIPT``: a new or restarted server, or another
    master). Concurrent calls share the pipe's writes, so connections opened together are
    registered in one round trip; the script's text travels once per server, not per call.
    Like every pipe call it is not retried after a lost connection: it may have run."""

    def __init__(self, pipe: Pipe, text: str) -> None:
        self.pipe = pipe
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.pipe.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.pipe.execute("EVAL", self.text, len(keys), *keys, *args)


class _Link:
    """One server's connection for a :class:`Pipe`, reopened by the next call after a loss."""

    def __init__(
        self,
        pipe: Pipe,
        resolve: Callable[[], Awaitable[Address]],
        *,
        check_role: bool = False,
        client_id: bool = False,
    ) -> None:
        self.pipe = pipe
        self.resolve = resolve
        self.check_role = check_role
        self.want_id = client_id
        self.client_id: int | None = None
        self.node: Node | None = None  # where it is connected
        # Only a Sentinel's primary or a cluster master can turn into a replica under us.
        self.watch = pipe.endpoint.mode != "standalone"
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()

    async def send(self, commands: bytes, expected: int, block: float) -> Any:
        connection = self._connection
        if connection is None or not connection.alive:
            connection = await self._connect()
        reply = await connection.send(commands, expected, block)
        if self.watch and any(map(_wrong_server, reply if expected else (reply,))):
            connection.abort_with(RedisConnectionError("the server is no longer the primary"))
        return reply

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connect(self) -> _Connection:
        async with self._lock:
            connection = self._connection
            if connection is not None and connection.alive:
                return connection
            if self.pipe._closed:
                raise RedisConnectionError("pipe is closed")
            address = await self.resolve()
            connection = await self._open(address)
            self.node = (address.host, address.port)
            hello = self._hello(address)
            try:
                replies = await connection.send(pack_many(hello), len(hello), 0.0)
                error = first_error(replies)
                if error is not None:
                    raise error
                if self.check_role and replies[-1][0] != b"master":
                    raise RedisConnectionError(f"{address} is not the primary (a failover?)")
                if self.want_id:
                    self.client_id = int(replies[-1])
            except BaseException:
                connection.close()
                raise
            self._connection = connection
            return connection

    async def _open(self, address: Address) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = self.pipe.timeout

        def factory() -> _Connection:
            return _Connection(timeout)

        try:
            async with asyncio.timeout(self.pipe.endpoint.connect_timeout):
                if address.path is not None:
                    _, connection = await loop.create_unix_connection(factory, address.path)
                else:
                    _, connection = await loop.create_connection(
                        factory, address.host, address.port, ssl=self.pipe._ssl
                    )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"Error connecting to Redis at {address}: {exc!r}") from exc
        return connection

    def _hello(self, address: Address) -> list[Command]:
        hello: list[Command] = []
        if address.password:
            if address.username:
                hello.append(("AUTH", address.username, address.password))
            else:
                hello.append(("AUTH", address.password))
        if address.db and not self.pipe.sharded:
            hello.append(("SELECT", address.db))
        if self.pipe.endpoint.name:
            hello.append(("CLIENT", "SETNAME", self.pipe.endpoint.name))
        if self.check_role:
            hello.append(("ROLE",))
        elif self.want_id:
            hello.append(("CLIENT", "ID"))
        return hello or [("PING",)]


def _merge_reads(answers: Sequence[object]) -> Any:
    """Stream reads of several slots as one ``XREAD`` reply: ``None`` if none read anything.
    A failed read fails the whole call, even when others brought entries: a consumer
    group's entries read and not handed out stay pending, and the caller's recovery after
    an error takes them again (an ``XREAD`` caller reads them again from its positions). A
    redirection is no failure: that stream was not read, and is read where it lives next."""
    merged: list[Any] = []
    for answer in answers:
        if isinstance(answer, BaseException):
            if redirect_of(answer) is None:
                raise answer
        elif answer:
            merged.extend(answer)  # type: ignore[arg-type]
    return merged or None


def _wrong_server(reply: object) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith(_WRONG_SERVER)


def _raise_first(replies: list[Any]) -> list[Any]:
    error = first_error(replies)
    if error is not None:
        raise error
    return replies


async def _read_one(reader: asyncio.StreamReader) -> object:
    """One reply from a plain stream (the Sentinel question)."""
    replies = Replies()
    while True:
        data = await reader.read(4096)
        if not data:
            raise InvalidResponse("connection closed before the reply")
        replies.feed(data)
        for reply in replies:
            return reply


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

    def abort_with(self, failure: RedisError) -> None:
        """Drop the connection (the calls in flight fail with ``failure``)."""
        self._abort(failure)

    def _abort(self, failure: RedisError) -> None:
        self.failure = failure
        self.alive = False
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()
