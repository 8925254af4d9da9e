"""The upstream stream: what clients did, appended by gateways for the services that handle it.

Partitioned by connection (every entry of one connection lands in one partition), and each
partition is handled by one consumer of a service at a time (:mod:`hubbub.redis.leases`), so a
connection's invocations are handled in the order it sent them.
"""

from __future__ import annotations

import zlib

from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import Prefix
from hubbub.wire.envelopes import UpstreamEntry
from hubbub.wire.keys import KeySchema


def upstream_partition(connection: str, partitions: int) -> int:
    return zlib.crc32(connection.encode()) % partitions


class UpstreamStream:
    """Appends :class:`~hubbub.wire.envelopes.UpstreamEntry` s, each to its connection's
    partition, capped at ``maxlen`` entries per partition (approximately)."""

    def __init__(self, pipe: Pipe, schema: KeySchema, partitions: int, maxlen: int) -> None:
        self.pipe = pipe
        self.partitions = partitions
        self.keys = [schema.upstream_partition(n) for n in range(partitions)]
        self._xadd = [Prefix("XADD", key, "MAXLEN", "~", maxlen, "*") for key in self.keys]

    async def append(self, entry: UpstreamEntry) -> None:
        n = upstream_partition(entry.connection, self.partitions)
        await self.pipe.execute_packed(self._xadd[n].pack(entry.fields()), 1, self.keys[n])
