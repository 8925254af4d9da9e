"""Read-only questions about what Redis holds: who is connected, in which groups, which
gateways and workers are live, how far behind the publish partitions are.

The listing endpoints of the REST API and the admin console ask them; nothing here writes.
Every call made on a client's behalf is bounded: a page holds at most ``limit`` items
(:data:`MAX_LIMIT`), read with ``SSCAN``/``ZSCAN``/``SCAN`` and a fixed ``COUNT``, at most
:data:`MAX_CALLS` calls a page, so a group of a million members is never read at once.

Pages. A cursor is opaque to clients: base64url of ``<redis cursor>`` or ``<redis cursor>:
<last name>``. Redis answers a scan call with a batch of about ``COUNT`` members (a small
collection, stored compactly, comes whole in one batch); when a page fills up inside a batch,
the next page asks for the same batch again and keeps the members after the last one handed
out (each batch is sorted). What this promises is ``SCAN``'s promise: every member present
for the whole walk is listed; a member may be listed twice (Redis may repeat members across
batches when the collection is resized), and, rarely, one may be missed when Redis resizes a
large collection between the two pages a batch was split over. A page may hold fewer than
``limit`` items, even none, while ``next`` is not ``None``: keep asking until it is.

Hub-wide walks (a hub's groups, users and connections) ``SCAN`` the key space with a
``MATCH`` on the hub's keys: on a standalone server that walks every key of the database
(so pages of a small hub beside a big one are often empty). In Redis Cluster a hub's keys
share one slot, and the walk goes to the master that owns it; a cursor is then only good
while the slot stays on that master (a slot migration between pages restarts nothing: the
next page asks the new owner with a cursor that means nothing there, and may list members
again or skip some).

Counts (:meth:`Directory.counts`): a hub's connections are exact (each gateway's set of its
connections, one ``SCARD`` per gateway); its groups and users are counted by walking its
keys with a budget (:data:`COUNT_CALLS` calls), so past a large key space they are lower
bounds (``complete`` is false).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from hubbub.settings import Settings
from hubbub.wire import keys as k
from hubbub.wire.keys import KeySchema

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MEMBER_COUNT = 200  # COUNT of each SSCAN / ZSCAN: fixed, so a batch can be asked for again
KEY_COUNT = 1000  # COUNT of each SCAN of the key space (MATCH keeps few of them)
MAX_CALLS = 16  # Redis calls per page at most
COUNT_CALLS = 20  # SCAN calls one hub's counts may take
MAX_PREFIX_LENGTH = 256
MAX_CURSOR_LENGTH = 6000  # a Redis cursor and one name (1,024 characters, 4 bytes each)
MAX_GATEWAYS = 1000  # gateways and workers listed at most
MAX_HUBS = 100  # hubs the admin console lists at most

_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_GLOB = re.compile(r"([*?\[\]\\])")

T = TypeVar("T")


class InvalidCursor(ValueError):
    """A cursor no page of ours made (clients may send anything): the answer is a 400."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next: str | None  # None: the walk is over


@dataclass(frozen=True, slots=True)
class GroupCount:
    name: str
    connections: int


@dataclass(frozen=True, slots=True)
class UserGroup:
    name: str
    expires: float | None  # unix seconds; None: durable


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    id: str
    user: str | None
    gateway: str | None


