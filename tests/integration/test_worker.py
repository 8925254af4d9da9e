"""A fan-out worker's parts, run in this process against a real redis-server: pending
entries go out before new ones, leases are given back at the end, and a partition whose
stream Redis lost is routed (and measured) again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess
from hubbub.metrics import Metrics
from hubbub.redis.pipe import Pipe
from hubbub.settings import Settings
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.keys import KeySchema
from hubbub_fanout.gauges import Gauges
from hubbub_fanout.supervisor import Supervisor
from tests.support.processes import eventually

Start = Callable[[], Supervisor]


def as_map(flat: list[bytes]) -> dict[bytes, bytes]:
    """An entry's fields as redis-py's ``xadd`` takes them."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def broadcast(n: int) -> MessageEntry:
    return MessageEntry(Kind.ALL, "chat", "", b"frame-%d" % n)


async def feed_frames(redis: Redis, schema: KeySchema) -> list[bytes]:
    return [fields[b"f"] for _, fields in await redis.xrange(schema.broadcast_feed)]


@pytest.fixture
def settings(redis_server: RedisProcess, prefix: str) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        key_prefix=prefix,
        publish_partitions=1,  # every message in partition 0
        worker_name="w-new",
        lease_ms=2000,
        lease_interval=0.1,
        read_block_ms=100,
        metrics_port=0,
    )


@pytest.fixture
async def start(redis: Redis, settings: Settings) -> AsyncIterator[Start]:
    """Starts the supervisor as a task; stops it and waits for its end after the test."""
    pipe = Pipe.from_url(settings.redis_url, "test-worker")
    running: list[tuple[Supervisor, asyncio.Task[None]]] = []

    def start() -> Supervisor:
        worker = Supervisor(settings, redis=redis, pipe=pipe, metrics=Metrics())
        running.append((worker, asyncio.create_task(worker.run())))
        return worker

    yield start
    for worker, task in running:
        worker.stop()
        await asyncio.wait_for(task, 5)
    await pipe.aclose()


async def test_pending_entries_go_out_before_new_ones_and_leases_are_released(
    redis: Redis, settings: Settings, start: Start
) -> None:
    schema = KeySchema(settings.key_prefix)
    stream = schema.publish_partition(0)
    await redis.xgroup_create(stream, settings.worker_group, id="0", mkstream=True)
    for n in (1, 2, 3):
        await redis.xadd(stream, as_map(broadcast(n).fields()))
    # A worker that read these and died before acknowledging them.
    await redis.xreadgroup(settings.worker_group, "w-dead", {stream: ">"}, count=10)
    for n in (4, 5):
        await redis.xadd(stream, as_map(broadcast(n).fields()))

    worker = start()

    async def all_routed() -> list[bytes] | None:
        frames = await feed_frames(redis, schema)
        return frames if len(frames) >= 5 else None

    assert await eventually(all_routed) == [b"frame-%d" % n for n in (1, 2, 3, 4, 5)]
    assert await redis.get(schema.partition_lease(0)) == b"w-new"
    pending = await redis.xpending(stream, settings.worker_group)
    assert pending["pending"] == 0

    worker.stop()
    await eventually(lambda: _released(redis, schema))


async def _released(redis: Redis, schema: KeySchema) -> bool:
    return await redis.get(schema.partition_lease(0)) is None


async def test_a_partition_whose_stream_redis_lost_is_routed_again(
    redis: Redis, settings: Settings, start: Start
) -> None:
    """Redis back without its data (or the stream deleted): the consumer group is gone, and
    the worker must create it again rather than fail every read."""
    schema = KeySchema(settings.key_prefix)
    stream = schema.publish_partition(0)
    start()
    await eventually(lambda: _leased(redis, schema))
    await redis.xadd(stream, as_map(broadcast(1).fields()))
    await eventually(lambda: _feed_has(redis, schema, b"frame-1"))

    async for key in redis.scan_iter(match=f"{settings.key_prefix}:*"):
        await redis.delete(key)
    await redis.xadd(stream, as_map(broadcast(2).fields()))  # as the REST API does: no group
    await eventually(lambda: _feed_has(redis, schema, b"frame-2"))


async def _leased(redis: Redis, schema: KeySchema) -> bool:
    return await redis.get(schema.partition_lease(0)) is not None


async def _feed_has(redis: Redis, schema: KeySchema, frame: bytes) -> bool:
    return frame in await feed_frames(redis, schema)


async def test_gauges_report_owned_partitions_even_before_their_stream_exists(
    redis: Redis, settings: Settings
) -> None:
    settings = settings.model_copy(update={"publish_partitions": 3})
    metrics = Metrics()
    gauges = Gauges(settings, redis=redis, metrics=metrics)
    stream = KeySchema(settings.key_prefix).publish_partition(1)
    await redis.xgroup_create(stream, settings.worker_group, id="0", mkstream=True)
    await redis.xadd(stream, as_map(broadcast(1).fields()))
    await gauges.measure({0, 1, 2})  # 0 and 2 have no stream yet
    assert [metrics.stream_lag.labels(str(n))._value.get() for n in range(3)] == [0, 1, 0]
    await gauges.measure({1})
    assert {s.labels["partition"] for s in metrics.stream_lag.collect()[0].samples} == {"1"}
