"""The publish stream: where an accepted REST request waits for a fan-out worker.

The stream is split into partitions by target (hub, kind, name): every message to one group,
user or connection lands in the same partition, and a partition is routed by one worker at a
time, in order. The message id is ``<partition>:<entry id>``, unique across partitions.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import Prefix, first_error, pack
from hubbub.settings import Settings
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.keys import KeySchema


class NotReplicated(RedisError):
    """Appended, but fewer replicas than ``HUBBUB_REDIS_WAIT_REPLICAS`` confirmed it in time:
    a failover now could lose it. It may still be delivered; a retry with the same
    ``Idempotency-Key`` is safe."""


def partition_of(message: MessageEntry, partitions: int) -> int:
    return target_partition(message.hub, message.kind, message.target, partitions)


def target_partition(hub: str, kind: Kind, target: str, partitions: int) -> int:
    key = b"\0".join((hub.encode(), kind.value, target.encode()))
    return zlib.crc32(key) % partitions


def message_id(partition: int, entry_id: bytes | str) -> str:
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return f"{partition}:{entry}"


# KEYS: the idempotency key, the partition stream. ARGV: window ms, the message id's prefix
# (``message_id(n, "")``), maxlen, then the entry's fields. Returns the message id a send
# with this key was accepted as, appending it (and remembering it for the window) only the
# first time: a retry appends nothing. Atomic, so concurrent sends with one key make one.
_APPEND_ONCE = """
local seen = redis.call('GET', KEYS[1])
if seen then return seen end
local entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
local id = ARGV[2] .. entry
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return id
"""


class GroupWait:
    """Appends answered only once ``replicas`` replicas have them (``WAIT``), by group commit:
    a caller with nothing in flight sends its appends and a ``WAIT`` at once; callers that come
    while that is in flight are gathered and sent together when it ends, with one ``WAIT`` per
    master (which confirms all of them), instead of each ``WAIT`` holding the connection in
    turn. An append that failed fails alone; too few replicas fail the whole group with
    :class:`NotReplicated`."""

    def __init__(self, pipe: Pipe, replicas: int, timeout: float) -> None:
        self.pipe = pipe
        self.replicas = replicas
        self.timeout = timeout
        self._wait = pack(("WAIT", replicas, max(1, int(timeout * 1000))))
        self._queue: list[tuple[list[tuple[str, bytes]], asyncio.Future[list[Any]]]] = []
        self._busy = False
        self._flushing: set[asyncio.Task[None]] = set()

    async def submit(self, commands: list[tuple[str, bytes]]) -> list[Any]:
        """The replies of ``commands`` (packed, with their keys), once replicated."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self._busy:
            self._queue.append((commands, future))
            return await future
        self._busy = True
        try:
            await self._run([(commands, future)])
        finally:
            self._next()
        return future.result()

    def _next(self) -> None:
        """Hand the callers gathered meanwhile to a task, which sends them (and whoever comes
        while it does) group by group; idle once nobody waits."""
        if not self._queue:
            self._busy = False
            return
        task = asyncio.ensure_future(self._flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._run(batch)
        finally:
            self._busy = False
            for _, future in self._queue:  # cancelled mid-way: nobody is left waiting
                if not future.done():
                    future.set_exception(RedisError("publishing stopped"))
            self._queue = []

    async def _run(
        self, batch: list[tuple[list[tuple[str, bytes]], asyncio.Future[list[Any]]]]
    ) -> None:
        commands = [command for part, _ in batch for command in part]
        keys = [key for key, _ in commands]
        # One server: one WAIT after everything. A cluster: one per master, placed by a key
        # that went there (a second WAIT on a master returns at once).
        masters = dict.fromkeys(keys) if self.pipe.sharded else keys[-1:]
        waits = [(key, self._wait) for key in masters]
        try:
            replies = await self.pipe.execute_keyed(
                [*commands, *waits], block=self.timeout, raise_errors=False
            )
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        counted = [n for n in replies[len(commands) :] if isinstance(n, int)]
        replicated = len(counted) == len(waits) and min(counted) >= self.replicas
        at = 0
        for part, future in batch:
            answer, at = replies[at : at + len(part)], at + len(part)
            if future.done():
                continue
            error = first_error(answer)
            if error is not None:
                future.set_exception(error)
            elif not replicated:
                future.set_exception(
                    NotReplicated(
                        f"appended, but not confirmed by {self.replicas} replica(s) within "
                        f"{self.timeout:g}s; a retry with the same Idempotency-Key is safe"
                    )
                )
            else:
                future.set_result(answer)


class PublishStream:
    """Appends accepted messages to their partition; returns the message id.

    Appends from concurrent requests share the :class:`~hubbub.redis.pipe.Pipe`'s writes and round
    trips; a batch is one write of all its ``XADD`` commands. A message with an idempotency key
    is appended by a script that remembers its id for ``window_ms``: sent again with the same
    key (a caller whose ``202`` was lost retries), it answers the first id and appends nothing.
    ``EVAL`` with the script's text, not ``EVALSHA``: nothing to reload after Redis restarts,
    so a batch never half-fails on ``NOSCRIPT``.

    With ``wait_replicas``, appends are answered once that many replicas have them
    (:class:`GroupWait`); fewer confirmations than asked raise :class:`NotReplicated`.
    """

    def __init__(
        self,
        pipe: Pipe,
        schema: KeySchema,
        partitions: int,
        maxlen: int,
        window_ms: int = 300_000,
        *,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self.pipe = pipe
        self.schema = schema
        self.partitions = partitions
        self.keys = [schema.publish_partition(n) for n in range(partitions)]
        self.maxlen = maxlen
        self.window_ms = window_ms
        self._replicas = GroupWait(pipe, wait_replicas, wait_timeout) if wait_replicas else None
        self._xadd = [Prefix("XADD", key, "MAXLEN", "~", maxlen, "*") for key in self.keys]

    @classmethod
    def from_settings(cls, pipe: Pipe, settings: Settings) -> PublishStream:
        return cls(
            pipe,
            KeySchema(settings.key_prefix),
            settings.publish_partitions,
            settings.publish_stream_maxlen,
            int(settings.idempotency_window * 1000),
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout=settings.redis_wait_timeout,
        )

    def _append_once(self, n: int, message: MessageEntry, key: str) -> bytes:
        # In the partition's slot (Redis Cluster runs a script on one slot only).
        idem = self.schema.idempotency(self.keys[n], message.hub, key)
        return Prefix("EVAL", _APPEND_ONCE, 2, idem, self.keys[n]).pack(
            [self.window_ms, message_id(n, ""), self.maxlen, *message.fields()]
        )

    def stream_for(self, hub: str, kind: Kind, target: str) -> str:
        return self.keys[target_partition(hub, kind, target, self.partitions)]

    async def append(self, message: MessageEntry, idempotency_key: str | None = None) -> str:
        n = partition_of(message, self.partitions)
        key = self.keys[n]
        if idempotency_key is not None:
            command = self._append_once(n, message, idempotency_key)
        else:
            command = self._xadd[n].pack(message.fields())
        if self._replicas is not None:
            (reply,) = await self._replicas.submit([(key, command)])
        else:
            (reply,) = await self.pipe.execute_packed(command, 1, key)
        return _text(reply) if idempotency_key is not None else message_id(n, reply)

    async def append_many(
        self, messages: list[MessageEntry], idempotency_keys: Sequence[str | None] = ()
    ) -> list[str]:
        """One round trip for a batch; ids come back in order. ``idempotency_keys``: one per
        message (``None``: none), or empty."""
        parts = [partition_of(m, self.partitions) for m in messages]
        keys = idempotency_keys or [None] * len(messages)
        xadd = self._xadd
        commands = [
            (
                self.keys[n],
                xadd[n].pack(m.fields()) if key is None else self._append_once(n, m, key),
            )
            for n, m, key in zip(parts, messages, keys, strict=True)
        ]
        if self._replicas is not None:
            ids = await self._replicas.submit(commands)
        else:
            ids = await self.pipe.execute_keyed(commands)
        return [
            message_id(n, i) if key is None else _text(i)
            for n, i, key in zip(parts, ids, keys, strict=True)
        ]


async def last_entry_id(redis: Redis, key: str) -> bytes:
    """Id of the newest entry, or ``0-0``: where a reader that wants only new entries starts."""
    entries = await redis.xrevrange(key, count=1)
    if not entries:
        return b"0-0"
    entry_id = entries[0][0]
    return entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_after(entry_id: bytes) -> str:
    """The smallest stream id greater than ``entry_id``: ``XTRIM MINID`` with it removes
    ``entry_id`` too, so a fully consumed stream ends up empty (and its memory freed)."""
    ms, _, seq = entry_id.decode().partition("-")
    return f"{ms}-{int(seq or 0) + 1}"
