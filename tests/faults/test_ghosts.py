"""Membership in Redis converges to the truth (issue 10): ghosts of failed unregisters are
removed, and connections Redis lost are restored, within the documented bound."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess
from hubbub.redis.membership import Membership
from hubbub.sdk.client import HubbubClient
from hubbub.wire.keys import KeySchema
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token

pytestmark = pytest.mark.slow

CLIENTS = 200
INTERVAL = 3.0  # HUBBUB_RECONCILE_INTERVAL in these tests


async def test_ghosts_of_failed_unregisters_are_removed(
    aof_redis: RedisProcess, tmp_path: Path
) -> None:
    """Redis is down while 200 clients leave: every unregister fails. Once Redis is back
    (with its data: the connections are still there), each user is gone within the bound."""
    dep = Deployment(aof_redis.url, tmp_path, "ghost")
    try:
        gateway = await dep.start_gateway(HUBBUB_RECONCILE_INTERVAL=str(INTERVAL))
        clients = await asyncio.gather(
            *(RawClient.connect(gateway.url, token=client_token(f"u{n}")) for n in range(CLIENTS))
        )
        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            assert await api.user_exists("u0") and await api.user_exists(f"u{CLIENTS - 1}")
            assert aof_redis.process is not None
            aof_redis.process.send_signal(signal.SIGKILL)
            aof_redis.process.wait()
            aof_redis.process = None
            await asyncio.gather(*(c.close() for c in clients))

            async def unregisters_failed() -> bool:
                return gateway.output().count("could not unregister") >= CLIENTS

            await eventually(unregisters_failed, timeout=20)
            aof_redis.start()
            loop = asyncio.get_running_loop()
            back = loop.time()

            async def all_gone() -> bool:
                found = await asyncio.gather(*(api.user_exists(f"u{n}") for n in range(CLIENTS)))
                return not any(found)

            await eventually(all_gone, timeout=INTERVAL + 5, interval=0.2)
            took = loop.time() - back
        print(f"\n{CLIENTS} ghosts removed {took:.1f} s after Redis came back")
        assert "ghost connections removed" in gateway.output()
        assert "Traceback" not in gateway.output()
    finally:
        dep.stop()


async def test_connections_redis_lost_are_restored_with_their_groups(
    deployment: Deployment, redis: Redis, prefix: str
) -> None:
    gateway = await deployment.start_gateway(HUBBUB_RECONCILE_INTERVAL=str(INTERVAL))
    deployment.start_worker()
    client = await RawClient.connect(gateway.url, token=client_token("ana"))
    assert client.connection_id is not None
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        await api.add_connection_to_group("room", client.connection_id)
        # Redis loses the connection (as a restore from an older snapshot would).
        hk = KeySchema(prefix).hub("chat")
        membership = Membership(redis, KeySchema(prefix))
        assert await membership.unregister("chat", client.connection_id)
        # ... and the gateway's record of its hubs (which the reaper reads), which the gateway
        # writes once per hub, not per connection.
        hubs = KeySchema(prefix).gateway_hubs(f"{prefix}-gw1")
        assert await redis.delete(hubs) == 1
        assert not await api.user_exists("ana")

        async def restored() -> bool:
            return await api.connection_exists(client.connection_id or "")

        await eventually(restored, timeout=INTERVAL + 5, interval=0.2)
        assert await api.user_exists("ana")
        assert await redis.sismember(hk.group_connections("room"), client.connection_id)
        assert await redis.smembers(hubs) == {b"chat"}
        await api.send_to_group("room", "still-here", [1])
        message = await client.recv()
        assert message["target"] == "still-here", message
    assert "1 restored" in gateway.output()
    await client.close()
