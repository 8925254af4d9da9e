"""The fan-out worker's lease and recovery parts against a real redis-server, called step by
step from the test (no supervisor loop), so each rule is seen on its own: who holds which
partition after each refresh, and that pending entries are routed before new ones."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess
from hubbub.metrics import Metrics
from hubbub.redis.leases import Leases
from hubbub.redis.pipe import Pipe
from hubbub.settings import Settings
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.keys import KeySchema
from hubbub_fanout.consume import Consumer
from hubbub_fanout.recover import Recovery
from hubbub_fanout.route import Router
from tests.support.processes import eventually

PARTITIONS = 16
LEASE_MS = 1500  # long enough that a refresh round on a loaded machine never outlives it


@pytest.fixture
def settings(redis_server: RedisProcess, prefix: str) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        key_prefix=prefix,
        publish_partitions=PARTITIONS,
        lease_ms=LEASE_MS,
        lease_interval=0.1,
        read_block_ms=50,
        metrics_port=0,
    )


@pytest.fixture
async def pipe(settings: Settings) -> AsyncIterator[Pipe]:
    p = Pipe.from_url(settings.redis_url, "test-leases")
    yield p
    await p.aclose()


def leases(settings: Settings, redis: Redis, *names: str) -> list[Leases]:
    return [Leases(settings, redis=redis, name=n) for n in names]


async def holders(redis: Redis, schema: KeySchema) -> list[str | None]:
    """The name stored in each partition's lease key (None when free)."""
    values = [await redis.get(schema.partition_lease(n)) for n in range(PARTITIONS)]
    return [v.decode() if v is not None else None for v in values]


async def check_exclusive(redis: Redis, schema: KeySchema, workers: list[Leases]) -> None:
    """No partition is believed owned by two workers, and each owned one's key names its owner."""
    stored = await holders(redis, schema)
    for n in range(PARTITIONS):
        owners = [w.name for w in workers if n in w.owned]
        assert len(owners) <= 1, f"partition {n} owned by {owners}"
        if owners:
            assert stored[n] == owners[0], (n, stored[n], owners)


async def refresh_until_fair(redis: Redis, schema: KeySchema, workers: list[Leases]) -> int:
    """Refresh every worker in turn, checking exclusivity after each step, until every
    partition has exactly one owner and nobody exceeds ``ceil(16 / live)``. Returns rounds."""
    share = math.ceil(PARTITIONS / len(workers))
    rounds = 0

    async def fair() -> bool:
        nonlocal rounds
        rounds += 1
        for w in workers:
            await w.refresh()
            await check_exclusive(redis, schema, workers)
        owned = [n for w in workers for n in w.owned]
        return sorted(owned) == list(range(PARTITIONS)) and all(
            len(w.owned) <= share for w in workers
        )

    await eventually(fair, timeout=15)
    return rounds


async def test_acquire_renew_and_lose_to_another_holder(redis: Redis, settings: Settings) -> None:
    schema = KeySchema(settings.key_prefix)
    (a,) = leases(settings, redis, "a")
    acquired, lost = await a.refresh()
    assert acquired == set(range(PARTITIONS)) and lost == set()
    assert await holders(redis, schema) == ["a"] * PARTITIONS

    # Renewal: a lease about to expire is extended back to the full TTL.
    await redis.pexpire(schema.partition_lease(5), 100)
    assert await a.refresh() == (set(), set())
    assert await redis.pttl(schema.partition_lease(5)) > 100

    # Another holder took partition 3 (e.g. we stalled past our TTL): we let it go.
    await redis.set(schema.partition_lease(3), "intruder", px=LEASE_MS)
    acquired, lost = await a.refresh()
    assert lost == {3} and acquired == set()
    assert 3 not in a.owned
    assert (await holders(redis, schema))[3] == "intruder"


async def test_a_dead_workers_leases_expire_and_are_taken_over(
    redis: Redis, settings: Settings
) -> None:
    schema = KeySchema(settings.key_prefix)
    dead, heir = leases(settings, redis, "dead", "heir")
    await dead.refresh()
    assert len(dead.owned) == PARTITIONS
    assert await heir.refresh() == (set(), set())  # all held: nothing to take yet

    async def taken_over() -> bool:
        await heir.refresh()
        return len(heir.owned) == PARTITIONS  # "dead" left the live set too

    await eventually(taken_over, timeout=10)
    assert await holders(redis, schema) == ["heir"] * PARTITIONS


