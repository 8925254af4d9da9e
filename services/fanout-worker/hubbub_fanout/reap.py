"""Reap: remove the connections of gateways whose heartbeat expired.

Any worker may find a dead gateway; a short per-gateway lock makes one of them do the work.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from hubbub.redis.membership import Membership
from hubbub.settings import Settings
from hubbub.wire.keys import KeySchema

log = logging.getLogger("hubbub.fanout")

LOCK_SECONDS = 60  # longer than reaping any gateway takes; the lock is deleted when done


class Reaper:
    def __init__(self, settings: Settings, *, redis: Redis, name: str) -> None:
        self.redis = redis
        self.name = name
        self.schema = KeySchema(settings.key_prefix)
        self.membership = Membership(redis, self.schema)

    async def reap(self) -> None:
        """Remove the connections of gateways whose heartbeat has expired."""
        dead = await self.redis.zrangebyscore(self.schema.gateways, "-inf", time.time())
        for raw in dead:
            gateway = raw.decode() if isinstance(raw, bytes) else str(raw)
            lock = self.schema.reaper_lock(gateway)
            if not await self.redis.set(lock, self.name, nx=True, ex=LOCK_SECONDS):
                continue
            removed = await self.membership.reap_gateway(gateway)
            await self.redis.delete(lock)
            log.info("reaped gateway %s: %d connections removed", gateway, removed)
