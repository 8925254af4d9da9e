"""The publish stream: where an accepted REST request waits for a fan-out worker.

The stream is split into partitions by target (hub, kind, name): every message to one group,
user or connection lands in the same partition, and a partition is routed by one worker at a
time, in order. The message id is ``<partition>:<entry id>``, unique across partitions.
"""

from __future__ import annotations

import zlib

from redis.asyncio import Redis

from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import Prefix
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.keys import KeySchema


def partition_of(message: MessageEntry, partitions: int) -> int:
    return target_partition(message.hub, message.kind, message.target, partitions)


def target_partition(hub: str, kind: Kind, target: str, partitions: int) -> int:
    key = b"\0".join((hub.encode(), kind.value, target.encode()))
    return zlib.crc32(key) % partitions


def message_id(partition: int, entry_id: bytes | str) -> str:
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return f"{partition}:{entry}"


class PublishStream:
    """Appends accepted messages to their partition; returns the message id.

    Appends from concurrent requests share the :class:`~hubbub.redis.pipe.Pipe`'s writes and round
    trips; a batch is one write of all its ``XADD`` commands.
    """

    def __init__(self, pipe: Pipe, schema: KeySchema, partitions: int, maxlen: int) -> None:
        self.pipe = pipe
        self.partitions = partitions
        self.keys = [schema.publish_partition(n) for n in range(partitions)]
        self.maxlen = maxlen
        self._xadd = [Prefix("XADD", key, "MAXLEN", "~", maxlen, "*") for key in self.keys]

    def stream_for(self, hub: str, kind: Kind, target: str) -> str:
        return self.keys[target_partition(hub, kind, target, self.partitions)]

    async def append(self, message: MessageEntry) -> str:
        n = partition_of(message, self.partitions)
        xadd = self._xadd[n].pack(message.fields())
        (entry_id,) = await self.pipe.execute_packed(xadd, 1)
        return message_id(n, entry_id)

    async def append_many(self, messages: list[MessageEntry]) -> list[str]:
        """One round trip for a batch; ids come back in order."""
        parts = [partition_of(m, self.partitions) for m in messages]
        xadd = self._xadd
        commands = b"".join(xadd[n].pack(m.fields()) for n, m in zip(parts, messages, strict=True))
        ids = await self.pipe.execute_packed(commands, len(messages))
        return [message_id(n, i) for n, i in zip(parts, ids, strict=True)]


async def last_entry_id(redis: Redis, key: str) -> bytes:
    """Id of the newest entry, or ``0-0``: where a reader that wants only new entries starts."""
    entries = await redis.xrevrange(key, count=1)
    if not entries:
        return b"0-0"
    entry_id = entries[0][0]
    return entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()


def id_after(entry_id: bytes) -> str:
    """The smallest stream id greater than ``entry_id``: ``XTRIM MINID`` with it removes
    ``entry_id`` too, so a fully consumed stream ends up empty (and its memory freed)."""
    ms, _, seq = entry_id.decode().partition("-")
    return f"{ms}-{int(seq or 0) + 1}"
