"""Reconcile: membership in Redis converges to this gateway's live sockets.

Redis can disagree with a gateway after a fault: an unregister failed while Redis was away (a
*ghost*: ``HEAD …/users/u`` answers 200 for a user who left), or Redis lost what a gateway
registered (restarted without its data). Every :attr:`Reconciler.interval` seconds, and soon
after a failed unregister, the gateway compares the connections Redis says it holds with the
sockets it has: ghosts are unregistered, and live sockets missing from Redis are registered
again with the groups they are in here. So after any fault, Redis is right again within one
interval of Redis answering (``HUBBUB_RECONCILE_INTERVAL``, 10 s by default).

Races with connections opening and closing while it runs are harmless: a socket is in the
local index *before* its registration script runs and leaves it *before* its unregister runs,
so a connection that Redis holds and the index does not is a ghost or being unregistered
(unregistering twice is a no-op), and only sockets registered before Redis was read are
restored (a registration in flight is left to finish).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from hubbub.redis.membership import ConnectionExists, TooManyConnections

from .deliver import LocalConnection
from .state import GatewayState

log = logging.getLogger("hubbub.gateway.reconcile")


class Reconciler:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.interval = state.settings.reconcile_interval
        self.soon = state.reconcile_soon  # set after a failed unregister: retry without waiting

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self.soon.wait()
            except TimeoutError:
                pass
            self.soon.clear()
            try:
                await self.reconcile()
            except RedisError as exc:
                self.state.metrics.redis_errors.labels("reconcile").inc()
                log.warning("reconcile failed, next try in %.0f s: %r", self.interval, exc)
                await asyncio.sleep(min(self.interval, 1.0))
                self.soon.set()

    async def reconcile(self) -> tuple[int, int]:
        """One pass; returns (ghosts removed, connections restored)."""
        state = self.state
        gateway = state.settings.gateway_id
        index = state.index
        membership = state.membership
        registered = {
            conn.id: conn
            for conn in index.connections.values()
            if conn.pending is None and not conn.closing  # started: registered in Redis
        }
        hubs = {conn.hub for conn in registered.values()}
        recorded = {
            _text(raw) for raw in await state.redis.smembers(state.schema.gateway_hubs(gateway))
        }
        if hubs - recorded:  # Redis lost them (registrations record each hub only once)
            await state.redis.sadd(state.schema.gateway_hubs(gateway), *(hubs - recorded))
        hubs |= recorded
        removed = restored = 0
        for hub in sorted(hubs):
            key = state.schema.hub(hub).gateway_connections(gateway)
            held = {_text(c) for c in await state.redis.smembers(key)}
            for conn_id in held:
                if conn_id not in index.connections and conn_id not in index.reserved:
                    if await membership.unregister(hub, conn_id):
                        removed += 1
            for conn_id, conn in registered.items():
                live = index.connections.get(conn_id) is conn
                if conn.hub == hub and conn_id not in held and live and await self._restore(conn):
                    restored += 1
        if removed or restored:
            log.warning(
                "reconciled with Redis: %d ghost connections removed, %d restored",
                removed,
                restored,
            )
        return removed, restored

    async def _restore(self, conn: LocalConnection) -> bool:
        """Register a live socket Redis lost, with the groups it is in here."""
        state = self.state
        try:
            registration = await state.membership.register(
                conn.hub,
                conn.id,
                state.settings.gateway_id,
                conn.user,
                conn.resume.protocol if conn.resume is not None else None,
            )
        except ConnectionExists:  # registered meanwhile
            return False
        except TooManyConnections:  # its user reconnected elsewhere meanwhile: start over
            conn.close(allow_reconnect=True)
            return False
        for group in registration.groups:
            state.index.join(conn.hub, group, (conn.id,))
        for group in tuple(conn.groups):
            await state.membership.add_connection_to_group(conn.hub, conn.id, group)
        return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
