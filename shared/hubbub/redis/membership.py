"""Membership in Redis: connections, users, groups, and which gateway holds whom.

Every change runs as one Lua script on the hub's hash slot, so it is atomic: a failure leaves
nothing half-applied, and a connection that registers while a user is being added to a group
either joins through the user's binding or through the add, never neither. Scripts return the
(gateway, connection) pairs they touched so the caller can tell those gateways, through their
inboxes, to update their local indexes. A change that may add a gateway to a group's or a
user's recipients is followed, before the call returns, by a
:class:`~hubbub.wire.envelopes.GrownEntry` on that target's publish partition, so workers that
remember targets' gateways forget that one (``hubbub_fanout.targets``).

Limits: a connection is in at most ``max_groups`` groups (``HUBBUB_MAX_GROUPS_PER_CONNECTION``),
checked by the scripts that join; and leaving all of a connection's or a user's groups
(unregistering it, or the REST calls) runs in calls of at most :data:`LEAVE_CHUNK` groups each,
so that no one script made on a client's behalf blocks Redis for long.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from hubbub.redis.pipe import Pipe, PipeScript
from hubbub.redis.stream import target_partition
from hubbub.settings import (
    DEFAULT_MAX_GROUPS_PER_CONNECTION,
    DEFAULT_PUBLISH_PARTITIONS,
    DEFAULT_PUBLISH_STREAM_MAXLEN,
    Settings,
)
from hubbub.wire import keys as k
from hubbub.wire.envelopes import ControlEntry, GrownEntry, Kind, Op
from hubbub.wire.keys import HubKeys, KeySchema

# Every key comes through KEYS, built by the key schema; a family prefix (``hk.x("")``) stands
# for keys named by what the script reads (a connection's groups, a user's connections), which
# share the hub's hash slot. Helper arguments are KEYS indexes, documented per script.
_HELPERS = f"""
local GW, USER = '{k.CONNECTION_GATEWAY}', '{k.CONNECTION_USER}'
local RP, SQ, RX = '{k.CONNECTION_PROTOCOL}', '{k.CONNECTION_NEXT_SEQ}', '{k.CONNECTION_RECEIVED}'
local IC, FC = '{k.CONNECTION_INBOX_AT}', '{k.CONNECTION_FEED_AT}'
local function join(conn, gw, group, cg, gc, gg, max)
  if redis.call('SISMEMBER', cg, group) == 0 and redis.call('SCARD', cg) >= max then
    return false
  end
  if redis.call('SADD', gc, conn) == 1 then redis.call('HINCRBY', gg, gw, 1) end
  redis.call('SADD', cg, group)
  return true
end
local function leave(conn, gw, group, cg, gc, gg)
  local removed = redis.call('SREM', gc, conn)
  if removed == 1 and redis.call('HINCRBY', gg, gw, -1) <= 0 then redis.call('HDEL', gg, gw) end
  redis.call('SREM', cg, group)
  return removed
end
-- Leaves up to n of the connection's groups; true if it is in more than n (some are left).
local function leave_chunk(conn, gw, cg, gc_prefix, gg_prefix, n)
  local more = redis.call('SCARD', cg) > n
  local groups = more and redis.call('SRANDMEMBER', cg, n) or redis.call('SMEMBERS', cg)
  for _, group in ipairs(groups) do
    leave(conn, gw, group, cg, gc_prefix .. group, gg_prefix .. group)
  end
  return more
end
local function live_user_groups(ugr, now)
  redis.call('ZREMRANGEBYSCORE', ugr, '-inf', '(' .. now)
  return redis.call('ZRANGE', ugr, 0, -1)
end
"""

# KEYS: connection, its groups, gateway's connections, user's connections, user's gateways,
# user's groups, gc prefix, gg prefix. ARGV: conn, gw, user ('' = anonymous), now, max groups,
# max connections of the user (0 = no limit), hub protocol of a resumable connection ('' = not
# resumable).
# Returns false if the connection id is live, 0 (and changes nothing) if the user has max
# connections already, else {1 if the user's gateways grew else 0, the groups it joined through
# its user...} (at most max groups: the user's other bindings skip this connection).
_REGISTER = (
    _HELPERS
    + """
local conn, gw, user, now, max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local max_user_connections = tonumber(ARGV[6])
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if user ~= '' and max_user_connections > 0
    and redis.call('SCARD', KEYS[4]) >= max_user_connections then
  return 0
