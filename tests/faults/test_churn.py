"""Bounded resources: steady churn (connect, join, receive, leave, disconnect) ends with the
same keys and the same memory in Redis as it started with.

CI runs 25 s of churn; ``HUBBUB_CHURN_SECONDS=600`` runs the full 10 minutes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosedOK

from hubbub.sdk.client import KEEPALIVE_EXPIRY, HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token

SECONDS = float(os.environ.get("HUBBUB_CHURN_SECONDS", "25"))
RATE = 20  # connections opened (and closed) per second
LIFE_TIMEOUT = 30.0  # one life on a loaded machine takes well under a second

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SECONDS + 180)]

JOINER_ROLES = ["hubbub.joinLeaveGroup"]


async def footprint(redis: Redis, prefix: str) -> dict[bytes, int]:
    """Every key under the prefix with its ``MEMORY USAGE``."""
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    return {k: (await redis.memory_usage(k)) or 0 for k in keys}


async def streams_drained(redis: Redis, prefix: str) -> bool:
    """Every stream under the prefix is empty: partitions routed and trimmed, inboxes read
    and trimmed, the broadcast feed past its retention window."""
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000, _type="stream"):
        if await redis.xlen(key):
            return False
    return True


def answered_ok(answer: dict[str, Any], invocation_id: str) -> None:
    """A Completion with neither error nor result: the hub method succeeded."""
    assert answer == {"type": 3, "invocationId": invocation_id}, answer


async def close_reading(c: RawClient) -> None:
    """Close while reading on: a client that stops reading with frames queued (broadcasts
    of other lives) would never read the server's Close reply and hang in its close."""

    async def drain() -> None:
        try:
            while True:
                await c.ws.recv()
        except ConnectionClosedOK:
            return  # the closing handshake completed: the normal end

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(drain())
        await c.close()


async def live_on(c: RawClient) -> None:
    """A stable client: read everything and Ping every 5 s, as a real client does. Being
    closed, or any error, fails the test (the task group raises it)."""

    async def ping() -> None:
        while True:
            await asyncio.sleep(5)
            await c.send({"type": 6})

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(ping())
        while True:
            message = await c.recv(timeout=3600)
            assert message.get("type") != 7, f"stable client closed: {message}"


