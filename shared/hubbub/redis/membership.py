"""Membership in Redis: connections, users, groups, and which gateway holds whom.

Every change runs as one Lua script on the hub's hash slot, so it is atomic: a failure leaves
nothing half-applied, and a connection that registers while a user is being added to a group
either joins through the user's binding or through the add, never neither. Scripts return the
(gateway, connection) pairs they touched so the caller can tell those gateways, through their
inboxes, to update their local indexes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from hubbub.wire import keys as k
from hubbub.wire.envelopes import Kind, control
from hubbub.wire.keys import HubKeys, KeySchema

_HELPERS = f"""
local function key(base, marker, name) return base .. ':' .. marker .. ':' .. name end
local function join(base, conn, gw, group)
  if redis.call('SADD', key(base, '{k.GROUP_CONNECTIONS}', group), conn) == 1 then
    redis.call('HINCRBY', key(base, '{k.GROUP_GATEWAYS}', group), gw, 1)
  end
  redis.call('SADD', key(base, '{k.CONNECTION_GROUPS}', conn), group)
end
local function leave(base, conn, gw, group)
  local removed = redis.call('SREM', key(base, '{k.GROUP_CONNECTIONS}', group), conn)
  if removed == 1 then
    local gg = key(base, '{k.GROUP_GATEWAYS}', group)
    if redis.call('HINCRBY', gg, gw, -1) <= 0 then redis.call('HDEL', gg, gw) end
  end
  redis.call('SREM', key(base, '{k.CONNECTION_GROUPS}', conn), group)
  return removed
end
local function gateway_of(base, conn)
  return redis.call('HGET', key(base, '{k.CONNECTION}', conn), 'gw')
end
local function live_user_groups(base, user, now)
  local ugr = key(base, '{k.USER_GROUPS}', user)
  redis.call('ZREMRANGEBYSCORE', ugr, '-inf', '(' .. now)
  return redis.call('ZRANGE', ugr, 0, -1)
end
"""

# KEYS[1] connection hash. ARGV: base, conn, gw, user ('' = anonymous), now.
# Returns false if the connection id is live, else the groups it joined through its user.
_REGISTER = (
    _HELPERS
    + f"""
local base, conn, gw, user, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], 'gw', gw, 'user', user)
redis.call('SADD', key(base, '{k.GATEWAY_CONNECTIONS}', gw), conn)
local groups = {{}}
if user ~= '' then
  redis.call('SADD', key(base, '{k.USER_CONNECTIONS}', user), conn)
  redis.call('HINCRBY', key(base, '{k.USER_GATEWAYS}', user), gw, 1)
  groups = live_user_groups(base, user, now)
  for _, group in ipairs(groups) do join(base, conn, gw, group) end
end
return groups
"""
)

# KEYS[1] connection hash. ARGV: base, conn. Returns the gateway that held it, or false.
_UNREGISTER = (
    _HELPERS
    + f"""
local base, conn = ARGV[1], ARGV[2]
local info = redis.call('HMGET', KEYS[1], 'gw', 'user')
local gw, user = info[1], info[2]
if not gw then return false end
for _, group in ipairs(redis.call('SMEMBERS', key(base, '{k.CONNECTION_GROUPS}', conn))) do
  leave(base, conn, gw, group)
end
if user and user ~= '' then
  redis.call('SREM', key(base, '{k.USER_CONNECTIONS}', user), conn)
  local ug = key(base, '{k.USER_GATEWAYS}', user)
  if redis.call('HINCRBY', ug, gw, -1) <= 0 then redis.call('HDEL', ug, gw) end
end
redis.call('SREM', key(base, '{k.GATEWAY_CONNECTIONS}', gw), conn)
redis.call('DEL', KEYS[1], key(base, '{k.CONNECTION_GROUPS}', conn))
return gw
"""
)

# KEYS[1] connection hash. ARGV: base, conn, group, 1 = add / 0 = remove.
# Returns the connection's gateway, or false when the connection does not exist.
_CONNECTION_GROUP = (
    _HELPERS
    + """
local base, conn, group, add = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local gw = gateway_of(base, conn)
if not gw then return false end
if add == '1' then join(base, conn, gw, group) else leave(base, conn, gw, group) end
return gw
"""
)

# KEYS[1] connection hash. ARGV: base, conn. Returns the gateway, or false.
_CONNECTION_ALL_GROUPS = (
    _HELPERS
    + f"""
local base, conn = ARGV[1], ARGV[2]
local gw = gateway_of(base, conn)
if not gw then return false end
for _, group in ipairs(redis.call('SMEMBERS', key(base, '{k.CONNECTION_GROUPS}', conn))) do
  leave(base, conn, gw, group)
