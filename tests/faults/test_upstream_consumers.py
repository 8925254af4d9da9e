"""Upstream consumers as separate processes (:mod:`tests.support.upstream_service`): one
connection's invocations are handled in order under three consumers; a consumer SIGKILLed
mid-stream loses no invocation (its pending entries are reclaimed); and a blocking
invocation answered twice still gets exactly one Completion. The first two with a raw client
(exact records on the wire: one Completion per id) and with the official JS client."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess
from hubbub.dev.launcher import ChildProcess, start_process
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.pipe import Pipe
from hubbub.redis.upstream import UpstreamStream
from hubbub.settings import Settings
from hubbub.upstream import Call, Upstream
from hubbub.wire.envelopes import Event, UpstreamEntry
from hubbub.wire.keys import KeySchema
from tests.e2e.nodeclient import NodeClient, ensure_node_modules
from tests.support.processes import Deployment, eventually
from tests.support.rawclient import RawClient, client_token

PARTITIONS = 8  # the default HUBBUB_UPSTREAM_PARTITIONS


@pytest.fixture
def services(deployment: Deployment) -> Iterator[list[ChildProcess]]:
    started: list[ChildProcess] = []
    yield started
    for child in started:
        child.stop()


def start_service(
    deployment: Deployment, started: list[ChildProcess], delay: float = 0.0
) -> ChildProcess:
    name = f"service{len(started) + 1}"
    env = deployment.environment(HANDLER_DELAY=str(delay), SERVICE_NAME="recorder")
    assert deployment.workdir is not None
    child = start_process(
        name,
        [sys.executable, "-m", "tests.support.upstream_service"],
        env=env,
        log=deployment.workdir / f"{name}.log",
    )
    started.append(child)
    return child


async def settled(redis: Redis, prefix: str, consumers: int) -> None:
    """Every upstream partition has its consumer, shared out evenly among ``consumers``."""
    schema = KeySchema(prefix)
    share = -(-PARTITIONS // consumers)

    async def even() -> bool:
        holders = await redis.mget(
            [schema.upstream_lease("recorder", n) for n in range(PARTITIONS)]
        )
        if None in holders or len(set(holders)) != consumers:
            return False
        return all(holders.count(h) <= share for h in set(holders))

    await eventually(even, timeout=20)


@pytest.fixture
async def clients() -> AsyncIterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for client in opened:
        await client.close()


async def seen(redis: Redis, prefix: str, conn: str | None) -> list[int]:
    return [int(n) for n in await redis.lrange(f"{prefix}:seen:{conn}", 0, -1)]


async def test_one_connections_invocations_stay_in_order_under_three_consumers(
    deployment: Deployment,
    redis: Redis,
    services: list[ChildProcess],
    clients: list[RawClient],
) -> None:
    gateway = await deployment.start_gateway()
    for _ in range(3):
        start_service(deployment, services, delay=0.003)  # handlers of varying length
    await settled(redis, deployment.prefix, 3)
    for n in range(6):
        clients.append(await RawClient.connect(gateway.url, token=client_token(f"u{n}")))
    await deployment.upstream_services_seen(1)
    count = 300
    for client in clients:  # non-blocking invocations, sent as fast as the socket takes them
        for i in range(count):
            await client.send({"type": 1, "target": "record", "arguments": [i]})

    async def all_handled() -> bool:
        lists = [await seen(redis, deployment.prefix, c.connection_id) for c in clients]
        return all(len(got) >= count for got in lists)

    await eventually(all_handled, timeout=30)
    for client in clients:
        assert await seen(redis, deployment.prefix, client.connection_id) == list(range(count))


async def test_sigkilled_consumer_loses_no_invocation(
    deployment: Deployment,
    redis: Redis,
    services: list[ChildProcess],
    clients: list[RawClient],
) -> None:
    deployment.extra_env["HUBBUB_INVOCATION_TIMEOUT"] = "20"
    gateway = await deployment.start_gateway()
    deployment.start_worker()
    victim = start_service(deployment, services, delay=0.05)
    start_service(deployment, services, delay=0.05)
    await settled(redis, deployment.prefix, 2)
    for n in range(8):
        clients.append(await RawClient.connect(gateway.url, token=client_token(f"k{n}")))
    await deployment.upstream_services_seen(1)
    count = 40
    for client in clients:  # every call in flight at once: many are in hand at the kill
        for i in range(count):
            await client.send(
                {"type": 1, "invocationId": str(i), "target": "record", "arguments": [i]}
            )

    answers: dict[int, dict[str, list[Any]]] = {n: {} for n in range(len(clients))}
    answered = asyncio.Event()
    total = len(clients) * count

    async def collect(n: int, client: RawClient) -> None:
        while sum(len(a) for a in answers.values()) < total or not answered.is_set():
            message = await client.recv(timeout=30)
            if message.get("type") == 3:
                answers[n].setdefault(message["invocationId"], []).append(message)
                if sum(len(a) for a in answers.values()) >= total // 4:
                    answered.set()
            if len(answers[n]) == count:
                return

    readers = [asyncio.create_task(collect(n, c)) for n, c in enumerate(clients)]
    await asyncio.wait_for(answered.wait(), 30)
    victim.kill()  # SIGKILL, with a quarter answered and the rest pending or unread
    await asyncio.wait_for(asyncio.gather(*readers), 60)

    for n, client in enumerate(clients):
        for i in range(count):
            got = answers[n][str(i)]
            assert len(got) == 1, got
            assert got[0].get("result") == i, got[0]
        # Handled at least once each (a call in hand at the kill is handled again).
        assert set(await seen(redis, deployment.prefix, client.connection_id)) == set(range(count))
    # No second Completion arrives later either: a marker call's answer comes after any
    # (the connection's entries are handled in order, answers routed in order).
    for client in clients:
        assert await completions_before_marker(client) == []


async def completions_before_marker(client: RawClient) -> list[dict[str, Any]]:
    """Invoke ``record(-1)`` and return the other Completions that arrive before its own."""
    await client.send({"type": 1, "invocationId": "marker", "target": "record", "arguments": [-1]})
    others: list[dict[str, Any]] = []
    while True:
        message = await client.recv(timeout=20)
        if message.get("type") != 3:
            continue
        if message["invocationId"] == "marker":
            assert message.get("result") == -1, message
            return others
        others.append(message)


async def late_completions(url: str) -> int:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    found = re.search(r'^hubbub_drops_total\{reason="late_completion"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


async def test_a_call_answered_twice_gets_one_completion(
    deployment: Deployment, redis: Redis, clients: list[RawClient]
) -> None:
    """Two services both answer ``record`` (as one service does after a crash between its
    answer and its acknowledgement): the gateway delivers the first answer, drops the rest."""
    gateway = await deployment.start_gateway()
    deployment.start_worker()
    apps = []
    for name in ("first", "second"):
        app = Upstream(deployment.service_settings(), name=name, consumer_name=f"{name}-1")

        @app.hub("chat").on("record")
        async def record(call: Call, value: int) -> int:
            return value

        apps.append(app)
    async with apps[0], apps[1]:
        client = await RawClient.connect(gateway.url, token=client_token("twice"))
        clients.append(client)
        await deployment.upstream_services_seen(2)
        for i in range(20):
            await client.send(
                {"type": 1, "invocationId": str(i), "target": "record", "arguments": [i]}
            )
        completions: list[dict[str, Any]] = []
        while len(completions) < 20:
            message = await client.recv()
            if message.get("type") == 3:
                completions.append(message)
        assert sorted(int(m["invocationId"]) for m in completions) == list(range(20))
        assert all(m["result"] == int(m["invocationId"]) for m in completions)
        # Every second answer reached the gateway and was dropped there ...
        await eventually(lambda: _at_least(late_completions(gateway.url), 20), timeout=10)
        # ... and none reached the client: the marker's answers come after all of them.
        assert await completions_before_marker(client) == []

        # Both services are done with every entry: their consumers trim the streams empty.
        async def trimmed() -> bool:
            keys = [KeySchema(deployment.prefix).upstream_partition(n) for n in range(PARTITIONS)]
            return sum([await redis.xlen(key) for key in keys]) == 0

        await eventually(trimmed, timeout=10)
        for app in apps:
            app.stop()


async def _at_least(count: Any, n: int) -> bool:
    return int(await count) >= n


# ---------------------------------------------------------------- the official JS client


@pytest.fixture(scope="module")
def _js_installed() -> None:
    ensure_node_modules()


@pytest.fixture
async def js(_js_installed: None) -> AsyncIterator[list[NodeClient]]:
    opened: list[NodeClient] = []
    yield opened
    for client in opened:
        await client.aclose()


async def open_js(url: str, user: str) -> NodeClient:
    client = NodeClient()
    await client.start(f"{url}/hubs/chat", client_token(user))
    await client.wait_connected()
    return client


async def test_js_clients_sends_arrive_in_order_under_three_consumers(
    deployment: Deployment, redis: Redis, services: list[ChildProcess], js: list[NodeClient]
) -> None:
    gateway = await deployment.start_gateway()
    for _ in range(3):
        start_service(deployment, services, delay=0.003)
    await settled(redis, deployment.prefix, 3)
    for n in range(3):
        js.append(await open_js(gateway.url, f"js{n}"))
    await deployment.upstream_services_seen(1)
    count = 150

    async def send_all(client: NodeClient) -> None:
        for i in range(count):
            await client.send("record", i)

    await asyncio.gather(*(send_all(c) for c in js))

    async def all_handled() -> bool:
        lists = [await seen(redis, deployment.prefix, c.connection_id) for c in js]
        return all(len(got) >= count for got in lists)

    await eventually(all_handled, timeout=30)
    for client in js:
        assert await seen(redis, deployment.prefix, client.connection_id) == list(range(count))


async def test_js_clients_invocations_survive_a_sigkilled_consumer(
    deployment: Deployment, redis: Redis, services: list[ChildProcess], js: list[NodeClient]
) -> None:
    deployment.extra_env["HUBBUB_INVOCATION_TIMEOUT"] = "20"
    gateway = await deployment.start_gateway()
    deployment.start_worker()
    victim = start_service(deployment, services, delay=0.05)
    start_service(deployment, services, delay=0.05)
    await settled(redis, deployment.prefix, 2)
    for n in range(4):
        js.append(await open_js(gateway.url, f"jk{n}"))
    await deployment.upstream_services_seen(1)
    count = 30
    total = len(js) * count
    done = 0
    quarter = asyncio.Event()

    async def call(client: NodeClient, i: int) -> Any:
        nonlocal done
        result = await client.invoke("record", i, timeout=30)
        done += 1
        if done >= total // 4:
            quarter.set()
        return result

    calls = [asyncio.ensure_future(call(c, i)) for c in js for i in range(count)]
    await asyncio.wait_for(quarter.wait(), 30)
    victim.kill()  # SIGKILL with a quarter answered: the rest in hand, pending or unread
    results = await asyncio.wait_for(asyncio.gather(*calls), 60)
    assert results == [i for _ in js for i in range(count)]  # each invoke() its own value
    for client in js:
        assert set(await seen(redis, deployment.prefix, client.connection_id)) == set(range(count))


async def test_a_redis_error_does_not_make_a_consumer_handle_what_it_holds_twice(
    volatile_redis: RedisProcess,
) -> None:
    """After a Redis error a consumer reclaims its own pending entries (a read batch may have
    been lost); those it is still handling must not be queued and handled again."""
    settings = Settings(
        redis_url=volatile_redis.url,
        key_prefix="blip",
        lease_ms=2000,
        lease_interval=0.25,
        redis_timeout=0.5,
        upstream_partitions=1,
    )
    app = Upstream(settings, name="blip")
    handled: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    @app.hub("chat").on("slow")
    async def slow(call: Call, tag: str) -> str:
        handled.append(tag)
        started.set()
        await release.wait()
        return tag

    reclaimed = asyncio.Event()

    class Reclaims(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "pending entries" in record.getMessage():
                reclaimed.set()

    watcher = Reclaims()
    upstream_log = logging.getLogger("hubbub.upstream")
    level = upstream_log.level
    upstream_log.setLevel(logging.INFO)
    upstream_log.addHandler(watcher)
    admin = Redis.from_url(volatile_redis.url)
    pipe = Pipe(RedisEndpoint.from_settings(settings, "blip-writer"))
    try:
        async with app:
            stream = UpstreamStream(pipe, KeySchema("blip"), 1, 1000)
            await stream.append(
                UpstreamEntry(
                    Event.INVOCATION,
                    "chat",
                    "conn-a",
                    "gw",
                    "al",
                    target="slow",
                    arguments=b'["one"]',
                )
            )
            await asyncio.wait_for(started.wait(), 10)
            assert volatile_redis.process is not None
            volatile_redis.process.send_signal(signal.SIGSTOP)  # the consumer's calls time out
            try:
                errors = app.metrics.redis_errors.labels("upstream")

                async def failed() -> bool:
                    return bool(errors._value.get() > 0)

                await eventually(failed, timeout=10)
            finally:
                volatile_redis.process.send_signal(signal.SIGCONT)
            consumer = app._consumer
            assert consumer is not None
            await asyncio.wait_for(reclaimed.wait(), 10)  # its own pending entry, claimed again
            release.set()
            key = KeySchema("blip").upstream_partition(0)

            async def settled() -> bool:
                pending = (await admin.xpending(key, "blip"))["pending"]
                return pending == 0 and consumer.in_hand == 0

            await eventually(settled, timeout=10)
            assert handled == ["one"]
            app.stop()
    finally:
        upstream_log.removeHandler(watcher)
        upstream_log.setLevel(level)
        await pipe.aclose()
        await admin.aclose()
