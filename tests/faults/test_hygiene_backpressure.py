"""Membership hygiene after a gateway dies, slow consumers, and Redis down at the REST edge."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess
from hubbub.sdk.client import HubbubClient
from hubbub.wire.keys import KeySchema
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RS, RawClient, client_token

pytestmark = pytest.mark.slow

JOINER = client_token(roles=["hubbub.joinLeaveGroup"])


async def connect_many(url: str, n: int, groups: int, users: int = 0) -> list[RawClient]:
    """n clients, client i in group i % groups (joined by invocation, over the socket) and,
    with ``users``, signed in as user ``u<i % users>``."""
    clients: list[RawClient] = []
    for start in range(0, n, 100):
        batch = await asyncio.gather(
            *(
                RawClient.connect(
                    url,
                    token=client_token(f"u{i % users}", ["hubbub.joinLeaveGroup"])
                    if users
                    else JOINER,
                    negotiate=False,
                )
                for i in range(start, min(n, start + 100))
            )
        )
        clients += batch
    answers = await asyncio.gather(
        *(c.invoke("JoinGroup", f"room{i % groups}") for i, c in enumerate(clients))
    )
    assert all("error" not in a for a in answers)
    return clients


# The test deployment's HUBBUB_GATEWAY_TTL, twice HUBBUB_REAP_INTERVAL (one pass to see the
# deadline expired, one to reap after the grace), plus 1 s for the work.
REAP_BOUND = 3 + 2 * 0.5 + 1.0


async def test_dead_gateway_is_reaped(deployment: Deployment, redis: Redis, prefix: str) -> None:
    """A SIGKILLed gateway's connections leave every set (its own, its groups', its users')
    within TTL + 2 reap intervals + 1 s; the other gateway's members stay."""
    survivor_gw = await deployment.start_gateway()
    doomed = await deployment.start_gateway()
    deployment.start_worker()
    deployment.start_worker()
    schema = KeySchema(prefix)
    hub = schema.hub("chat")
    async with HubbubClient(survivor_gw.url, ACCESS_KEY, "chat") as api:
        survivor = await RawClient.connect(
            survivor_gw.url, token=client_token("u0", ["hubbub.joinLeaveGroup"])
        )
        assert (await survivor.invoke("JoinGroup", "room0")) == {"type": 3, "invocationId": "1"}
        assert survivor.connection_id
        clients = await connect_many(doomed.url, 1000, 100, users=50)
        gw_id = f"{prefix}-{doomed.name}"
        survivor_id = f"{prefix}-{survivor_gw.name}".encode()
        assert await redis.scard(hub.gateway_connections(gw_id)) == 1000
        assert await redis.scard(hub.user_connections("u7")) == 20
        assert await api.group_exists("room99") and await api.user_exists("u7")
        # Every key the dead gateway's connections made that nobody else holds.
        doomed_keys = [hub.gateway_connections(gw_id), schema.inbox(gw_id)]
        doomed_keys += [hub.group_connections(f"room{g}") for g in range(1, 100)]
        doomed_keys += [hub.group_gateways(f"room{g}") for g in range(1, 100)]
        doomed_keys += [hub.user_connections(f"u{u}") for u in range(1, 50)]
        doomed_keys += [hub.user_gateways(f"u{u}") for u in range(1, 50)]
        assert await redis.exists(*doomed_keys) >= len(doomed_keys) - 1  # the inbox may be empty

        doomed.signal(signal.SIGKILL)
        killed_at = time.monotonic()

        async def reaped() -> bool:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.exists(*doomed_keys)
                pipe.zscore(schema.gateways, gw_id)
                pipe.smembers(hub.group_connections("room0"))
                pipe.smembers(hub.user_connections("u0"))
                left, deadline, room0, u0 = await pipe.execute()
            return (
                left == 0 and deadline is None and room0 == u0 == {survivor.connection_id.encode()}
            )

        await eventually(reaped, timeout=15, interval=0.05)
        reap_seconds = time.monotonic() - killed_at
        assert reap_seconds <= REAP_BOUND, f"reaped after {reap_seconds:.2f}s"
        for g in range(1, 100):
            assert not await api.group_exists(f"room{g}")
        for u in range(1, 50):
            assert not await api.user_exists(f"u{u}")
        # The other gateway's member is untouched, in its group and as its user.
        assert await api.group_exists("room0") and await api.user_exists("u0")
        assert await api.connection_exists(survivor.connection_id)
        assert await redis.hgetall(hub.group_gateways("room0")) == {survivor_id: b"1"}
        assert await redis.hgetall(hub.user_gateways("u0")) == {survivor_id: b"1"}
        leftovers = [
            k
            async for k in redis.scan_iter(match=f"{hub.base}:*")
            if not k.endswith(survivor.connection_id.encode())
            and not k.endswith(b":room0")
            and not k.endswith(b":u0")
            and b":gwc:" not in k
        ]
        assert leftovers == []
    print(
        f"\n1000 connections of 50 users in 100 groups reaped {reap_seconds:.2f}s after SIGKILL "
        f"(bound {REAP_BOUND}s: gateway TTL 3s, 2 x reap interval 0.5s, +1s)"
    )
    for c in clients:
        c.ws.transport.abort()