end
redis.call('HSET', KEYS[1], GW, gw, USER, user)
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], RP, ARGV[7], SQ, 1, RX, 0) end
redis.call('SADD', KEYS[3], conn)
local joined = {}
local grew = 0
if user ~= '' then
  redis.call('SADD', KEYS[4], conn)
  if redis.call('HINCRBY', KEYS[5], gw, 1) == 1 then grew = 1 end
  for _, group in ipairs(live_user_groups(KEYS[6], now)) do
    if #joined >= max then break end
    if join(conn, gw, group, KEYS[2], KEYS[7] .. group, KEYS[8] .. group, max) then
      table.insert(joined, group)
    end
  end
end
table.insert(joined, 1, grew)
return joined
"""
)

# KEYS: connection, its groups, gwc prefix, uc prefix, ug prefix, gc prefix, gg prefix, its
# resume stream, its resume tombstone.
# ARGV: conn, n, why it ended, seconds to remember that (a resumable connection).
# Returns the gateway that held it, or false; or 1 when it was in more than n
# groups: n of them were left, nothing else changed, and the caller calls again.
_UNREGISTER = (
    _HELPERS
    + """
local conn, n = ARGV[1], tonumber(ARGV[2])
local info = redis.call('HMGET', KEYS[1], GW, USER, RP)
local gw, user = info[1], info[2]
if not gw then return false end
if leave_chunk(conn, gw, KEYS[2], KEYS[6], KEYS[7], n) then return 1 end
if info[3] then
  redis.call('DEL', KEYS[8])
  redis.call('SET', KEYS[9], ARGV[3], 'EX', ARGV[4])
end
if user and user ~= '' then
  redis.call('SREM', KEYS[4] .. user, conn)
  local ug = KEYS[5] .. user
  if redis.call('HINCRBY', ug, gw, -1) <= 0 then redis.call('HDEL', ug, gw) end
end
redis.call('SREM', KEYS[3] .. gw, conn)
redis.call('DEL', KEYS[1], KEYS[2])
return gw
"""
)

# KEYS: connection, its groups, group's connections, group's gateways.
# ARGV: conn, group, 1 = add / 0 = remove, max groups.
# Returns the connection's gateway, false when the connection does not exist, or 0 when an add
# is refused: the connection is in max groups already (and not in this one).
_CONNECTION_GROUP = (
    _HELPERS
    + """
local conn, group, add, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local gw = redis.call('HGET', KEYS[1], GW)
if not gw then return false end
if add == '1' then
  if not join(conn, gw, group, KEYS[2], KEYS[3], KEYS[4], max) then return 0 end
else
  leave(conn, gw, group, KEYS[2], KEYS[3], KEYS[4])
end
return gw
"""
)

# KEYS: connection, its groups, its resume stream, its resume tombstone, gwc prefix,
# ug prefix, gg prefix. ARGV: conn, the claiming gateway, the user ('' = anonymous).
# A re-attach of a resumable connection: moves it (its user's and its groups' gateway counts,
# the gateway's set) to the claiming gateway, so deliveries go there from now on, and returns
# what the new holder needs, all read in the same atomic step as the move:
# {'ok', old gateway, protocol, next seq, received, inbox at, feed at, {groups}, {entries}};
# or {'new'} (no such connection: a first connect), {'gone', why} (it ended), {'busy'} (a
# connection that is not resumable holds the id).
_CLAIM = (
    _HELPERS
    + """
local out = {}
local gone = redis.call('GET', KEYS[4])
if gone then table.insert(out, 'gone'); table.insert(out, gone); return out end
local info = redis.call('HMGET', KEYS[1], GW, USER, RP, SQ, RX, IC, FC)
local old, user = info[1], info[2]
if not old then table.insert(out, 'new'); return out end
if not info[3] or user ~= ARGV[3] then table.insert(out, 'busy'); return out end
local conn, gw = ARGV[1], ARGV[2]
local groups = redis.call('SMEMBERS', KEYS[2])
if old ~= gw then
  for _, group in ipairs(groups) do
    local gg = KEYS[7] .. group
    if redis.call('HINCRBY', gg, old, -1) <= 0 then redis.call('HDEL', gg, old) end
    redis.call('HINCRBY', gg, gw, 1)
  end
  if user ~= '' then
    local ug = KEYS[6] .. user
    if redis.call('HINCRBY', ug, old, -1) <= 0 then redis.call('HDEL', ug, old) end
    redis.call('HINCRBY', ug, gw, 1)
  end
  redis.call('SREM', KEYS[5] .. old, conn)
  redis.call('SADD', KEYS[5] .. gw, conn)
  redis.call('HSET', KEYS[1], GW, gw)
