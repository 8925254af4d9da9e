"""Leases: which worker routes which publish partition (or which consumer of a service handles
which upstream partition), so each partition keeps its order.

A worker holds a partition while it renews the partition's lease (a key with a TTL holding
its name). Workers heartbeat into a sorted set; each takes at most its fair share,
``ceil(partitions / live workers)``, and gives back what exceeds it, so partitions spread
over the workers as they come and go. A lease that is not renewed (the worker died or stalled)
expires and another worker takes the partition over, routing its pending entries first.

Fencing: each acquisition gets an *epoch*, Redis's clock in microseconds when it happened, so
a later holder always has a larger one (even after Redis came back empty). Every delivery
carries its partition's epoch and gateways refuse one older than the newest they have seen
for that partition (:mod:`hubbub_gateway.deliver`), so a worker that stalled past its lease
and wakes mid-batch cannot deliver behind its successor. And a worker reads a partition only
while its last renewal is fresh (:meth:`Leases.fresh`): after a stall it renews (and learns
what it lost) before it reads again, so it never takes new entries from under its successor.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from hubbub.settings import Settings
from hubbub.wire.keys import KeySchema

# The epoch of an acquisition: Redis's clock, microseconds (below 2^53, exact in Lua).
_EPOCH = """
local function epoch()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

# KEYS[1] lease. ARGV: name, ttl ms. 1 if we hold the lease (renewed); a new epoch if it was
# free and is ours now (it expired, or Redis lost it): a new acquisition; 0 if another holds it.
_RENEW = (
    _EPOCH
    + """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return epoch() end
return 0
"""
)

# KEYS[1] lease. ARGV: name, ttl ms. The epoch if we took the free lease, else 0.
_ACQUIRE = (
    _EPOCH
    + """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return epoch() end
return 0
"""
)

# KEYS[1] lease. ARGV: name. Deletes the lease only if we hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class LeaseFamily:
    """A set of partitions shared out among its members: the sorted set of live members and
    the lease key of each partition."""

    members: str
    lease: Callable[[int], str]
    partitions: int

    @classmethod
    def workers(cls, settings: Settings) -> LeaseFamily:
        """The publish partitions, among the fan-out workers."""
        schema = KeySchema(settings.key_prefix)
        return cls(schema.workers, schema.partition_lease, settings.publish_partitions)

    @classmethod
    def upstream(cls, settings: Settings, group: str) -> LeaseFamily:
        """The upstream partitions, among the consumers of one service (consumer group)."""
        schema = KeySchema(settings.key_prefix)
        return cls(
            schema.upstream_consumers(group),
            lambda n: schema.upstream_lease(group, n),
            settings.upstream_partitions,
        )


class Leases:
    """The partitions this member holds (:attr:`owned`, with their :attr:`epochs`), kept and
    shared out by :meth:`refresh`. By default the fan-out workers' publish partitions."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        name: str,
        family: LeaseFamily | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.family = family = family or LeaseFamily.workers(settings)
        self.name = name
        self.partitions = family.partitions
        self.lease_ms = settings.lease_ms
        self.owned: set[int] = set()
        self.epochs: dict[int, int] = {}  # of the owned partitions; the router stamps them
        self.clock = clock
        self.renewed_at = -math.inf  # on ``clock``: when the last refresh started
        self._renew = redis.register_script(_RENEW)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    def fresh(self) -> bool:
        """Whether the leases renewed at the last refresh are surely still ours: less than
        half a lease has passed since that refresh started (a refresh runs every lease
        interval, far more often). False after a stall: refresh before reading again."""
        return self.clock() - self.renewed_at < self.lease_ms / 2000

    async def refresh(self) -> tuple[set[int], set[int]]:
        """Heartbeat, renew, rebalance. Returns (newly acquired, lost) partitions; a lease
        found free and taken again counts as acquired (a new epoch, pending entries first)."""
        started = self.clock()
        now = time.time()
        await self.redis.zadd(self.family.members, {self.name: now + self.lease_ms / 1000})
        await self.redis.zremrangebyscore(self.family.members, "-inf", now)
        live = max(1, await self.redis.zcard(self.family.members))
        share = math.ceil(self.partitions / live)

        lost: set[int] = set()
        acquired: set[int] = set()
        for n in sorted(self.owned):
            renewed = await self._renew(
                keys=[self.family.lease(n)], args=[self.name, self.lease_ms]
            )
            if not renewed:
                lost.add(n)
            elif renewed != 1:
                self.epochs[n] = int(renewed)
                acquired.add(n)
        self.owned -= lost
        # Give back what exceeds our share (highest first), so newcomers find free partitions.
        while len(self.owned) > share:
            n = max(self.owned)
            await self._release(keys=[self.family.lease(n)], args=[self.name])
            self.owned.discard(n)
            lost.add(n)

        free = [n for n in range(self.partitions) if n not in self.owned]
        random.shuffle(free)
        for n in free:
            if len(self.owned) >= share:
                break
            key = self.family.lease(n)
            epoch = await self._acquire(keys=[key], args=[self.name, self.lease_ms])
            if epoch:
                self.owned.add(n)
                self.epochs[n] = int(epoch)
                acquired.add(n)
        for n in lost:
            self.epochs.pop(n, None)
        self.renewed_at = started
        return acquired, lost

    async def release_all(self) -> None:
        """Give every partition back at once, so the next owner need not wait for expiry."""
        for n in sorted(self.owned):
            await self._release(keys=[self.family.lease(n)], args=[self.name])
        self.owned.clear()
        self.epochs.clear()
        await self.redis.zrem(self.family.members, self.name)