end
return gw
"""
)

# KEYS[1] user's groups. ARGV: base, user, group, expiry ('inf', a unix time, or '' = none).
# Adds the binding (future connections) and the user's live connections. Returns gw, conn, ...
_ADD_USER_GROUP = (
    _HELPERS
    + f"""
local base, user, group, expiry = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if expiry ~= '' then redis.call('ZADD', KEYS[1], expiry, group) end
local touched = {{}}
for _, conn in ipairs(redis.call('SMEMBERS', key(base, '{k.USER_CONNECTIONS}', user))) do
  local gw = gateway_of(base, conn)
  if gw then
    join(base, conn, gw, group)
    table.insert(touched, gw); table.insert(touched, conn)
  end
end
return touched
"""
)

# KEYS[1] user's groups. ARGV: base, user, group ('' = all groups). Returns gw, conn, ...
_REMOVE_USER_GROUP = (
    _HELPERS
    + f"""
local base, user, group = ARGV[1], ARGV[2], ARGV[3]
if group == '' then redis.call('DEL', KEYS[1]) else redis.call('ZREM', KEYS[1], group) end
local touched = {{}}
for _, conn in ipairs(redis.call('SMEMBERS', key(base, '{k.USER_CONNECTIONS}', user))) do
  local gw = gateway_of(base, conn)
  if gw then
    if group == '' then
      for _, g in ipairs(redis.call('SMEMBERS', key(base, '{k.CONNECTION_GROUPS}', conn))) do
        leave(base, conn, gw, g)
      end
    else
      leave(base, conn, gw, group)
    end
    table.insert(touched, gw); table.insert(touched, conn)
  end
end
return touched
"""
)

# KEYS[1] user's groups. ARGV: base, user, group, now. 1 if bound or any connection is in.
_USER_IN_GROUP = (
    _HELPERS
    + f"""
local base, user, group, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local expiry = redis.call('ZSCORE', KEYS[1], group)
if expiry and tonumber(expiry) >= now then return 1 end
local gc = key(base, '{k.GROUP_CONNECTIONS}', group)
for _, conn in ipairs(redis.call('SMEMBERS', key(base, '{k.USER_CONNECTIONS}', user))) do
  if redis.call('SISMEMBER', gc, conn) == 1 then return 1 end