end
table.insert(out, 'ok'); table.insert(out, old); table.insert(out, info[3])
table.insert(out, info[4] or '1'); table.insert(out, info[5] or '0')
table.insert(out, info[6] or ''); table.insert(out, info[7] or '')
table.insert(out, groups); table.insert(out, redis.call('XRANGE', KEYS[3], '-', '+'))
return out
"""
)

# KEYS: per connection of one hub, its hash and its resume stream. ARGV: gateway, inbox at,
# feed at, then per connection: its next seq, n, and n x (seq, message id, JSON record).
# Appends each connection's messages to its resume stream, only while the connection is this
# gateway's (fencing: once another gateway claimed it, this one's appends are refused and it
# lets the connection go), and stores its position. Returns 1 (written) or 0 (refused) per
# connection. One call per hub per inbox read: the hub's keys share a hash slot.
_JOURNAL = (
    _HELPERS
    + """
local out = {}
local a = 4
for c = 1, #KEYS, 2 do
  local next_seq, n = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  if redis.call('HGET', KEYS[c], GW) == ARGV[1] then
    for i = a, a + 3 * n - 1, 3 do
      redis.call('XADD', KEYS[c + 1], '0-' .. ARGV[i], 'm', ARGV[i + 1], 'r', ARGV[i + 2])
    end
    redis.call('HSET', KEYS[c], SQ, next_seq, IC, ARGV[2], FC, ARGV[3])
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
  a = a + 3 * n
end
return out
"""
)

# KEYS: connection, its groups, gc prefix, gg prefix. ARGV: conn, n.
# Returns the gateway, or false; or 1 when n groups were left and more remain (call again).
_CONNECTION_ALL_GROUPS = (
    _HELPERS
    + """
local conn, n = ARGV[1], tonumber(ARGV[2])
local gw = redis.call('HGET', KEYS[1], GW)
if not gw then return false end
if leave_chunk(conn, gw, KEYS[2], KEYS[3], KEYS[4], n) then return 1 end
return gw
"""
)

# KEYS: user's groups, user's connections, c prefix, cg prefix, gc prefix, gg prefix.
# ARGV: group, expiry ('inf', a unix time, or '' = none), max groups.
# Adds the binding (future connections) and the user's live connections, but those already in
# max groups (they skip it). Returns gw, conn, ... of the connections that joined.
_ADD_USER_GROUP = (
    _HELPERS
    + """
local group, expiry, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
if expiry ~= '' then redis.call('ZADD', KEYS[1], expiry, group) end
local touched = {}
for _, conn in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local gw = redis.call('HGET', KEYS[3] .. conn, GW)
  if gw and join(conn, gw, group, KEYS[4] .. conn, KEYS[5] .. group, KEYS[6] .. group, max) then
    table.insert(touched, gw); table.insert(touched, conn)
  end
end
return touched
"""
)

# KEYS: user's groups, user's connections, c prefix, cg prefix, gc prefix, gg prefix.
# ARGV: group ('' = all groups), n. Returns more, gw, conn, ...: for all groups, at most n
# groups are left per call, and more = 1 says some remain (the caller calls again).
_REMOVE_USER_GROUP = (
    _HELPERS
    + """
local group, n = ARGV[1], tonumber(ARGV[2])
if group == '' then redis.call('DEL', KEYS[1]) else redis.call('ZREM', KEYS[1], group) end
local touched = {}
touched[1] = 0  -- more: set to 1 when groups remain
for _, conn in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local gw = redis.call('HGET', KEYS[3] .. conn, GW)
  if gw then
    local cg = KEYS[4] .. conn
    if group == '' then
      local count = redis.call('SCARD', cg)
      if count > 0 then
        if n <= 0 then touched[1] = 1; break end
        if leave_chunk(conn, gw, cg, KEYS[5], KEYS[6], n) then touched[1] = 1 end
        n = n - math.min(count, n)
        table.insert(touched, gw); table.insert(touched, conn)
      end
    else
      leave(conn, gw, group, cg, KEYS[5] .. group, KEYS[6] .. group)
      table.insert(touched, gw); table.insert(touched, conn)
    end
  end
