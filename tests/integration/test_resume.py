"""Stateful reconnect on the wire, with a bare client that reads exactly what the server wrote:
negotiation, sequence numbers, Acks both ways, resends without duplicates, and the limits
(the window, the buffer) refused at the upgrade with why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import client_token

RS = b"\x1e"


class Stateful:
    """A client that negotiated stateful reconnect: JSON protocol version 2."""

    def __init__(self, base: str, token: str, connection_id: str, connection_token: str) -> None:
        self.base = base
        self.token = token
        self.connection_id = connection_id
        self.connection_token = connection_token
        self.ws: ClientConnection | None = None
        self.pending: list[dict[str, Any]] = []

    @classmethod
    async def negotiate(cls, base: str, user: str) -> Stateful:
        token = client_token(user)
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{base}/hubs/chat/negotiate?negotiateVersion=1&useStatefulReconnect=true",
                headers={"Authorization": f"Bearer {token}"},
            )
        body = r.json()
        assert r.status_code == 200 and body["useStatefulReconnect"] is True, body
        return cls(base, token, body["connectionId"], body["connectionToken"])

    async def open(self, handshake: bool = True) -> None:
        url = self.base.replace("http://", "ws://") + (
            f"/hubs/chat?id={self.connection_token}&access_token={self.token}"
        )
        self.ws = await websockets.connect(url, max_size=None, ping_interval=None)
        self.pending = []
        if handshake:
            await self.send_raw(b'{"protocol":"json","version":2}' + RS)
            assert await self.recv() == {}

    async def send_raw(self, data: bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data.decode())

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(orjson.dumps(message) + RS)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next record, skipping Pings."""
        assert self.ws is not None
        while True:
            if not self.pending:
                frame = await asyncio.wait_for(self.ws.recv(), timeout)
                data = frame.encode() if isinstance(frame, str) else frame
                self.pending = [orjson.loads(r) for r in data.split(RS) if r]
            message = self.pending.pop(0)
            if message.get("type") != 6:
                return message

    def drop(self) -> None:
        """The transport goes away without a Close (a reset)."""
        assert self.ws is not None
        self.ws.transport.abort()


@pytest.fixture
async def gateway(deployment: Deployment) -> AsyncIterator[Deployment]:
    await deployment.start_gateway(
        HUBBUB_RECONNECT_WINDOW="2", HUBBUB_RECONNECT_BUFFER_BYTES="4096"
    )
    deployment.start_worker()
    yield deployment


async def _numbers(client: Stateful, n: int) -> list[int]:
    got = []
    for _ in range(n):
        message = await client.recv()
        assert message["type"] == 1 and message["target"] == "m", message
        got.append(message["arguments"][0])
    return got


async def _gone(api: HubbubClient, conn_id: str) -> None:
    async def gone() -> bool:
        return not await api.connection_exists(conn_id)

    await eventually(gone, timeout=10)


async def test_negotiate_offers_stateful_reconnect_only_when_asked(gateway: Deployment) -> None:
    base = gateway.gateways[0].url
    headers = {"Authorization": f"Bearer {client_token('u')}"}
    async with httpx.AsyncClient() as http:
        plain = (
            await http.post(f"{base}/hubs/chat/negotiate?negotiateVersion=1", headers=headers)
        ).json()
        asked = (
            await http.post(
                f"{base}/hubs/chat/negotiate?negotiateVersion=1&useStatefulReconnect=true",
                headers=headers,
            )
        ).json()
    assert "useStatefulReconnect" not in plain
    assert asked["useStatefulReconnect"] is True
    # The mark is inside the signed token: the plain one cannot be turned into a resumable one.
    assert asked["connectionToken"].split(".")[1].endswith("r")
    assert not plain["connectionToken"].split(".")[1].endswith("r")


async def test_negotiate_does_not_offer_it_when_turned_off(deployment: Deployment) -> None:
    gw = await deployment.start_gateway(HUBBUB_RECONNECT_WINDOW="0")
    async with httpx.AsyncClient() as http:
        body = (
            await http.post(
                f"{gw.url}/hubs/chat/negotiate?negotiateVersion=1&useStatefulReconnect=true",
                headers={"Authorization": f"Bearer {client_token('u')}"},
            )
        ).json()
    assert "useStatefulReconnect" not in body


