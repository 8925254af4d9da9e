"""Bounded resources: steady churn (connect, join, publish, leave, disconnect) ends with the
same keys and the same memory in Redis as it started with.

CI runs 60 s of churn; ``HUBBUB_CHURN_SECONDS=600`` runs the full 10 minutes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest
from redis.asyncio import Redis

from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token

SECONDS = float(os.environ.get("HUBBUB_CHURN_SECONDS", "60"))
RATE = 20  # connections opened (and closed) per second

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SECONDS + 120)]


async def footprint(redis: Redis, prefix: str) -> tuple[int, int, dict[bytes, int]]:
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    sizes = {k: (await redis.memory_usage(k)) or 0 for k in keys}
    return len(keys), sum(sizes.values()), sizes


async def test_churn_leaves_no_trace(deployment: Deployment, redis: Redis, prefix: str) -> None:
    # The broadcast feed keeps a retention window (memory = window x broadcast rate, by
    # design); a short window lets this test compare like with like.
    deployment.extra_env["HUBBUB_BROADCAST_RETENTION_MS"] = "1000"
    gw1 = await deployment.start_gateway()
    gw2 = await deployment.start_gateway()
    deployment.start_worker()
    deployment.start_worker()
    async with HubbubClient(gw1.url, ACCESS_KEY, "chat") as api:
        # A steady population that stays through the churn.
        stable = [
            await RawClient.connect(gw.url, token=client_token(f"s{i}", ["hubbub.joinLeaveGroup"]))
            for i, gw in enumerate([gw1, gw2] * 10)
        ]
        for i, c in enumerate(stable):
            await c.invoke("JoinGroup", f"g{i % 5}")

        async def live_on(c: RawClient) -> None:
            """Read what arrives and Ping now and then, as a real client does."""

            async def ping() -> None:
                while True:
                    await c.send({"type": 6})
                    await asyncio.sleep(5)

            pinger = asyncio.create_task(ping())
            try:
                while True:
                    await c.recv(timeout=3600)
            finally:
                pinger.cancel()

        background = [asyncio.create_task(live_on(c)) for c in stable]
        await api.send_to_group("g0", "t", ["warm up"])
        await api.send_to_all("t", ["warm up"])

        async def settled() -> bool:
            await asyncio.sleep(2.5)  # let the retention window and a trim round pass
            return True

        await settled()
        keys_before, bytes_before, sizes_before = await footprint(redis, prefix)

        async def one_life(i: int) -> None:
            gw = random.choice([gw1, gw2])
            c = await RawClient.connect(
                gw.url, token=client_token(f"c{i % 50}", ["hubbub.joinLeaveGroup"])
            )
            await c.invoke("JoinGroup", f"g{i % 5}", invocation_id="1")
            await c.invoke("JoinGroup", f"tmp{i}", invocation_id="2")
            assert c.connection_id
            await api.add_connection_to_group(f"rest{i % 7}", c.connection_id)
            await api.send_to_group(f"g{i % 5}", "t", [i])
            await api.send_to_user(f"c{i % 50}", "t", [i])
            await api.send_to_all("t", [i])
            await c.invoke("LeaveGroup", f"tmp{i}", invocation_id="3")
            await c.close()

        lives = 0
        tasks: set[asyncio.Task[None]] = set()
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            task = asyncio.create_task(one_life(lives))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            lives += 1
            await asyncio.sleep(1 / RATE)
        await asyncio.gather(*tasks)

        async def same_keys() -> bool:
            return (await footprint(redis, prefix))[0] == keys_before

        try:
            await eventually(same_keys, timeout=15)
        except AssertionError:
            pass  # the comparison below says which keys differ
        await settled()
        keys_after, bytes_after, sizes_after = await footprint(redis, prefix)
        assert set(sizes_after) == set(sizes_before), (
            f"new: {sorted(set(sizes_after) - set(sizes_before))[:10]} "
            f"gone: {sorted(set(sizes_before) - set(sizes_after))[:10]}"
        )
        grown = {
            k: (sizes_before.get(k, 0), v)
            for k, v in sizes_after.items()
            if v > sizes_before.get(k, 0) + 4096
        }
        print(
            f"\nchurn: {lives} connection lives in {SECONDS:.0f}s; keys {keys_before} -> "
            f"{keys_after}; bytes {bytes_before} -> {bytes_after}"
        )
        assert keys_after == keys_before
        # Streams trim in whole nodes and hashes/sets re-encode, so allow 64 KiB of slack
        # in total; unbounded growth at 20 lives/s would be far above it.
        assert abs(bytes_after - bytes_before) < 64 * 1024, grown
        for task in background:
            task.cancel()
        for c in stable:
            await c.close()