end
return touched
"""
)

# KEYS: user's groups, group's connections, user's connections. ARGV: group, now.
# 1 if the user is bound to the group or any of its connections is in it.
_USER_IN_GROUP = """
local group, now = ARGV[1], tonumber(ARGV[2])
local expiry = redis.call('ZSCORE', KEYS[1], group)
if expiry and tonumber(expiry) >= now then return 1 end
for _, conn in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('SISMEMBER', KEYS[2], conn) == 1 then return 1 end
end
return 0
"""


# How many groups one script leaves at most when a connection leaves all of its groups (it
# unregisters, or REST removes it from all): a connection in 1,000 groups took one call of
# about 3 ms, which blocks all of Redis; a chunk of 100 takes a tenth of that. Each group is
# left atomically (both sides of the membership); a failure between calls leaves the
# connection in fewer groups, consistently, and a retry finishes the job.
LEAVE_CHUNK = 100

# Hub names may come from clients (when HUBBUB_HUBS allows any): the memory of the hubs a
# gateway recorded starts over past this many.
_HUBS_RECORDED = 1024


def _user_keys(hk: HubKeys, user: str) -> list[str]:
    """KEYS of the user-group scripts."""
    return [
        hk.user_groups(user),
        hk.user_connections(user),
        hk.connection(""),
        hk.connection_groups(""),
        hk.group_connections(""),
        hk.group_gateways(""),
    ]


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


class TooManyConnections(Exception):
    """The user has as many connections as one user may have
    (``HUBBUB_MAX_CONNECTIONS_PER_USER``); the connection was not registered."""

    def __init__(self, user: str, limit: int) -> None:
        super().__init__(f"user '{user}' has {limit} connections, the most one user may have")
        self.user = user
        self.limit = limit


class TooManyGroups(Exception):
    """The connection is in as many groups as one connection may be
    (``HUBBUB_MAX_GROUPS_PER_CONNECTION``); nothing was changed."""

    def __init__(self, conn: str, limit: int) -> None:
        super().__init__(
            f"connection '{conn}' is in {limit} groups, the most one connection may join; "
            "it must leave one before joining another"
        )
        self.conn = conn
        self.limit = limit


class NotResumable(Exception):
    """A re-attach of a resumable connection that has ended; the message says why."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A resumable connection this gateway now holds, as its previous holder left it."""

    previous: str  # the gateway that held it (this one, for a re-attach here)
    protocol: str
    next_seq: int
    received: int
    inbox_at: bytes  # the previous holder's inbox position up to which ``entries`` has all
    feed_at: bytes  # the same for the broadcast feed
    groups: tuple[str, ...]
    entries: list[tuple[int, bytes, bytes]]  # (sequence id, message id, JSON record)


# Why a resumable connection ended, for a re-attach that comes later.
ENDED = "The connection ended."


@dataclass(frozen=True, slots=True)
class Reaped:
    """A connection removed with its dead gateway."""

    hub: str
    connection: str
    user: str | None


class ScriptCall(Protocol):
    """A script run with keys and arguments: redis-py's, or a :class:`PipeScript`."""

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Awaitable[Any]: ...


