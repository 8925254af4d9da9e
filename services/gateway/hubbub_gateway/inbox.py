"""Inbox: the gateway reads its own inbox stream and the broadcast feed, nothing else.

It keeps the id of the last entry it handled for each stream, so when its Redis connection
drops and comes back it resumes exactly where it stopped; entries are never lost to a
reconnect the way pub/sub messages are.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import streams_reply
from hubbub.redis.stream import id_after, last_entry_id
from hubbub.settings import Settings
from hubbub.wire.envelopes import Entry, decode_entry, hello
from hubbub.wire.keys import KeySchema

from .deliver import LocalIndex
from .health import Health

log = logging.getLogger("hubbub.gateway.inbox")


class InboxReader:
    """This gateway's reader of its inbox and the broadcast feed; it trims what it handled."""

    def __init__(
        self, settings: Settings, *, redis: Redis, pipe: Pipe, index: LocalIndex, health: Health
    ) -> None:
        self.redis = redis
        self.health = health
        self.pipe = pipe
        self.index = index
        self.gateway_id = settings.gateway_id
        self.maxlen = settings.inbox_maxlen
        self.batch = settings.read_batch
        self.block_ms = settings.read_block_ms
        self.trim_interval = settings.trim_interval
        schema = KeySchema(settings.key_prefix)
        self.inbox = schema.inbox(self.gateway_id).encode()
        self.feed = schema.broadcast_feed.encode()
        self.positions: dict[bytes, bytes] = {}

    async def start_positions(self) -> None:
        """Start after what is already there: earlier entries were for an earlier life."""
        for key in (self.inbox, self.feed):
            self.positions[key] = await last_entry_id(self.redis, key.decode())
        await self.create_inbox()

    async def create_inbox(self) -> None:
        """Deliveries never create an inbox (NOMKSTREAM): the gateway does, when it lives."""
        await self.redis.xadd(self.inbox, hello(self.gateway_id).mapping(), maxlen=self.maxlen)

    async def run(self) -> None:
        backoff = 0.05
        next_trim = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_trim:
                    await self.trim()
                    next_trim = now + self.trim_interval
                response = await self.pipe.read_streams(
                    ("XREAD", "COUNT", self.batch), self.positions, self.block_ms
                )
                backoff = 0.05
                self.health.read_done()
            except RedisError as exc:
                self.health.redis_failed(repr(exc))
                self.index.metrics.redis_errors.labels("inbox").inc()
                log.warning("inbox read failed, retrying in %.2fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            started = time.perf_counter()
            deliveries: list[Entry] = []
            for stream, entries in streams_reply(response):
                for entry_id, fields in entries:
                    try:
                        deliveries.append(decode_entry(fields))
                    except Exception:
                        log.exception("dropping malformed inbox entry %r", entry_id)
                self.positions[stream] = entries[-1][0]
            if deliveries:
                try:
                    self.index.handle_many(deliveries)
                except Exception:
                    log.exception("delivery of %d inbox entries failed", len(deliveries))
                journal = self.index.journal
                if journal is not None and journal.dirty:
                    # Resumable connections' messages: in Redis before on the socket, and
                    # before the next read, so the stored positions say what is journaled.
                    await journal.flush()
            if response:
                self.index.metrics.stage.labels("deliver").observe(time.perf_counter() - started)

    async def trim(self) -> None:
        """Drop inbox entries already handled: only this gateway reads its inbox, so what it
        has read is needed by nobody. (Every gateway reads the broadcast feed: the workers trim
        it to a retention window, ``broadcast_retention_ms``.)"""
        handled = self.positions.get(self.inbox)
        if handled and handled != b"0-0":
            await self.pipe.execute("XTRIM", self.inbox, "MINID", id_after(handled))
