"""Leases: which worker routes which publish partition, so each partition keeps its order.

A worker holds a partition while it renews the partition's lease (a key with a TTL holding
its name). Workers heartbeat into a sorted set; each takes at most its fair share,
``ceil(partitions / live workers)``, and gives back what exceeds it, so partitions spread
over the workers as they come and go. A lease that is not renewed (the worker died or stalled)
expires and another worker takes the partition over, routing its pending entries first.
"""

from __future__ import annotations

import math
import random
import time

from redis.asyncio import Redis

from hubbub.settings import Settings
from hubbub.wire.keys import KeySchema

# KEYS[1] lease. ARGV: name, ttl ms. 1 if we hold (or now hold) the lease.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""

# KEYS[1] lease. ARGV: name. Deletes the lease only if we hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leases:
    """The partitions this worker holds (:attr:`owned`), kept and shared out by :meth:`refresh`."""

    def __init__(self, settings: Settings, *, redis: Redis, name: str) -> None:
        self.redis = redis
        self.schema = KeySchema(settings.key_prefix)
        self.name = name
        self.partitions = settings.publish_partitions
        self.lease_ms = settings.lease_ms
        self.owned: set[int] = set()
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def refresh(self) -> tuple[set[int], set[int]]:
        """Heartbeat, renew, rebalance. Returns (newly acquired, lost) partitions."""
        now = time.time()
        await self.redis.zadd(self.schema.workers, {self.name: now + self.lease_ms / 1000})
        await self.redis.zremrangebyscore(self.schema.workers, "-inf", now)
        live = max(1, await self.redis.zcard(self.schema.workers))
        share = math.ceil(self.partitions / live)

        lost: set[int] = set()
        for n in sorted(self.owned):
            if not await self._renew(
                keys=[self.schema.partition_lease(n)], args=[self.name, self.lease_ms]
            ):
                lost.add(n)
        self.owned -= lost
        # Give back what exceeds our share (highest first), so newcomers find free partitions.
        while len(self.owned) > share:
            n = max(self.owned)
            await self._release(keys=[self.schema.partition_lease(n)], args=[self.name])
            self.owned.discard(n)
            lost.add(n)

        acquired: set[int] = set()
        free = [n for n in range(self.partitions) if n not in self.owned]
        random.shuffle(free)
        for n in free:
            if len(self.owned) >= share:
                break
            key = self.schema.partition_lease(n)
            if await self.redis.set(key, self.name, nx=True, px=self.lease_ms):
                self.owned.add(n)
                acquired.add(n)
        return acquired, lost

    async def release_all(self) -> None:
        """Give every partition back at once, so the next owner need not wait for expiry."""
        for n in sorted(self.owned):
            await self._release(keys=[self.schema.partition_lease(n)], args=[self.name])
        self.owned.clear()
        await self.redis.zrem(self.schema.workers, self.name)
