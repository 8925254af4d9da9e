"""Stateful reconnect with the official JS client (``withStatefulReconnect()``), on any gateway.

The client sits behind a TCP proxy (the network). While 2,000 numbered messages flow to its
user and to a group it is in, its transport drops without a Close: the proxy resets it and
holds the network down for 3 s; the gateway holding it is SIGKILLed; or that gateway drains.
Each time the client re-attaches with its connection token, on the same gateway or the other
one, and must get every number once, in order per target, with its connection id unchanged.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from redis.asyncio import Redis

from hubbub.sdk.client import HubbubClient
from hubbub.wire.keys import KeySchema
from tests.e2e.nodeclient import NodeClient, ensure_node_modules
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.proxy import Proxy
from tests.support.rawclient import client_token

pytestmark = pytest.mark.e2e

PER_TARGET = 1000  # 2,000 messages: 1,000 to the user, 1,000 to its group
OUTAGE = 3.0


@pytest.fixture(scope="session", autouse=True)
def _js_installed() -> None:
    ensure_node_modules()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = Proxy([])
    await p.start()
    yield p
    await p.aclose()


async def _metric(url: str, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _stateful_client(
    proxy: Proxy, api: HubbubClient, user: str, msgpack: bool = False
) -> NodeClient:
    client = NodeClient()
    await client.start(f"{proxy.url}/hubs/chat", client_token(user), stateful=True, msgpack=msgpack)
    conn_id = await client.wait_connected()
    assert conn_id
    await api.add_connection_to_group("room", conn_id)
    return client


async def _flow(api: HubbubClient, user: str) -> None:
    """1,000 numbered messages to ``user`` and 1,000 to its group, interleaved."""
    for n in range(PER_TARGET):
        await api.send_to_user(user, "newMessage", ["user", n])
        await api.send_to_group("room", "newMessage", ["group", n])


async def _received(client: NodeClient, started: float) -> tuple[dict[str, list[int]], float]:
    """All 2,000 messages, by target (asserting nothing else happened to the connection),
    and the time the last one arrived."""
    got: dict[str, list[int]] = {"user": [], "group": []}
    for event in await client.messages(2 * PER_TARGET, timeout=60):
        kind, n = event["args"]
        got[kind].append(n)
    return got, time.monotonic() - started


def _assert_every_number_once_in_order(got: dict[str, list[int]]) -> None:
    for kind, numbers in got.items():
        missing = sorted(set(range(PER_TARGET)) - set(numbers))
        dupes = len(numbers) - len(set(numbers))
        assert numbers == list(range(PER_TARGET)), (kind, f"missing {missing[:20]}", dupes)


async def _holder(redis: Redis, prefix: str, conn_id: str) -> str:
    raw = await redis.hget(KeySchema(prefix).hub("chat").connection(conn_id), "gw")
    return (raw or b"").decode()


async def _until_received(client: NodeClient, n: int) -> None:
    """Until the client has shown ``n`` messages (without claiming them)."""

    async def enough() -> bool:
        return sum(1 for e in client._events if e.get("event") == "message") >= n

    await eventually(enough, timeout=30, interval=0.01)


async def _through_a_drop(
    client: NodeClient, api: HubbubClient, user: str, drop: Callable[[], Awaitable[None]]
) -> float:
    """The 2,000 messages flow; once 300 arrived, ``drop`` takes the transport away. Every
    number must arrive once and in order, on the same connection, with no close or reconnect
    seen by the client. Returns the seconds from the end of ``drop`` to the last message."""
    conn_id = client.connection_id
    assert conn_id
    started = time.monotonic()
    sender = asyncio.create_task(_flow(api, user))
    await _until_received(client, 300)
    await drop()
    dropped = time.monotonic()
    got, _ = await _received(client, started)
    after = time.monotonic() - dropped
    await sender
    _assert_every_number_once_in_order(got)
    state = await client.state()
    assert state["state"] == "Connected" and state["connectionId"] == conn_id
    assert not [e for e in client._events if e.get("event") in ("closed", "reconnecting")]
    return after


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "messagepack"])
async def test_network_outage_resumes_on_the_same_gateway(
    cluster: Deployment, api: HubbubClient, proxy: Proxy, redis: Redis, prefix: str, msgpack: bool
) -> None:
    gateway = cluster.gateways[1]
    proxy.backends = [gateway.port or 0]
    async with await _stateful_client(proxy, api, "ann", msgpack) as client:
        conn_id = client.connection_id
        assert conn_id
        resumed_after = await _through_a_drop(client, api, "ann", lambda: proxy.cut(OUTAGE))
        assert await _holder(redis, prefix, conn_id) == f"{prefix}-{gateway.name}"
        assert await _metric(gateway.url, 'hubbub_resumes_total{event="resumed"}') == 1
        replayed = await _metric(gateway.url, "hubbub_resumed_messages_total")
        assert replayed > 0
        print(f"resumed: {replayed:.0f} messages resent, all in {resumed_after:.2f} s after")


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "messagepack"])
async def test_gateway_killed_resumes_on_the_other_gateway(
    cluster: Deployment, api: HubbubClient, proxy: Proxy, redis: Redis, prefix: str, msgpack: bool
) -> None:
    first, other = cluster.gateways[1], cluster.gateways[0]
    proxy.backends = [first.port or 0]
    async with await _stateful_client(proxy, api, "bob", msgpack) as client:
        conn_id = client.connection_id
        assert conn_id

        async def kill() -> None:
            proxy.backends = [other.port or 0]
            first.signal(signal.SIGKILL)

        after_kill = await _through_a_drop(client, api, "bob", kill)
        assert await _holder(redis, prefix, conn_id) == f"{prefix}-{other.name}"
        assert await _metric(other.url, 'hubbub_resumes_total{event="adopted"}') == 1
        read_back = await _metric(other.url, "hubbub_resumed_messages_total")
        print(
            f"adopted after SIGKILL: {read_back:.0f} messages read back or resent; "
            f"all 2,000 in {after_kill:.2f} s after the kill"
        )
        # The user and group still reach it, through the new gateway.
        await api.send_to_group("room", "newMessage", ["group", PER_TARGET])
        assert (await client.next_event("message", timeout=10))["args"] == ["group", PER_TARGET]


async def test_drained_gateway_hands_its_clients_over(
    cluster: Deployment, proxy: Proxy, redis: Redis, prefix: str
) -> None:
    leaving, staying = cluster.gateways[1], cluster.gateways[0]
    proxy.backends = [leaving.port or 0]
    async with HubbubClient(staying.url, ACCESS_KEY, "chat") as api:
        async with await _stateful_client(proxy, api, "cyd") as client:
            conn_id = client.connection_id
            assert conn_id

            async def drain() -> None:
                proxy.backends = [staying.port or 0]
                leaving.signal(signal.SIGTERM)

            after = await _through_a_drop(client, api, "cyd", drain)
            print(f"handed over at drain: all 2,000 in {after:.2f} s after it")
            assert await asyncio.to_thread(leaving.process.wait, 20) == 0
            assert await _holder(redis, prefix, conn_id) == f"{prefix}-{staying.name}"
            assert await api.connection_exists(conn_id)


@pytest.fixture
async def tight(deployment: Deployment) -> Deployment:
    """A 2 s window and a 4 KiB buffer: past them, the client cannot resume."""
    for _ in range(2):
        await deployment.start_gateway(
            HUBBUB_RECONNECT_WINDOW="2", HUBBUB_RECONNECT_BUFFER_BYTES="4096"
        )
    deployment.start_worker()
    return deployment


async def _fresh_connection_works(tight: Deployment, api: HubbubClient, user: str) -> None:
    async with NodeClient() as fresh:
        await fresh.start(f"{tight.gateways[0].url}/hubs/chat", client_token(user), stateful=True)
        await fresh.wait_connected()
        await api.send_to_user(user, "newMessage", ["fresh", 0])
        assert (await fresh.next_event("message", timeout=10))["args"] == ["fresh", 0]


async def test_past_the_window_the_client_is_refused_and_a_new_connection_works(
    tight: Deployment, proxy: Proxy
) -> None:
    proxy.backends = [tight.gateways[1].port or 0]
    async with HubbubClient(tight.gateways[0].url, ACCESS_KEY, "chat") as api:
        async with await _stateful_client(proxy, api, "dee") as client:
            conn_id = client.connection_id
            assert conn_id
            await proxy.cut(4.0)  # longer than the 2 s window: its re-attach waits meanwhile
            closed = await client.next_event("closed", timeout=15)
            assert closed["error"], closed  # the re-attach was refused at the upgrade
            assert not await api.connection_exists(conn_id)
        await _fresh_connection_works(tight, api, "dee")


async def test_past_the_buffer_the_client_gets_the_documented_close(
    tight: Deployment, proxy: Proxy
) -> None:
    proxy.backends = [tight.gateways[1].port or 0]
    async with HubbubClient(tight.gateways[0].url, ACCESS_KEY, "chat") as api:
        async with await _stateful_client(proxy, api, "eve") as client:
            conn_id = client.connection_id
            assert conn_id
            # 10 KB at once: more than 4 KiB waits for the client's Ack (it acks once a second).
            await api.send_to_user("eve", "newMessage", ["big", "x" * 10_000])
            closed = await client.next_event("closed", timeout=15)
            assert "cannot resume" in (closed["error"] or ""), closed
            assert "HUBBUB_RECONNECT_BUFFER_BYTES" in closed["error"]
            assert not await api.connection_exists(conn_id)
        await _fresh_connection_works(tight, api, "eve")


async def test_a_frozen_gateway_that_wakes_up_does_not_disturb_the_new_holder(
    deployment: Deployment, proxy: Proxy, redis: Redis, prefix: str
) -> None:
    """The old holder is frozen (SIGSTOP) while the client re-attaches to the other gateway;
    when it wakes up it still has the connection, and messages routed to it before the move.
    Its appends to the connection's resume stream are refused (the fenced script; and the
    stream's ids, which the new holder is already past), it lets the connection go, and the
    new holder, which read those messages back from its inbox, delivers each once."""
    # A long gateway TTL: however slow the machine, the frozen gateway is not reaped meanwhile.
    # The first holder reads its inbox one entry at a time, so when it wakes up it journals
    # what was routed to it before the move, one read after the other, before it reads that it
    # was told to let go.
    other = await deployment.start_gateway(HUBBUB_GATEWAY_TTL="120")
    first = await deployment.start_gateway(HUBBUB_GATEWAY_TTL="120", HUBBUB_READ_BATCH="1")
    deployment.start_worker()
    deployment.start_worker()
    proxy.backends = [first.port or 0]
    async with (
        HubbubClient(other.url, ACCESS_KEY, "chat") as api,
        await _stateful_client(proxy, api, "fay") as client,
    ):
        conn_id = client.connection_id
        assert conn_id

        async def freeze_and_move() -> None:
            first.signal(signal.SIGSTOP)
            try:
                await proxy.cut(0.2, backends=[other.port or 0])

                async def adopted() -> bool:
                    return await _metric(other.url, 'hubbub_resumes_total{event="adopted"}') == 1

                await eventually(adopted, timeout=30)
            finally:
                first.signal(signal.SIGCONT)

        await _through_a_drop(client, api, "fay", freeze_and_move)
        assert await _holder(redis, prefix, conn_id) == f"{prefix}-{other.name}"

        async def let_go() -> bool:
            return await _metric(first.url, "hubbub_connections") == 0

        await eventually(let_go, timeout=20)
