"""A draining gateway takes no new work: negotiate, the WebSocket upgrade and REST sends all
get ``503 Error.Draining`` while it waits for its clients to close."""

from __future__ import annotations

import signal
import socket

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token

pytestmark = pytest.mark.slow


def draining_refusal(status: int, body: bytes | bytearray | None) -> None:
    """Exactly 503 with the JSON code a client or load balancer can act on."""
    assert status == 503, (status, body)
    assert body and orjson.loads(body)["code"] == "Error.Draining", body


async def test_draining_gateway_refuses_negotiate_upgrade_and_send(
    deployment: Deployment,
) -> None:
    """The gateway drains until every client's Close has gone out. A client that stopped
    reading (4 KiB receive buffer) with 4 MB waiting for it holds the drain open until the
    gateway gives up on it (the close timeout, 5 s): the window the three calls are made in."""
    gateway = await deployment.start_gateway(HUBBUB_SEND_BUFFER_MAX=str(64 * 1024 * 1024))
    deployment.start_worker()
    token = client_token("u1")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port or 0))
    # max_queue=1: the library stops reading the socket once one message waits unconsumed.
    stubborn = await websockets.connect(
        gateway.url.replace("http://", "ws://") + f"/hubs/chat?access_token={token}",
        sock=sock,
        max_queue=1,
        max_size=None,
    )
    await stubborn.send('{"protocol":"json","version":1}\x1e')
    assert await stubborn.recv() == "{}\x1e"
    reader = await RawClient.connect(gateway.url)
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        for n in range(200):
            await api.send_to_all("fill", ["x" * 20_000, n])
        # The reader got all 200, so the gateway wrote them to the stubborn client as well.
        for n in range(200):
            assert (await reader.recv())["arguments"][1] == n
    async with httpx.AsyncClient(base_url=gateway.url) as http:

        async def health() -> dict[str, object]:
            r = await http.get("/api/health")
            body: dict[str, object] = r.json()
            return body

        assert (await health())["draining"] is False
        gateway.signal(signal.SIGTERM)

        async def draining() -> bool:
            return (await health())["draining"] is True

        await eventually(draining, timeout=10, interval=0.02)

        r = await http.post(
            "/hubs/chat/negotiate?negotiateVersion=1", headers={"Authorization": f"Bearer {token}"}
        )
        draining_refusal(r.status_code, r.content)

        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(
                gateway.url.replace("http://", "ws://") + f"/hubs/chat?access_token={token}"
            )
        draining_refusal(refused.value.response.status_code, refused.value.response.body)

        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            r = await api.http.post("/api/hubs/chat/:send", json={"target": "t", "arguments": []})
            draining_refusal(r.status_code, r.content)

        # All three were answered inside the draining window: the gateway still drains.
        assert await draining()
    assert gateway.stop(timeout=30) == 0
    stubborn.transport.abort()
