"""Recover: route a partition's pending entries, in order, before anything new is read from it.

Entries are pending when they were read but not acknowledged: by a previous owner that died
or gave the partition up, or by this worker before a Redis error. ``XAUTOCLAIM`` makes them
ours; routing them first keeps the partition's order, and gateways drop the redeliveries.

Recovery also creates the partition's consumer group when it is missing: on a partition just
acquired, and after Redis came back without its data (every read would fail otherwise).
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubbub.redis.stream import id_after
from hubbub.settings import Settings
from hubbub.wire.keys import KeySchema

from .route import Router

log = logging.getLogger("hubbub.fanout")


class Recovery:
    def __init__(self, settings: Settings, *, redis: Redis, router: Router, name: str) -> None:
        self.redis = redis
        self.router = router
        self.name = name
        self.group = settings.worker_group
        self.batch = settings.read_batch
        self.lease_ms = settings.lease_ms
        self.schema = KeySchema(settings.key_prefix)

    async def recover(self, partition: int) -> None:
        """Route, in order, every entry of the partition that was read but not acknowledged."""
        stream = self.schema.publish_partition(partition)
        await self._ensure_group(stream)
        start = "0-0"
        while True:
            start_id, entries, deleted = await self.redis.xautoclaim(
                stream, self.group, self.name, min_idle_time=0, start_id=start, count=self.batch
            )
            if entries:
                log.info("partition %d: routing %d pending entries", partition, len(entries))
                await self.router.route(partition, entries)
            if deleted:
                await self.redis.xack(stream, self.group, *deleted)
            if start_id in (b"0-0", "0-0"):
                break
            start = start_id
        await self._trim_delivered(stream)
        await self._forget_idle_consumers(stream)

    async def _trim_delivered(self, stream: str) -> None:
        """Nothing is pending now, so every entry the group handed out is acknowledged: drop
        them. The previous owner trims only while it owns the partition, so its last entries
        would stay until more came."""
        for group in await self.redis.xinfo_groups(stream):
            if _text(group["name"]) == self.group:
                last = group["last-delivered-id"]
                await self.redis.xtrim(
                    stream, minid=id_after(last if isinstance(last, bytes) else last.encode())
                )

    async def _ensure_group(self, stream: str) -> None:
        """Create the consumer group from the stream's start, so nothing accepted is skipped."""
        try:
            await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _forget_idle_consumers(self, stream: str) -> None:
        """Workers come and go; their names would pile up in the group. Once their pending
        entries are ours, consumers idle for longer than a lease are dropped."""
        for consumer in await self.redis.xinfo_consumers(stream, self.group):
            name = _text(consumer["name"])
            if name != self.name and consumer["pending"] == 0 and consumer["idle"] > self.lease_ms:
                await self.redis.xgroup_delconsumer(stream, self.group, name)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