def _tiny_socket(port: int) -> socket.socket:
    """A client socket with a small receive buffer, so a client that stops reading is felt
    by the server quickly instead of after megabytes of kernel buffering."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    return s


async def test_slow_consumer_is_cut_off_and_others_keep_pace(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway(HUBBUB_SEND_BUFFER_MAX=str(256 * 1024))
    deployment.start_worker()
    token = client_token()
    # max_queue=1: the library stops reading the socket once one message waits unconsumed.
    slow_ws = await websockets.connect(
        f"ws://127.0.0.1:{gateway.port}/hubs/chat?access_token={token}",
        sock=_tiny_socket(gateway.port),
        max_queue=1,
        max_size=None,
    )
    await slow_ws.send('{"protocol":"json","version":1}\x1e')
    assert await slow_ws.recv() == "{}\x1e"
    fast = [await RawClient.connect(gateway.url) for _ in range(3)]
    latencies: list[float] = []

    async def read_fast(client: RawClient, n: int) -> None:
        for _ in range(n):
            message = await client.recv()
            latencies.append(time.time() - message["arguments"][1])

    # 600 x 20 KB = 12 MB to the slow client: more than the kernel's socket buffers can absorb
    # (with 6 MB, a run once saw them take it all, and the buffer bound never came into play).
    n = 600
    payload = "x" * 20_000
    readers = [asyncio.create_task(read_fast(c, n)) for c in fast]
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        for _ in range(n):
            await api.send_to_all("seq", [payload, time.time()])
        await asyncio.wait_for(asyncio.gather(*readers), 30)

        # The slow client was told why (once it reads again) or cut off.
        reasons = []
        try:
            while True:
                frame = await asyncio.wait_for(slow_ws.recv(), 15)
                reasons += [r for r in frame.split(RS.decode()) if '"type":7' in r]
        except websockets.ConnectionClosed:
            pass
        assert reasons and "Send buffer overflow" in reasons[-1]
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(
        f"\nslow consumer: fast clients got {len(latencies)} messages, p99 {p99 * 1000:.1f} ms; "
        f"slow one closed with: {reasons[-1][:80]}"
    )
    # 12 MB of fan-out on a 2-core machine shared with the test itself; a stalled client that
    # held the others up would push this to the close timeout (5 s) or beyond. (The bound was
    # 1 s: runs on a slower machine measured 0.8-1.1 s before and after this session's changes,
    # and 1.9 s with other tests running, so half the close timeout.)
    assert p99 < 2.5


@pytest.fixture(params=["aof", "volatile"])
async def own_redis(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[RedisProcess]:
    (tmp_path / "r").mkdir()
    server = RedisProcess(directory=str(tmp_path / "r"), appendonly=request.param == "aof")
    server.start()
    yield server
    server.stop()


async def test_redis_down_at_rest_edge(own_redis: RedisProcess, tmp_path: Path) -> None:
    """Publishing fails fast with 503 while Redis is down. When it returns with its data
    (AOF), sockets carry on; when it returns empty, the gateway finds itself unregistered and
    asks its clients to reconnect (Close with allowReconnect), which registers them again."""
    dep = Deployment(own_redis.url, tmp_path, "down")
    try:
        gateway = await dep.start_gateway()
        dep.start_worker()
        await dep.workers_seen()  # past its start-up check of Redis
        client = await RawClient.connect(gateway.url)
        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            own_redis.stop()
            started = time.monotonic()
            r = await api.http.post("/api/hubs/chat/:send", json={"target": "t"})
            elapsed = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "Error.Unavailable"
            assert elapsed < 2.0  # fails fast

            async def not_ready() -> bool:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{gateway.url}/api/health")).status_code == 503

            await eventually(not_ready)
            own_redis.start()

            async def ready() -> bool:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{gateway.url}/api/health")).status_code == 200

            await eventually(ready, timeout=15)
            if own_redis.appendonly:
                # The socket stayed open through the outage and receives again.
                await api.send_to_all("t", ["back"])
                assert (await client.recv())["arguments"] == ["back"]
            else:
                assert await client.recv() == {"type": 7, "allowReconnect": True}
                again = await RawClient.connect(gateway.url)
                await api.send_to_all("t", ["back"])
                assert (await again.recv())["arguments"] == ["back"]
    finally:
        dep.stop()
