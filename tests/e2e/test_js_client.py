"""The official @microsoft/signalr client (npm, under Node), unchanged, against two gateways
and two workers; every REST call goes to the gateway the client is *not* connected to."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from hubbub.sdk.client import HubbubClient
from hubbub.wire.keys import KeySchema
from tests.e2e.nodeclient import NodeClient, ensure_node_modules
from tests.support.processes import Deployment, eventually
from tests.support.proxy import Proxy
from tests.support.rawclient import client_token

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session", autouse=True)
def _js_installed() -> None:
    ensure_node_modules()


class JsClient(NodeClient):
    """The Node harness with the two calls these tests use most."""

    @classmethod
    async def open(cls, url: str, token: str, **options: bool) -> JsClient:
        client = cls()
        await client.start(url, token, **options)
        await client.wait_connected()
        return client

    async def message(self) -> list[object]:
        args: list[object] = (await self.next_event("message"))["args"]
        return args


@pytest.fixture
async def js() -> AsyncIterator[list[JsClient]]:
    clients: list[JsClient] = []
    yield clients
    for c in clients:
        await c.aclose()


async def test_js_client_receives_all_group_user_connection(
    cluster: Deployment, api: HubbubClient, js: list[JsClient]
) -> None:
    url = f"{cluster.gateways[1].url}/hubs/chat"
    alice = await JsClient.open(url, client_token("alice"))
    # Browser style: the token travels as access_token in the WebSocket URL.
    bob = await JsClient.open(url, client_token("bob"), query_token=True)
    # skipNegotiation: straight to the WebSocket (the client then has no connection id).
    skipper = await JsClient.open(url, client_token("sam"), skip_negotiation=True)
    js += [alice, bob, skipper]
    assert alice.connection_id and bob.connection_id

    await api.send_to_all("newMessage", ["hello", {"n": 1}])
    assert await alice.message() == ["hello", {"n": 1}]
    assert await bob.message() == ["hello", {"n": 1}]
    assert await skipper.message() == ["hello", {"n": 1}]

    await api.add_connection_to_group("room", alice.connection_id)
    await api.send_to_group("room", "newMessage", ["room only"])
    assert await alice.message() == ["room only"]

    await api.send_to_user("bob", "newMessage", ["for bob"])
    assert await bob.message() == ["for bob"]

    await api.send_to_connection(alice.connection_id, "newMessage", ["direct"])
    assert await alice.message() == ["direct"]

    # excluded, on a broadcast and on a group send
    await api.add_connection_to_group("room", bob.connection_id)
    await api.send_to_group("room", "newMessage", ["not bob"], excluded=[bob.connection_id])
    await api.send_to_all("newMessage", ["not alice"], excluded=[alice.connection_id])
    assert await alice.message() == ["not bob"]
    assert await bob.message() == ["not alice"]


async def test_js_user_in_group_before_connecting_and_invocations(
    cluster: Deployment, api: HubbubClient, js: list[JsClient]
) -> None:
    await api.add_user_to_group("early", "carol")
    carol = await JsClient.open(
        f"{cluster.gateways[1].url}/hubs/chat",
        client_token("carol", roles=["hubbub.joinLeaveGroup.late"]),
    )
    js.append(carol)
    await api.send_to_group("early", "newMessage", ["early bird"])
    assert await carol.message() == ["early bird"]

    assert await carol.invoke("JoinGroup", "late") is None
    await api.send_to_group("late", "newMessage", ["late joiner"])
    assert await carol.message() == ["late joiner"]
    with pytest.raises(RuntimeError, match="not permitted"):
        await carol.invoke("JoinGroup", "elsewhere")
    with pytest.raises(RuntimeError, match="does not exist"):
        await carol.invoke("SendToAll", "x")


async def test_js_stop_removes_connection_from_every_set(
    cluster: Deployment, api: HubbubClient, js: list[JsClient]
) -> None:
    dave = await JsClient.open(f"{cluster.gateways[1].url}/hubs/chat", client_token("dave"))
    assert dave.connection_id
    await api.add_connection_to_group("g", dave.connection_id)
    assert await api.group_exists("g") and await api.user_exists("dave")
    await dave.aclose()

    async def gone() -> bool:
        return not await api.connection_exists(dave.connection_id)  # type: ignore[arg-type]

    await eventually(gone)
    assert not await api.group_exists("g")
    assert not await api.user_exists("dave")


async def test_js_reconnects_to_other_gateway_after_drain(
    cluster: Deployment, api: HubbubClient, js: list[JsClient], redis: Redis, prefix: str
) -> None:
    """SIGTERM drains with Close(allowReconnect); the client, behind a load balancer,
    reconnects with a new connection id to the other gateway, where its user-bound group
    membership applies again."""
    proxy = await Proxy([gw.port for gw in cluster.gateways if gw.port]).start()
    try:
        await api.add_user_to_group("vip", "erin")
        erin = await JsClient.open(f"{proxy.url}/hubs/chat", client_token("erin"), reconnect=True)
        js.append(erin)
        hub = KeySchema(prefix).hub("chat")
        first_id = erin.connection_id
        assert first_id
        holder = (await redis.hget(hub.connection(first_id), "gw") or b"").decode()
        leaving = next(gw for gw in cluster.gateways if f"{prefix}-{gw.name}" == holder)
        staying = next(gw for gw in cluster.gateways if gw is not leaving)

        leaving.signal(signal.SIGTERM)
        assert (await erin.next_event("reconnecting", timeout=15))["error"] is None
        new_id = (await erin.next_event("reconnected", timeout=15))["connectionId"]
        assert new_id != first_id
        assert (await redis.hget(hub.connection(new_id), "gw") or b"").decode() == (
            f"{prefix}-{staying.name}"
        )
        assert await asyncio.to_thread(leaving.process.wait, 20) == 0
        await api.send_to_group("vip", "newMessage", ["after the switch"])
        assert await erin.message() == ["after the switch"]
        assert not await api.connection_exists(first_id)
    finally:
        await proxy.aclose()
