"""Consume: read the owned partitions in the consumer group, route each batch, trim what was routed.

One ``XREADGROUP`` covers every partition this worker owns; each partition's batch is routed
(:mod:`.route`) in the order read. The last routed id of each partition is remembered so the
periodic trim can drop what nobody needs any more.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import Command, streams_reply
from hubbub.redis.stream import id_after
from hubbub.settings import Settings
from hubbub.wire.keys import KeySchema

from .route import Router


class Consumer:
    def __init__(self, settings: Settings, *, pipe: Pipe, router: Router, name: str) -> None:
        self.pipe = pipe
        self.router = router
        self.name = name
        self.group = settings.worker_group
        self.batch = settings.read_batch
        # A read wakes at least once per lease interval, so leases are renewed in time.
        self.block_ms = max(1, min(settings.read_block_ms, int(settings.lease_interval * 1000)))
        self.retention_ms = settings.broadcast_retention_ms
        schema = KeySchema(settings.key_prefix)
        self.feed = schema.broadcast_feed
        self.streams = [
            schema.publish_partition(n).encode() for n in range(settings.publish_partitions)
        ]
        self.partition_of = {stream: n for n, stream in enumerate(self.streams)}
        # Last entry routed (and acknowledged) per partition stream, for trimming.
        self.routed: dict[bytes, bytes] = {}

    async def consume(self, partitions: Iterable[int]) -> None:
        """Read what is new in ``partitions`` (waiting up to ``block_ms``) and route it."""
        response = await self.pipe.read_streams(
            ("XREADGROUP", "GROUP", self.group, self.name, "COUNT", self.batch),
            {self.streams[n]: b">" for n in partitions},
            self.block_ms,
        )
        for stream, entries in streams_reply(response):
            await self.router.route(self.partition_of[stream], entries)
            self.routed[stream] = entries[-1][0]

    async def trim(self, owned: Collection[int]) -> None:
        """Drop routed entries. We are the partition's only reader and route in order, so
        everything up to the last entry we routed is acknowledged and needed by nobody; the
        length cap (``publish_stream_maxlen``) only matters while no worker routes."""
        routed, self.routed = self.routed, {}
        trims: list[Command] = [
            ("XTRIM", stream, "MINID", id_after(last))
            for stream, last in routed.items()
            if self.partition_of[stream] in owned
        ]
        # The broadcast feed is shared by all gateways: keep a retention window, not a cursor.
        oldest = int(time.time() * 1000) - self.retention_ms
        trims.append(("XTRIM", self.feed, "MINID", f"{oldest}-0"))
        await self.pipe.execute_many(trims)
