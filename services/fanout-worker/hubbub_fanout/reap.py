"""Reap: remove the connections of gateways whose heartbeat expired.

Any worker may find a dead gateway; a short per-gateway lock makes one of them do the work.

A deadline read from Redis is not proof of death: a failover can promote a replica that never
got a live gateway's last heartbeats, so its deadline goes back in time while the gateway is
still reconnecting. A gateway is therefore reaped only once this worker has itself seen its
deadline expired for :attr:`Settings.gateway_grace` (its own clock, Redis answering all the
while); a live gateway heartbeats within that, so only a silent one is reaped.
Each connection removed gets its disconnected event upstream (while a service is live), as
its gateway would have appended it: a service's presence list must not keep the users of a
gateway that crashed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from hubbub.redis.membership import Membership
from hubbub.redis.pipe import Pipe
from hubbub.redis.upstream import UpstreamStream
from hubbub.settings import Settings
from hubbub.wire.envelopes import Event, UpstreamEntry
from hubbub.wire.keys import KeySchema

log = logging.getLogger("hubbub.fanout")

LOCK_SECONDS = 60  # longer than reaping any gateway takes; the lock is deleted when done
GATEWAY_LOST = "The gateway holding the connection stopped."


class Reaper:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        pipe: Pipe,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.name = name
        self.grace = settings.gateway_grace
        self.clock = clock
        # Gateway -> when this worker first saw its deadline expired (one entry per gateway
        # in the gateways set, no more).
        self.expired_since: dict[str, float] = {}
        self.schema = KeySchema(settings.key_prefix)
        self.membership = Membership.from_settings(redis, settings)
        self.upstream = UpstreamStream(
            pipe, self.schema, settings.upstream_partitions, settings.upstream_stream_maxlen
        )

    async def reap(self) -> None:
        """Remove the connections of gateways seen expired for the grace."""
        expired = await self.redis.zrangebyscore(self.schema.gateways, "-inf", time.time())
        now = self.clock()
        self.expired_since = {
            gateway: self.expired_since.get(gateway, now)
            for gateway in (raw.decode() if isinstance(raw, bytes) else str(raw) for raw in expired)
        }
        for gateway, since in tuple(self.expired_since.items()):
            if now - since < self.grace:
                continue
            lock = self.schema.reaper_lock(gateway)
            if not await self.redis.set(lock, self.name, nx=True, ex=LOCK_SECONDS):
                continue
            removed = await self.membership.reap_gateway(gateway)
            if removed and await self.redis.zcount(
                self.schema.upstream_services, time.time(), "+inf"
            ):
                for r in removed:
                    await self.upstream.append(
                        UpstreamEntry(
                            Event.DISCONNECTED,
                            r.hub,
                            r.connection,
                            gateway,
                            r.user,
                            error=GATEWAY_LOST,
                        )
                    )
            await self.redis.delete(lock)
            del self.expired_since[gateway]
            log.info("reaped gateway %s: %d connections removed", gateway, len(removed))