async def test_churn_leaves_no_trace(deployment: Deployment, redis: Redis, prefix: str) -> None:
    # The broadcast feed keeps a retention window (memory = window x broadcast rate, by
    # design); a short window lets this test compare like with like.
    deployment.extra_env["HUBBUB_BROADCAST_RETENTION_MS"] = "1000"
    gw1 = await deployment.start_gateway()
    gw2 = await deployment.start_gateway()
    deployment.start_worker()
    deployment.start_worker()
    used_start = (await redis.info("memory"))["used_memory"]
    async with (
        HubbubClient(gw1.url, ACCESS_KEY, "chat") as api,
        httpx.AsyncClient(limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)) as negotiate_http,
    ):
        # A steady population that stays through the churn.
        stable = [
            await RawClient.connect(gw.url, token=client_token(f"s{i}", JOINER_ROLES))
            for i, gw in enumerate([gw1, gw2] * 10)
        ]
        for i, c in enumerate(stable):
            answered_ok(await c.invoke("JoinGroup", f"g{i % 5}"), "1")
        warm = await RawClient.connect(gw2.url, token=client_token("warm"))
        await api.send_to_all("t", ["warm up"])
        assert (await warm.recv())["arguments"] == ["warm up"]
        await warm.close()

        async def settled() -> bool:
            return await streams_drained(redis, prefix)

        lives = 0
        latencies: list[float] = []

        async def one_life(i: int) -> None:
            """Connect, join two groups (one by invocation, one by REST) and a temporary one,
            receive this life's group, user and broadcast message, leave, disconnect."""
            started = time.monotonic()
            phases: list[tuple[str, float]] = []  # what a stuck life was doing, and since when

            def phase(name: str) -> None:
                phases.append((name, round(time.monotonic() - started, 2)))

            gw = random.choice([gw1, gw2])
            user = f"c{i % 50}"
            try:
                async with asyncio.timeout(LIFE_TIMEOUT):
                    phase("connect")
                    c = await RawClient.connect(
                        gw.url, token=client_token(user, JOINER_ROLES), http=negotiate_http
                    )
                    assert c.connection_id
                    phase("join")
                    answered_ok(await c.invoke("JoinGroup", f"g{i % 5}", invocation_id="1"), "1")
                    answered_ok(await c.invoke("JoinGroup", f"tmp{i}", invocation_id="2"), "2")
                    await api.add_connection_to_group(f"rest{i % 7}", c.connection_id)
                    phase("send")
                    await api.send_to_group(f"g{i % 5}", "group", [i])
                    await api.send_to_user(user, "user", [i])
                    await api.send_to_all("all", [i])
                    phase("receive")
                    waiting = {("group", i), ("user", i), ("all", i)}
                    while waiting:
                        message = await c.recv(timeout=LIFE_TIMEOUT)
                        assert message.get("type") != 7, f"life {i} closed: {message}"
                        if message.get("type") == 1:
                            waiting.discard((message["target"], message["arguments"][0]))
                    phase("leave")
                    answered_ok(await c.invoke("LeaveGroup", f"tmp{i}", invocation_id="3"), "3")
                    phase("close")
                    await close_reading(c)
            except TimeoutError as exc:
                raise AssertionError(f"life {i} on {gw.name} stuck; phases {phases}") from exc
            latencies.append(time.monotonic() - started)

        async with asyncio.TaskGroup() as background:
            readers = [background.create_task(live_on(c)) for c in stable]
            await eventually(settled, timeout=30)
            before = await footprint(redis, prefix)

            # Every life is a task of this group: the first failure cancels the rest and
            # is raised here.
            deadline = time.monotonic() + SECONDS
            async with asyncio.TaskGroup() as churn:
                while time.monotonic() < deadline:
                    churn.create_task(one_life(lives))
                    lives += 1
                    await asyncio.sleep(1 / RATE)
            churned = time.monotonic()

            async def same_keys_and_settled() -> bool:
                return set(await footprint(redis, prefix)) == set(before) and await settled()

            try:
                await eventually(same_keys_and_settled, timeout=30, interval=0.2)
            except AssertionError:
                after = await footprint(redis, prefix)
                raise AssertionError(
                    f"new: {sorted(set(after) - set(before))[:10]} "
                    f"gone: {sorted(set(before) - set(after))[:10]}"
                ) from None
            settle_seconds = time.monotonic() - churned
            after = await footprint(redis, prefix)
            for task in readers:  # a cancelled child is no failure of the group
                task.cancel()
        for c in stable:
            await c.close()

    used_end = (await redis.info("memory"))["used_memory"]
    bytes_before, bytes_after = sum(before.values()), sum(after.values())
    grown = {k: (before[k], v) for k, v in after.items() if v > before[k] + 4096}
    latencies.sort()
    print(
        f"\nchurn: {lives} lives in {SECONDS:.0f}s (each got its 3 messages; median "
        f"{latencies[len(latencies) // 2]:.2f}s, max {latencies[-1]:.2f}s); settled "
        f"{settle_seconds:.1f}s after; keys {len(before)} -> {len(after)}; MEMORY USAGE sum "
        f"{bytes_before} -> {bytes_after}; INFO used_memory {used_start} -> {used_end} "
        f"(whole server, shared with other tests)"
    )
    assert len(latencies) == lives
    # Streams trim in whole nodes and hashes/sets re-encode, so allow 64 KiB of slack
    # in total; unbounded growth at 20 lives/s would be far above it.
    assert abs(bytes_after - bytes_before) < 64 * 1024, grown
