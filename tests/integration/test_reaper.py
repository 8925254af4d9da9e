"""The reaper against a real redis-server, called pass by pass with a clock the test moves, so
the rule is seen on its own: a gateway is reaped only after this worker has itself seen its
deadline expired for the grace. A deadline a failover sent back in time (the promoted replica
missed the last heartbeats) is exactly an expired deadline of a live gateway; the gateway's
next heartbeat, within the grace, must save it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess
from hubbub.redis.membership import Membership
from hubbub.redis.pipe import Pipe
from hubbub.settings import Settings
from hubbub.wire.keys import KeySchema
from hubbub_fanout.reap import Reaper


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(redis_server: RedisProcess, prefix: str) -> Settings:
    return Settings(redis_url=redis_server.url, key_prefix=prefix, metrics_port=0)


@pytest.fixture
async def pipe(settings: Settings) -> AsyncIterator[Pipe]:
    p = Pipe.from_url(settings.redis_url, "test-reaper")
    yield p
    await p.aclose()


async def _heartbeat(redis: Redis, schema: KeySchema, gateway: str, deadline: float) -> None:
    """What a gateway's heartbeat (or a failover's rollback of it) leaves in Redis."""
    await redis.zadd(schema.gateways, {gateway: deadline})


async def test_expired_deadline_is_reaped_only_after_the_grace(
    settings: Settings, redis: Redis, pipe: Pipe
) -> None:
    schema = KeySchema(settings.key_prefix)
    membership = Membership(redis, schema)
    clock = Clock()
    reaper = Reaper(settings, redis=redis, pipe=pipe, name="w1", clock=clock)
    assert reaper.grace == settings.gateway_ttl / 2 > settings.heartbeat_interval

    await membership.register("chat", "c-live", "gw-live", "u1")
    await membership.register("chat", "c-dead", "gw-dead", "u2")
    # Both deadlines in the past: a failover rolled gw-live's back; gw-dead stopped.
    await _heartbeat(redis, schema, "gw-live", time.time() - 1)
    await _heartbeat(redis, schema, "gw-dead", time.time() - 1)

    await reaper.reap()  # first sight of both: nothing reaped yet
    assert await redis.exists(schema.hub("chat").connection("c-live")) == 1
    assert await redis.exists(schema.hub("chat").connection("c-dead")) == 1
    assert set(reaper.expired_since) == {"gw-live", "gw-dead"}

    clock.now += settings.heartbeat_interval  # gw-live reaches the new primary and heartbeats
    await _heartbeat(redis, schema, "gw-live", time.time() + settings.gateway_lease)
    await reaper.reap()
    assert set(reaper.expired_since) == {"gw-dead"}

    clock.now += reaper.grace  # gw-dead stayed silent for the grace: reaped; gw-live kept
    await reaper.reap()
    assert await redis.exists(schema.hub("chat").connection("c-dead")) == 0
    assert await redis.zscore(schema.gateways, "gw-dead") is None
    assert await redis.exists(schema.hub("chat").connection("c-live")) == 1
    assert await redis.zscore(schema.gateways, "gw-live") is not None
    assert reaper.expired_since == {}


async def test_a_new_worker_does_not_reap_on_its_first_sight(
    settings: Settings, redis: Redis, pipe: Pipe
) -> None:
    """A worker just started (or thawed, or reconnected after a failover) has seen nothing
    expire yet: a deadline long past is still only its first sight."""
    schema = KeySchema(settings.key_prefix)
    await Membership(redis, schema).register("chat", "c1", "gw1", "u1")
    await _heartbeat(redis, schema, "gw1", time.time() - 3600)
    clock = Clock()
    reaper = Reaper(settings, redis=redis, pipe=pipe, name="w2", clock=clock)
    await reaper.reap()
    assert await redis.exists(schema.hub("chat").connection("c1")) == 1
    clock.now += reaper.grace - 0.001
    await reaper.reap()
    assert await redis.exists(schema.hub("chat").connection("c1")) == 1
    clock.now += 0.001
    await reaper.reap()
    assert await redis.exists(schema.hub("chat").connection("c1")) == 0


def test_heartbeat_must_fit_in_the_grace() -> None:
    with pytest.raises(ValueError, match="HEARTBEAT_INTERVAL"):
        Settings(heartbeat_interval=5, gateway_ttl=10)
    assert Settings(heartbeat_interval=2, gateway_ttl=10).gateway_grace == 5