@dataclass(frozen=True, slots=True)
class HubCounts:
    connections: int
    groups: int
    users: int
    complete: bool  # False: groups and users are lower bounds (the walk's budget ran out)


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    id: str
    heartbeat: float  # unix seconds of its last heartbeat
    live: bool  # its heartbeat has not expired
    connections: int | None  # None: it has not reported (an older version, or just started)
    draining: bool


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    worker: str | None  # the lease holder
    lag: int  # entries no worker has read yet
    pending: int  # read, not acknowledged


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    heartbeat: float
    live: bool
    partitions: list[int]


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis ``MATCH`` pattern (names may hold ``*?[]\\``)."""
    return _GLOB.sub(r"\\\1", text)


def encode_cursor(position: int, after: str | None = None) -> str:
    text = str(position) if after is None else f"{position}:{after}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[int, str | None]:
    """``(redis cursor, last name handed out or None)``; raises :class:`InvalidCursor`."""
    if cursor is None:
        return 0, None
    if not 0 < len(cursor) <= MAX_CURSOR_LENGTH or not _CURSOR_TEXT.fullmatch(cursor):
        raise InvalidCursor("cursor is not one this API gave")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("cursor is not one this API gave") from None
    position, sep, after = text.partition(":")
    if not position.isascii() or not position.isdigit() or len(position) > 20:
        raise InvalidCursor("cursor is not one this API gave")
    value = int(position)
    if value >= 2**64 or (sep and not after):
        raise InvalidCursor("cursor is not one this API gave")
    return value, after if sep else None


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1-{MAX_LIMIT}")
    return limit


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


Batch = Callable[[int], Awaitable[tuple[int, list[T]]]]


async def paginate(
    batch: Batch[T], name: Callable[[T], str], limit: int, cursor: str | None
) -> Page[T]:
    """One page of a scan: ``batch(position)`` makes one Redis call (the next position, 0 at
    the end, and what it found); ``name`` orders a batch and marks where a page stopped."""
    check_limit(limit)
    position, after = decode_cursor(cursor)
    items: list[T] = []
    seen: set[str] = set()
    for _ in range(MAX_CALLS):
        following, found = await batch(position)
        found.sort(key=name)
        if after is not None:
            found = [item for item in found if name(item) > after]
            after = None
        fresh = [item for item in found if name(item) not in seen]
        room = limit - len(items)
        if len(fresh) > room:
            items += fresh[:room]
            return Page(items, encode_cursor(position, name(items[-1])))
        items += fresh
        seen.update(name(item) for item in fresh)
        if following == 0:
            return Page(items, None)
        position = following
        if len(items) == limit:
            break
    return Page(items, encode_cursor(position))


def _scan_reply(reply: Any) -> tuple[int, list[Any]]:
    """``SCAN``'s answer; a cluster client answers ``({node: cursor}, keys)``."""
    position, found = reply
    if isinstance(position, dict):
        (position,) = position.values()
    return int(position), list(found)