async def test_reattach_resends_what_was_not_acknowledged_once_in_order(
    gateway: Deployment,
) -> None:
    base = gateway.gateways[0].url
    client = await Stateful.negotiate(base, "ann")
    await client.open()
    async with HubbubClient(base, ACCESS_KEY, "chat") as api:
        for n in range(1, 6):
            await api.send_to_user("ann", "m", [n])
        assert await _numbers(client, 5) == [1, 2, 3, 4, 5]
        await client.send({"type": 8, "sequenceId": 3})  # the client has 1..3 for sure
        # The server acknowledges the client's own messages: an invocation (answered "does
        # not exist": no service) is Acked within a second.
        await client.send({"type": 1, "invocationId": "a", "target": "Nope", "arguments": []})
        # Its Completion and the Ack of its message 1 (in either order: the Ack goes out on
        # the next tick, the Completion once it is journaled).
        first, second = await client.recv(), await client.recv()
        by_type = {first["type"]: first, second["type"]: second}
        assert by_type[3]["invocationId"] == "a", by_type
        assert by_type[8] == {"type": 8, "sequenceId": 1}, by_type

        client.drop()
        for n in range(6, 9):  # while detached: journaled, numbered 6..8 (+1: the Completion)
            await api.send_to_user("ann", "m", [n])

        async def journaled() -> bool:
            return bool(await api.connection_exists(client.connection_id))

        assert await journaled()
        await client.open(handshake=False)
        # As if the server's Ack had not reached it: it resends "a" (its message 1), handled
        # already, so dropped: the next answer is to "b".
        await client.send({"type": 9, "sequenceId": 1})
        await client.send({"type": 1, "invocationId": "a", "target": "Nope", "arguments": []})
        await client.send({"type": 1, "invocationId": "b", "target": "Nope", "arguments": []})
        # From what it acknowledged (3): 4, 5, the Completion (6), then what came meanwhile.
        assert await client.recv() == {"type": 9, "sequenceId": 4}
        assert await _numbers(client, 2) == [4, 5]
        assert (await client.recv())["invocationId"] == "a"
        assert await _numbers(client, 3) == [6, 7, 8]
        answer = await client.recv()
        assert answer["type"] == 3 and answer["invocationId"] == "b", answer
        await api.send_to_user("ann", "m", [9])
        assert await _numbers(client, 1) == [9]


async def test_past_the_window_the_reattach_is_refused_with_why(gateway: Deployment) -> None:
    base = gateway.gateways[0].url
    client = await Stateful.negotiate(base, "bea")
    await client.open()
    async with HubbubClient(base, ACCESS_KEY, "chat") as api:
        await api.add_connection_to_group("g", client.connection_id)
        client.drop()
        await _gone(api, client.connection_id)  # the 2 s window ends it
        assert not await api.group_exists("g")
    with pytest.raises(InvalidStatus) as refused:
        await client.open(handshake=False)
    response = refused.value.response
    body = orjson.loads(response.body or b"{}")
    assert response.status_code == 404, body
    assert body["code"] == "Error.Connection.NotResumable"
    assert "reconnect window" in body["message"]
    fresh = await Stateful.negotiate(base, "bea")  # a new connection works
    await fresh.open()
    async with HubbubClient(base, ACCESS_KEY, "chat") as api:
        await api.send_to_user("bea", "m", [1])
    assert await _numbers(fresh, 1) == [1]


async def test_past_the_buffer_while_detached_the_reattach_is_refused(gateway: Deployment) -> None:
    base = gateway.gateways[0].url
    client = await Stateful.negotiate(base, "cat")
    await client.open()
    async with HubbubClient(base, ACCESS_KEY, "chat") as api:
        client.drop()
        for n in range(10):  # 10 x 1 KB > 4 KB
            await api.send_to_user("cat", "m", [n, "x" * 1000])
        await _gone(api, client.connection_id)
    with pytest.raises(InvalidStatus) as refused:
        await client.open(handshake=False)
    body = orjson.loads(refused.value.response.body or b"{}")
    assert refused.value.response.status_code == 404
    assert body["code"] == "Error.Connection.NotResumable"
    assert "HUBBUB_RECONNECT_BUFFER_BYTES" in body["message"]


async def test_a_client_that_never_acknowledges_is_closed_with_why(gateway: Deployment) -> None:
    base = gateway.gateways[0].url
    client = await Stateful.negotiate(base, "dan")
    await client.open()
    async with HubbubClient(base, ACCESS_KEY, "chat") as api:
        for n in range(10):
            await api.send_to_user("dan", "m", [n, "x" * 1000])
        received = []
        while (message := await client.recv())["type"] == 1:
            received.append(message["arguments"][0])
        assert message["type"] == 7, message
        assert message["allowReconnect"] is True
        assert "cannot resume" in message["error"]
        assert received == list(range(len(received)))  # a prefix, in order
        await _gone(api, client.connection_id)