async def test_rebalance_one_three_two_workers(redis: Redis, settings: Settings) -> None:
    schema = KeySchema(settings.key_prefix)
    a, b, c = leases(settings, redis, "a", "b", "c")
    await refresh_until_fair(redis, schema, [a])
    assert len(a.owned) == 16

    rounds = await refresh_until_fair(redis, schema, [a, b, c])
    # ceil(16/3) = 6 each at most, so the third has at least 4: a newcomer gets work.
    assert max(len(w.owned) for w in (a, b, c)) == 6, rounds
    assert min(len(w.owned) for w in (a, b, c)) >= 4, rounds

    # c dies without a word: its leases and heartbeat expire, a and b share 8 and 8.
    c_had = set(c.owned)
    await refresh_until_fair(redis, schema, [a, b])
    assert len(a.owned) == len(b.owned) == 8
    assert c_had <= a.owned | b.owned
    assert await redis.zrange(schema.workers, 0, -1) == [b"a", b"b"]


async def test_release_all_hands_over_at_once(redis: Redis, settings: Settings) -> None:
    schema = KeySchema(settings.key_prefix)
    leaving, next_one = leases(settings, redis, "leaving", "next")
    await leaving.refresh()
    await leaving.release_all()
    assert leaving.owned == set()
    assert await holders(redis, schema) == [None] * PARTITIONS
    assert await redis.zscore(schema.workers, "leaving") is None
    # No waiting for expiry: the next worker takes everything on its first refresh.
    acquired, _ = await next_one.refresh()
    assert acquired == set(range(PARTITIONS))


def broadcast(n: int) -> dict[bytes, bytes]:
    flat = MessageEntry(Kind.ALL, "chat", "", b"frame-%d" % n).fields()
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def feed(redis: Redis, schema: KeySchema) -> list[bytes]:
    return [fields[b"f"] for _, fields in await redis.xrange(schema.broadcast_feed)]


async def test_recovery_routes_pending_entries_in_order_before_new_ones(
    redis: Redis, settings: Settings, pipe: Pipe
) -> None:
    settings = settings.model_copy(update={"lease_ms": 200})
    schema = KeySchema(settings.key_prefix)
    stream = schema.publish_partition(0)
    group = settings.worker_group
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    for n in (1, 2, 3):
        await redis.xadd(stream, broadcast(n))
    # A consumer that read these and died before acknowledging them.
    read = await redis.xreadgroup(group, "w-dead", {stream: ">"}, count=10)
    assert len(read[0][1]) == 3
    for n in (4, 5):
        await redis.xadd(stream, broadcast(n))

    router = Router(settings, pipe=pipe, metrics=Metrics())
    recovery = Recovery(settings, redis=redis, router=router, name="w-new")
    await recovery.recover(0)
    # Only the pending entries went out, in their order; the new ones wait for a read.
    assert await feed(redis, schema) == [b"frame-1", b"frame-2", b"frame-3"]
    assert (await redis.xpending(stream, group))["pending"] == 0

    consumer = Consumer(settings, pipe=pipe, router=router, name="w-new")
    await consumer.consume([0])
    assert await feed(redis, schema) == [b"frame-%d" % n for n in (1, 2, 3, 4, 5)]

    # Once idle for longer than a lease, the dead consumer's name is dropped from the group.
    async def forgotten() -> bool:
        await recovery.recover(0)
        names = {c["name"] for c in await redis.xinfo_consumers(stream, group)}
        return b"w-dead" not in names

    await eventually(forgotten, timeout=5)


async def test_recovery_creates_a_missing_group_from_the_streams_start(
    redis: Redis, settings: Settings, pipe: Pipe
) -> None:
    """Entries appended while no group existed (Redis lost it, or first start) are routed."""
    schema = KeySchema(settings.key_prefix)
    stream = schema.publish_partition(0)
    await redis.xadd(stream, broadcast(1))  # as the REST API does: no group needed
    router = Router(settings, pipe=pipe, metrics=Metrics())
    await Recovery(settings, redis=redis, router=router, name="w").recover(0)
    groups = await redis.xinfo_groups(stream)
    assert [g["name"] for g in groups] == [settings.worker_group.encode()]
    await Consumer(settings, pipe=pipe, router=router, name="w").consume([0])
    assert await feed(redis, schema) == [b"frame-1"]