async def partition_backlog(redis: Redis, stream: str, group: str) -> tuple[int, int]:
    """Lag (entries no consumer of ``group`` has read) and pending (read, not acknowledged)
    of one stream: what the workers' gauges report, and the admin console shows."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" not in str(exc):
            raise
        # No stream (yet): nothing published since Redis lost it; recovery makes it.
        return 0, 0
    for info in groups:
        if _text(info["name"]) == group:
            return int(info.get("lag") or 0), int(info["pending"])
    # A stream without the group (Redis came back empty, then a publish made the stream):
    # nothing of it was read yet, so all of it is lag.
    return int(await redis.xlen(stream)), 0


class Directory:
    """The questions, on one redis-py client (standalone, Sentinel or Cluster)."""

    def __init__(
        self,
        redis: Redis,
        schema: KeySchema,
        *,
        worker_group: str,
        partitions: int,
        gateway_lease: float,
        worker_lease: float,
    ) -> None:
        self.redis = redis
        self.schema = schema
        self.worker_group = worker_group
        self.partitions = partitions
        self.gateway_lease = gateway_lease
        self.worker_lease = worker_lease

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> Directory:
        return cls(
            redis,
            KeySchema(settings.key_prefix),
            worker_group=settings.worker_group,
            partitions=settings.publish_partitions,
            gateway_lease=settings.gateway_lease,
            worker_lease=settings.lease_ms / 1000,
        )

    # ------------------------------------------------------------ members of one key

    async def _members(self, key: str, limit: int, cursor: str | None, prefix: str) -> Page[str]:
        match = glob_escape(prefix) + "*"

        async def batch(position: int) -> tuple[int, list[str]]:
            following, found = await self.redis.sscan(key, position, match, MEMBER_COUNT)
            return int(following), [_text(m) for m in found]

        return await paginate(batch, str, limit, cursor)

    async def group_connections(
        self, hub: str, group: str, limit: int, cursor: str | None = None, prefix: str = ""
    ) -> Page[str]:
        """Ids of the group's connections."""
        return await self._members(self.schema.hub(hub).group_connections(group), limit, cursor,
                                   prefix)  # fmt: skip

    async def user_connections(
        self, hub: str, user: str, limit: int, cursor: str | None = None, prefix: str = ""
    ) -> Page[str]:
        """Ids of the user's live connections."""
        return await self._members(self.schema.hub(hub).user_connections(user), limit, cursor,
                                   prefix)  # fmt: skip

    async def user_groups(
        self, hub: str, user: str, limit: int, cursor: str | None = None, prefix: str = ""
    ) -> Page[UserGroup]:
        """The groups the user is bound to (``PUT /users/{user}/groups/{group}``: its current
        and future connections join them), with when each binding expires; expired ones left
        out. Groups one of its connections joined on its own are not bindings."""
        key = self.schema.hub(hub).user_groups(user)
        match = glob_escape(prefix) + "*"

        async def batch(position: int) -> tuple[int, list[UserGroup]]:
            following, found = await self.redis.zscan(key, position, match, MEMBER_COUNT)
            now = time.time()
            pairs = [(_text(m), float(s)) for m, s in cast(list[tuple[bytes, float]], found)]
            return int(following), [
                UserGroup(m, None if math.isinf(s) else s) for m, s in pairs if s >= now
            ]

        return await paginate(batch, lambda g: g.name, limit, cursor)

    # ------------------------------------------------------------ keys of one hub

    def _node(self, key: str) -> dict[str, Any]:
        """Where a hub-wide ``SCAN`` goes: in Redis Cluster, the master owning the hub's slot
        (``key`` is any key of the hub); elsewhere the one server."""
        if isinstance(self.redis, RedisCluster):
            return {"target_nodes": self.redis.get_node_from_key(key)}
        return {}

    async def _scan(
        self, pattern: str, position: int, node: dict[str, Any]
    ) -> tuple[int, list[str]]:
        command: Any = self.redis.execute_command  # untyped in redis-py
        reply = await command("SCAN", position, "MATCH", pattern, "COUNT", KEY_COUNT, **node)
        following, found = _scan_reply(reply)
        return following, [_text(key) for key in found]

    async def _names(self, family: str, limit: int, cursor: str | None, prefix: str) -> Page[str]:
        """Names of one per-hub key family (``family`` is its prefix, ``...:gc:``)."""
        pattern = glob_escape(family + prefix) + "*"
        node = self._node(family)
        cut = len(family)

        async def batch(position: int) -> tuple[int, list[str]]:
            following, found = await self._scan(pattern, position, node)
            return following, [key[cut:] for key in found]

        return await paginate(batch, str, limit, cursor)

    async def groups(
        self, hub: str, limit: int, cursor: str | None = None, prefix: str = ""
    ) -> Page[GroupCount]:
        """The hub's groups (those with a connection in them) and how many each has."""
        hk = self.schema.hub(hub)
        page = await self._names(hk.group_connections(""), limit, cursor, prefix)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in page.items:
                pipe.scard(hk.group_connections(name))
            sizes = await pipe.execute()
        items = [GroupCount(n, int(s)) for n, s in zip(page.items, sizes, strict=True) if s]
        return Page(items, page.next)

    async def users(
        self, hub: str, limit: int, cursor: str | None = None, prefix: str = ""
    ) -> Page[str]:
        """The hub's users with a live connection."""
        return await self._names(self.schema.hub(hub).user_connections(""), limit, cursor,
                                 prefix)  # fmt: skip

    async def connections(
        self, hub: str, limit: int, cursor: str | None = None, prefix: str = ""
    ) -> Page[ConnectionInfo]:
        """The hub's connections, with their user and gateway."""
        hk = self.schema.hub(hub)
        page = await self._names(hk.connection(""), limit, cursor, prefix)
        async with self.redis.pipeline(transaction=False) as pipe:
            for conn in page.items:
                pipe.hmget(hk.connection(conn), [k.CONNECTION_USER, k.CONNECTION_GATEWAY])
            found = await pipe.execute()
        items = [
            ConnectionInfo(conn, _text(user) if user else None, _text(gw))
            for conn, (user, gw) in zip(page.items, found, strict=True)
            if gw  # gone meanwhile
        ]
        return Page(items, page.next)

    async def counts(self, hub: str) -> HubCounts:
        """Connections (exact), groups and users (a budgeted walk) of one hub."""
        hk = self.schema.hub(hub)
        gateways = [g for g, _ in await self._scored(self.schema.gateways)]
        connections = await self._hub_connections(hub, gateways)
        groups_family, users_family = hk.group_connections(""), hk.user_connections("")
        pattern = glob_escape(hk.base) + ":*"
        node = self._node(hk.base)
        groups = users = 0
        position = 0
        for _ in range(COUNT_CALLS):
            position, found = await self._scan(pattern, position, node)
            groups += sum(1 for key in found if key.startswith(groups_family))
            users += sum(1 for key in found if key.startswith(users_family))
            if position == 0:
                return HubCounts(connections, groups, users, complete=True)
        return HubCounts(connections, groups, users, complete=False)

    async def _hub_connections(self, hub: str, gateways: list[str]) -> int:
        hk = self.schema.hub(hub)
        async with self.redis.pipeline(transaction=False) as pipe:
            for gateway in gateways:
                pipe.scard(hk.gateway_connections(gateway))
            return sum(int(n) for n in await pipe.execute())

    # ------------------------------------------------------------ the deployment

    async def _scored(self, key: str) -> list[tuple[str, float]]:
        found = await self.redis.zrange(key, 0, MAX_GATEWAYS - 1, withscores=True)
        return [
            (_text(name), float(score)) for name, score in cast(list[tuple[bytes, float]], found)
        ]

    async def gateways(self) -> list[GatewayInfo]:
        """Gateways with a heartbeat (live or not yet reaped), by id: their own report of
        their connections and whether they drain (renewed with each heartbeat)."""
        now = time.time()
        listed = sorted(await self._scored(self.schema.gateways))
        async with self.redis.pipeline(transaction=False) as pipe:
            for gateway, _ in listed:
                pipe.hmget(
                    self.schema.gateway_status(gateway),
                    [k.GATEWAY_STATUS_CONNECTIONS, k.GATEWAY_STATUS_DRAINING],
                )
            statuses = await pipe.execute()
        return [
            GatewayInfo(
                gateway,
                heartbeat=deadline - self.gateway_lease,
                live=deadline >= now,
                connections=int(n) if n is not None else None,
                draining=draining == b"1",
            )
            for (gateway, deadline), (n, draining) in zip(listed, statuses, strict=True)
        ]

    async def partition_list(self) -> list[PartitionInfo]:
        """Each publish partition: its lease holder, lag and pending."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in range(self.partitions):
                pipe.get(self.schema.partition_lease(n))
            holders = await pipe.execute()
        return [
            PartitionInfo(
                n,
                _text(holder) if holder else None,
                *await partition_backlog(
                    self.redis, self.schema.publish_partition(n), self.worker_group
                ),
            )
            for n, holder in enumerate(holders)
        ]

    async def workers(self, partitions: list[PartitionInfo]) -> list[WorkerInfo]:
        """Workers with a heartbeat, and the partitions each holds (from ``partitions``)."""
        now = time.time()
        held: dict[str, list[int]] = {}
        for p in partitions:
            if p.worker is not None:
                held.setdefault(p.worker, []).append(p.partition)
        return [
            WorkerInfo(name, deadline - self.worker_lease, deadline >= now, held.get(name, []))
            for name, deadline in await self._scored(self.schema.workers)
        ]

    async def hubs(self) -> tuple[list[str], bool]:
        """Hubs the gateways with a heartbeat hold connections of (at most :data:`MAX_HUBS`,
        sorted), and whether there were more."""
        found: set[str] = set()
        for gateway, _ in await self._scored(self.schema.gateways):
            position = 0
            for _ in range(MAX_CALLS):
                position, names = await self.redis.sscan(
                    self.schema.gateway_hubs(gateway), position, count=MEMBER_COUNT
                )
                found.update(_text(n) for n in names)
                if len(found) > MAX_HUBS:
                    return sorted(found)[:MAX_HUBS], True
                if not position:
                    break
            else:
                return sorted(found), True
        return sorted(found), False