end
return 0
"""
)


def _pairs(flat: list[bytes]) -> dict[str, list[str]]:
    """``[gw, conn, gw, conn, ...]`` to ``{gw: [conn, ...]}``."""
    by_gateway: dict[str, list[str]] = {}
    for i in range(0, len(flat), 2):
        by_gateway.setdefault(flat[i].decode(), []).append(flat[i + 1].decode())
    return by_gateway


@dataclass(frozen=True, slots=True)
class Registration:
    """A connection registered in Redis, and the groups it joined through its user."""

    groups: tuple[str, ...]


class ConnectionExists(Exception):
    """The connection id is already live (SignalR answers 409)."""


class Membership:
    """Membership operations of one deployment, each one atomic in Redis."""

    def __init__(self, redis: Redis, schema: KeySchema) -> None:
        self.redis = redis
        self.schema = schema
        self._register = redis.register_script(_REGISTER)
        self._unregister = redis.register_script(_UNREGISTER)
        self._connection_group = redis.register_script(_CONNECTION_GROUP)
        self._connection_all_groups = redis.register_script(_CONNECTION_ALL_GROUPS)
        self._add_user_group = redis.register_script(_ADD_USER_GROUP)
        self._remove_user_group = redis.register_script(_REMOVE_USER_GROUP)
        self._user_in_group = redis.register_script(_USER_IN_GROUP)

    # ------------------------------------------------------------ connection lifecycle

    async def register(self, hub: str, conn: str, gateway: str, user: str | None) -> Registration:
        hk = self.schema.hub(hub)
        await self.redis.sadd(self.schema.gateway_hubs(gateway), hub)
        result = await self._register(
            keys=[hk.connection(conn)],
            args=[hk.base, conn, gateway, user or "", time.time()],
        )
        if result is None:
            raise ConnectionExists(conn)
        return Registration(tuple(g.decode() for g in result))

    async def unregister(self, hub: str, conn: str) -> str | None:
        hk = self.schema.hub(hub)
        gw = await self._unregister(keys=[hk.connection(conn)], args=[hk.base, conn])
        return gw.decode() if gw else None

    # ------------------------------------------------------------ groups

    async def add_connection_to_group(self, hub: str, conn: str, group: str) -> bool:
        return await self._connection_change(hub, conn, group, add=True)

    async def remove_connection_from_group(self, hub: str, conn: str, group: str) -> bool:
        return await self._connection_change(hub, conn, group, add=False)

    async def _connection_change(self, hub: str, conn: str, group: str, add: bool) -> bool:
        hk = self.schema.hub(hub)
        gw = await self._connection_group(
            keys=[hk.connection(conn)], args=[hk.base, conn, group, "1" if add else "0"]
        )
        if not gw:
            return False
        kind = Kind.JOIN if add else Kind.LEAVE
        await self._notify({gw.decode(): [conn]}, kind, hub, group)
        return True

    async def remove_connection_from_all_groups(self, hub: str, conn: str) -> bool:
        hk = self.schema.hub(hub)
        gw = await self._connection_all_groups(keys=[hk.connection(conn)], args=[hk.base, conn])
        if not gw:
            return False
        await self._notify({gw.decode(): [conn]}, Kind.LEAVE, hub, "")
        return True

    async def add_user_to_group(
        self, hub: str, user: str, group: str, ttl: float | None = None
    ) -> None:
        """``ttl`` None: durable; 0: only the user's current connections; else seconds."""
        hk = self.schema.hub(hub)
        if ttl is None:
            expiry = "inf"
        elif ttl <= 0:
            expiry = ""
        else:
            expiry = repr(time.time() + ttl)
        touched = await self._add_user_group(
            keys=[hk.user_groups(user)], args=[hk.base, user, group, expiry]
        )
        await self._notify(_pairs(touched), Kind.JOIN, hub, group)

    async def remove_user_from_group(self, hub: str, user: str, group: str) -> None:
        await self._remove_user(hub, user, group)

    async def remove_user_from_all_groups(self, hub: str, user: str) -> None:
        await self._remove_user(hub, user, "")

    async def _remove_user(self, hub: str, user: str, group: str) -> None:
        hk = self.schema.hub(hub)
        touched = await self._remove_user_group(
            keys=[hk.user_groups(user)], args=[hk.base, user, group]
        )
        await self._notify(_pairs(touched), Kind.LEAVE, hub, group)

    async def _notify(
        self, by_gateway: dict[str, list[str]], kind: Kind, hub: str, group: str
    ) -> None:
        """Tell each gateway to update its local index. Idempotent, so a retry is safe."""
        if not by_gateway:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for gw, conns in by_gateway.items():
                pipe.xadd(
                    self.schema.inbox(gw), control(kind, hub, tuple(conns), group), nomkstream=True
                )
            await pipe.execute()

    async def close_connection(self, hub: str, conn: str, reason: str | None) -> bool:
        gw = await self.redis.hget(self.schema.hub(hub).connection(conn), "gw")
        if not gw:
            return False
        await self.redis.xadd(
            self.schema.inbox(gw.decode() if isinstance(gw, bytes) else gw),
            control(Kind.CLOSE, hub, (conn,), reason=reason),
            nomkstream=True,
        )
        return True

    # ------------------------------------------------------------ existence

    async def connection_exists(self, hub: str, conn: str) -> bool:
        return bool(await self.redis.exists(self.schema.hub(hub).connection(conn)))

    async def user_exists(self, hub: str, user: str) -> bool:
        return bool(await self.redis.scard(self.schema.hub(hub).user_connections(user)))

    async def group_exists(self, hub: str, group: str) -> bool:
        return bool(await self.redis.scard(self.schema.hub(hub).group_connections(group)))

    async def user_in_group(self, hub: str, user: str, group: str) -> bool:
        hk: HubKeys = self.schema.hub(hub)
        found = await self._user_in_group(
            keys=[hk.user_groups(user)], args=[hk.base, user, group, time.time()]
        )
        return bool(found)

    # ------------------------------------------------------------ gateway liveness

    async def reap_gateway(self, gateway: str) -> int:
        """Remove every connection a dead gateway held; returns how many were removed."""
        removed = 0
        hubs_key = self.schema.gateway_hubs(gateway)
        for raw_hub in await self.redis.smembers(hubs_key):
            hub = raw_hub.decode() if isinstance(raw_hub, bytes) else raw_hub
            hk = self.schema.hub(hub)
            for raw_conn in await self.redis.smembers(hk.gateway_connections(gateway)):
                conn = raw_conn.decode() if isinstance(raw_conn, bytes) else raw_conn
                if await self.unregister(hub, conn):
                    removed += 1
            await self.redis.delete(hk.gateway_connections(gateway))
        await self.redis.delete(hubs_key, self.schema.inbox(gateway))
        await self.redis.zrem(self.schema.gateways, gateway)
        return removed