class Membership:
    """Membership operations of one deployment, each one atomic in Redis.

    ``max_groups``: the most groups one connection may be in (joins beyond it are refused);
    ``max_user_connections``: the most connections one user may have (0: no limit).
    """

    def __init__(
        self,
        redis: Redis,
        schema: KeySchema,
        max_groups: int = DEFAULT_MAX_GROUPS_PER_CONNECTION,
        max_user_connections: int = 0,
        resume_memory: float = 300.0,
        *,
        partitions: int = DEFAULT_PUBLISH_PARTITIONS,
        stream_maxlen: int = DEFAULT_PUBLISH_STREAM_MAXLEN,
        markers: bool = False,
        pipe: Pipe | None = None,
    ) -> None:
        self.redis = redis
        self.schema = schema
        self.partitions = partitions  # of the publish stream, where GrownEntry markers go
        self.stream_maxlen = stream_maxlen
        # Write GrownEntry markers: only when workers remember targets (they need them).
        self.markers = markers
        # (gateway, hub) pairs already in the gateway's set of hubs (the reaper reads it):
        # one SADD per hub, not per connection. Reconcile adds them again to a Redis that
        # lost them.
        self._hubs_recorded: set[tuple[str, str]] = set()
        self.max_groups = max_groups
        self.max_user_connections = max_user_connections
        # Seconds a resumable connection's end is remembered (a re-attach is refused with why):
        # the connection token's lifetime, past which an unknown id is refused anyway.
        self.resume_memory = max(1, int(resume_memory))
        self._claim = redis.register_script(_CLAIM)
        # Every connection's open and close: on the hot path's pipe where there is one
        # (a gateway), so concurrent connects share round trips and skip redis-py's overhead.
        self._register: ScriptCall = (
            PipeScript(pipe, _REGISTER) if pipe else redis.register_script(_REGISTER)
        )
        self._unregister: ScriptCall = (
            PipeScript(pipe, _UNREGISTER) if pipe else redis.register_script(_UNREGISTER)
        )
        self._connection_group = redis.register_script(_CONNECTION_GROUP)
        self._connection_all_groups = redis.register_script(_CONNECTION_ALL_GROUPS)
        self._add_user_group = redis.register_script(_ADD_USER_GROUP)
        self._remove_user_group = redis.register_script(_REMOVE_USER_GROUP)
        self._user_in_group = redis.register_script(_USER_IN_GROUP)

    @classmethod
    def from_settings(
        cls, redis: Redis, settings: Settings, pipe: Pipe | None = None
    ) -> Membership:
        return cls(
            redis,
            KeySchema(settings.key_prefix),
            settings.max_groups_per_connection,
            settings.max_connections_per_user,
            settings.connection_token_ttl,
            partitions=settings.publish_partitions,
            stream_maxlen=settings.publish_stream_maxlen,
            markers=settings.route_cache_size > 0,
            pipe=pipe,
        )

    # ------------------------------------------------------------ connection lifecycle

    async def _record_hub(self, gateway: str, hub: str) -> None:
        if (gateway, hub) in self._hubs_recorded:
            return
        await self.redis.sadd(self.schema.gateway_hubs(gateway), hub)
        if len(self._hubs_recorded) >= _HUBS_RECORDED:
            self._hubs_recorded.clear()
        self._hubs_recorded.add((gateway, hub))

    async def register(
        self, hub: str, conn: str, gateway: str, user: str | None, protocol: str | None = None
    ) -> Registration:
        """``protocol``: the hub protocol of a resumable connection (stateful reconnect)."""
        hk = self.schema.hub(hub)
        await self._record_hub(gateway, hub)
        name = user or ""
        result = await self._register(
            keys=[
                hk.connection(conn),
                hk.connection_groups(conn),
                hk.gateway_connections(gateway),
                hk.user_connections(name),
                hk.user_gateways(name),
                hk.user_groups(name),
                hk.group_connections(""),
                hk.group_gateways(""),
            ],
            args=[
                conn,
                gateway,
                name,
                time.time(),
                self.max_groups,
                self.max_user_connections,
                protocol or "",
            ],
        )
        if result is None:
            raise ConnectionExists(conn)
        if result == 0:
            raise TooManyConnections(name, self.max_user_connections)
        groups = tuple(g.decode() for g in result[1:])
        grown = [(Kind.GROUP, g) for g in groups]
        if result[0] == 1:
            grown.append((Kind.USER, name))
        await self._announce(hub, grown=grown)
        return Registration(groups)

    async def unregister(self, hub: str, conn: str, why: str = ENDED) -> str | None:
        """``why``: for a resumable connection, what a later re-attach is told."""
        hk = self.schema.hub(hub)
        keys = [
            hk.connection(conn),
            hk.connection_groups(conn),
            hk.gateway_connections(""),
            hk.user_connections(""),
            hk.user_gateways(""),
            hk.group_connections(""),
            hk.group_gateways(""),
            hk.resume(conn),
            hk.resume_gone(conn),
        ]
        args: list[str | int] = [conn, LEAVE_CHUNK, why, self.resume_memory]
        while (gw := await self._unregister(keys=keys, args=args)) == 1:
            pass  # LEAVE_CHUNK groups left, more to go
        return gw.decode() if gw else None

    # ------------------------------------------------------------ stateful reconnect

    async def claim(self, hub: str, conn: str, gateway: str, user: str | None) -> Claimed | None:
        """Take over a resumable connection for a re-attach on ``gateway``: None when there
        is no such connection (a first connect); :class:`NotResumable` when it ended;
        :class:`ConnectionExists` when a connection that is not resumable holds the id."""
        hk = self.schema.hub(hub)
        await self._record_hub(gateway, hub)
        reply = await self._claim(
            keys=[
                hk.connection(conn),
                hk.connection_groups(conn),
                hk.resume(conn),
                hk.resume_gone(conn),
                hk.gateway_connections(""),
                hk.user_gateways(""),
                hk.group_gateways(""),
            ],
            args=[conn, gateway, user or ""],
        )
        status = reply[0]
        if status == b"new":
            return None
        if status == b"gone":
            raise NotResumable(_text(reply[1]))
        if status == b"busy":
            raise ConnectionExists(conn)
        entries = [
            (int(entry_id.partition(b"-")[2]), fields[1], fields[3])
            for entry_id, fields in reply[8]
        ]
        previous, groups = _text(reply[1]), tuple(_text(g) for g in reply[7])
        if previous != gateway:  # moved here: its user's and groups' gateways grew
            grown = [(Kind.GROUP, g) for g in groups]
            if user:
                grown.append((Kind.USER, user))
            await self._announce(hub, grown=grown)
        return Claimed(
            previous=previous,
            protocol=_text(reply[2]),
            next_seq=int(reply[3]),
            received=int(reply[4]),
            inbox_at=reply[5],
            feed_at=reply[6],
            groups=groups,
            entries=entries,
        )

    def journal(
        self,
        hub: str,
        gateway: str,
        position: tuple[bytes, bytes],
        connections: list[tuple[str, int, list[tuple[int, bytes, bytes]]]],
    ) -> tuple[bytes | str | int, ...]:
        """The command (for the gateway's :class:`~hubbub.redis.pipe.Pipe`) of one script that
        appends, for each of ``connections`` of ``hub`` (id, next sequence id, messages as
        (sequence id, message id, JSON record)), its messages to its resume stream, fenced:
        its reply holds 0 for a connection ``gateway`` no longer holds (nothing appended), 1
        otherwise. ``position``: the inbox and feed positions up to which everything to these
        connections is then in their streams. ``EVAL`` with the text, like the publish
        stream's script: nothing to reload after a Redis restart."""
        hk = self.schema.hub(hub)
        keys: list[str] = []
        args: list[bytes | str | int] = [gateway, *position]
        for conn, next_seq, items in connections:
            keys += (hk.connection(conn), hk.resume(conn))
            args += (next_seq, len(items))
            for item in items:
                args.extend(item)
        return ("EVAL", _JOURNAL, len(keys), *keys, *args)

    # ------------------------------------------------------------ groups

    async def add_connection_to_group(self, hub: str, conn: str, group: str) -> bool:
        """False if the connection does not exist; :class:`TooManyGroups` if it is in
        ``max_groups`` groups already (joining one it is in is fine)."""
        return await self._connection_change(hub, conn, group, add=True)

    async def remove_connection_from_group(self, hub: str, conn: str, group: str) -> bool:
        return await self._connection_change(hub, conn, group, add=False)

    async def _connection_change(self, hub: str, conn: str, group: str, add: bool) -> bool:
        hk = self.schema.hub(hub)
        gw = await self._connection_group(
            keys=[
                hk.connection(conn),
                hk.connection_groups(conn),
                hk.group_connections(group),
                hk.group_gateways(group),
            ],
            args=[conn, group, "1" if add else "0", self.max_groups],
        )
        if gw == 0:
            raise TooManyGroups(conn, self.max_groups)
        if not gw:
            return False
        op = Op.JOIN if add else Op.LEAVE
        grown = [(Kind.GROUP, group)] if add else []
        await self._announce(hub, {gw.decode(): [conn]}, op, group, grown)
        return True

    async def remove_connection_from_all_groups(self, hub: str, conn: str) -> bool:
        hk = self.schema.hub(hub)
        keys = [
            hk.connection(conn),
            hk.connection_groups(conn),
            hk.group_connections(""),
            hk.group_gateways(""),
        ]
        while (gw := await self._connection_all_groups(keys=keys, args=[conn, LEAVE_CHUNK])) == 1:
            pass
        if not gw:
            return False
        await self._announce(hub, {gw.decode(): [conn]}, Op.LEAVE, "")
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
            keys=_user_keys(hk, user), args=[group, expiry, self.max_groups]
        )
        grown = [(Kind.GROUP, group)] if touched else []
        await self._announce(hub, _pairs(touched), Op.JOIN, group, grown)

    async def remove_user_from_group(self, hub: str, user: str, group: str) -> None:
        await self._remove_user(hub, user, group)

    async def remove_user_from_all_groups(self, hub: str, user: str) -> None:
        await self._remove_user(hub, user, "")

    async def _remove_user(self, hub: str, user: str, group: str) -> None:
        """Leaving all groups goes :data:`LEAVE_CHUNK` groups a call, over all the user's
        connections, each chunk's gateways told as it is done."""
        hk = self.schema.hub(hub)
        more = True
        while more:
            result = await self._remove_user_group(
                keys=_user_keys(hk, user), args=[group, LEAVE_CHUNK]
            )
            more = result[0] == 1
            await self._announce(hub, _pairs(result[1:]), Op.LEAVE, group)

    async def _announce(
        self,
        hub: str,
        by_gateway: dict[str, list[str]] | None = None,
        op: Op = Op.JOIN,
        group: str = "",
        grown: list[tuple[Kind, str]] | None = None,
    ) -> None:
        """After a change, in one round trip: tell each gateway in ``by_gateway`` to update
        its local index (``op`` its connections to or from ``group``), and mark on each
        ``grown`` target's publish partition that its gateways may have grown. Both are
        idempotent, so a retry is safe."""
        if not self.markers:
            grown = None
        if not by_gateway and not grown:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for gw, conns in (by_gateway or {}).items():
                pipe.xadd(
                    self.schema.inbox(gw),
                    ControlEntry(op, hub, tuple(conns), group).mapping(),
                    nomkstream=True,
                )
            for kind, target in grown or ():
                partition = target_partition(hub, kind, target, self.partitions)
                pipe.xadd(
                    self.schema.publish_partition(partition),
                    GrownEntry(kind, hub, target).mapping(),
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )
            await pipe.execute()

    async def release(self, hub: str, conn: str, gateway: str) -> None:
        """Tell ``gateway`` that ``conn`` re-attached elsewhere: it lets it go, silently."""
        await self.redis.xadd(
            self.schema.inbox(gateway),
            ControlEntry(Op.RELEASE, hub, (conn,)).mapping(),
            nomkstream=True,
        )

    async def close_connection(self, hub: str, conn: str, reason: str | None) -> bool:
        gw = await self.redis.hget(self.schema.hub(hub).connection(conn), k.CONNECTION_GATEWAY)
        if not gw:
            return False
        await self.redis.xadd(
            self.schema.inbox(gw.decode() if isinstance(gw, bytes) else gw),
            ControlEntry(Op.CLOSE, hub, (conn,), reason=reason).mapping(),
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
            keys=[hk.user_groups(user), hk.group_connections(group), hk.user_connections(user)],
            args=[group, time.time()],
        )
        return bool(found)

    # ------------------------------------------------------------ gateway liveness

    async def reap_gateway(self, gateway: str) -> list[Reaped]:
        """Remove every connection a dead gateway held; returns those removed (for their
        disconnected events: nobody else will tell the services they are gone)."""
        removed: list[Reaped] = []
        hubs_key = self.schema.gateway_hubs(gateway)
        for raw_hub in await self.redis.smembers(hubs_key):
            hub = raw_hub.decode() if isinstance(raw_hub, bytes) else raw_hub
            hk = self.schema.hub(hub)
            for raw_conn in await self.redis.smembers(hk.gateway_connections(gateway)):
                conn = raw_conn.decode() if isinstance(raw_conn, bytes) else raw_conn
                user = await self.redis.hget(hk.connection(conn), k.CONNECTION_USER)
                if await self.unregister(hub, conn):
                    removed.append(Reaped(hub, conn, _text(user) if user else None))
            await self.redis.delete(hk.gateway_connections(gateway))
        await self.redis.delete(hubs_key, self.schema.inbox(gateway))
        await self.redis.zrem(self.schema.gateways, gateway)
        return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
