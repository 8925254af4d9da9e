"""The SignalR WebSocket edge: negotiation, handshake, invocations and bad input."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hubbub.sdk.client import HubbubClient
from tests.support.processes import Deployment, eventually
from tests.support.rawclient import RS, RawClient, client_token


async def gone(api: HubbubClient, client: RawClient) -> None:
    """The gateway unregisters just after closing the socket; wait for that, bounded."""
    conn = client.connection_id
    assert conn

    async def absent() -> bool:
        return not await api.connection_exists(conn)

    await eventually(absent, timeout=5)


async def test_negotiate_v0_and_v1(cluster: Deployment) -> None:
    base = cluster.gateways[0].url
    headers = {"Authorization": f"Bearer {client_token('u')}"}
    async with httpx.AsyncClient() as http:
        v0 = (await http.post(f"{base}/hubs/chat/negotiate", headers=headers)).json()
        v1 = (
            await http.post(f"{base}/hubs/chat/negotiate?negotiateVersion=1", headers=headers)
        ).json()
    transports = [{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}]
    assert v0["negotiateVersion"] == 0 and "connectionToken" not in v0
    assert v0["availableTransports"] == transports
    assert v1["negotiateVersion"] == 1 and v1["connectionToken"] != v1["connectionId"]
    assert v1["availableTransports"] == transports
    assert "useStatefulReconnect" not in v1


@pytest.mark.parametrize(
    ("query", "version"),
    [("", 0), ("negotiateVersion=%2B1", 1), ("negotiateVersion=1.0", 1),
     ("negotiateVersion=1&negotiateVersion=0", 0), ("negotiateVersion=7", 1),
     ("negotiateVersion=abc", None), ("negotiateVersion=", None), ("negotiateVersion=1.5", None),
     ("negotiateVersion=inf", None)],
)  # fmt: skip
async def test_negotiate_reads_its_query_as_fastapi_did(
    cluster: Deployment, query: str, version: int | None
) -> None:
    """Negotiate is a plain ASGI endpoint (the send shortcut's), not a FastAPI handler: it
    must read ``negotiateVersion`` as FastAPI's ``int`` did (the last value; ``+1`` and
    ``1.0`` pass), refuse the rest with a 400 body, and take the token from the query."""
    base = cluster.gateways[0].url
    token = client_token("u")
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{base}/hubs/chat/negotiate?{query}&access_token={token}")
    if version is None:
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "Error.InvalidRequest"
        assert "negotiateVersion" in r.json()["message"]
    else:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json()["negotiateVersion"] == version
        assert ("connectionToken" in r.json()) is (version == 1)


async def test_negotiate_on_one_gateway_connect_to_other(
    cluster: Deployment, api: HubbubClient
) -> None:
    client = await RawClient.connect(
        cluster.gateways[1].url, negotiate_base=cluster.gateways[0].url
    )
    assert client.connection_id
    assert await api.connection_exists(client.connection_id)


async def test_skip_negotiation(cluster: Deployment, api: HubbubClient) -> None:
    client = await RawClient.connect(cluster.gateways[1].url, negotiate=False)
    await api.send_to_all("newMessage", ["x"])
    assert (await client.recv())["arguments"] == ["x"]


async def test_v0_connection_id_is_accepted(cluster: Deployment, api: HubbubClient) -> None:
    base = cluster.gateways[1].url
    token = client_token()
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{base}/hubs/chat/negotiate", headers={"Authorization": f"Bearer {token}"}
        )
    conn = r.json()["connectionId"]
    ws = await websockets.connect(
        f"ws://127.0.0.1:{cluster.gateways[1].port}/hubs/chat?id={conn}&access_token={token}"
    )
    await ws.send('{"protocol":"json","version":1}\x1e')
    assert await ws.recv() == "{}\x1e"
    assert await api.connection_exists(conn)
    # A second socket for the live id is refused.
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(
            f"ws://127.0.0.1:{cluster.gateways[1].port}/hubs/chat?id={conn}&access_token={token}"
        )
    assert refused.value.response.status_code == 409
    await ws.close()


@pytest.mark.parametrize(
    "token", [None, "not-a-jwt", client_token(key="wrong-key-wrong-key-wrong-key-00")]
)
async def test_bad_tokens_are_refused(cluster: Deployment, token: str | None) -> None:
    base = cluster.gateways[0].url
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{base}/hubs/chat/negotiate?negotiateVersion=1", headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] == "Error.Unauthorized"
    query = f"?access_token={token}" if token else ""
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(f"ws://127.0.0.1:{cluster.gateways[0].port}/hubs/chat{query}")
    assert refused.value.response.status_code == 401


async def test_invalid_hub_name_is_404(cluster: Deployment) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{cluster.gateways[0].url}/hubs/9lives/negotiate",
            headers={"Authorization": f"Bearer {client_token()}"},
        )
    assert r.status_code == 404 and "hub name" in r.json()["message"]


@pytest.mark.parametrize(
    ("handshake", "error"),
    [
        (b"garbage" + RS, "Invalid handshake"),
        (b'{"protocol":"blazorpack","version":1}' + RS, "'blazorpack' is not supported"),
        (b'{"protocol":"json","version":3}' + RS, "does not support version 3"),
        (b'{"protocol":"json"}' + RS, "Invalid handshake"),
    ],
)
async def test_bad_handshake_gets_error_and_close(
    cluster: Deployment, api: HubbubClient, handshake: bytes, error: str
) -> None:
    bystander = await RawClient.connect(cluster.gateways[1].url)
    client = await RawClient.connect(cluster.gateways[1].url, handshake=False)
    await client.send_raw(handshake)
    answer = await client.recv()
    assert error in answer["error"]
    await client.ws.wait_closed()
    await api.send_to_all("newMessage", ["still here"])
    assert (await bystander.recv())["arguments"] == ["still here"]


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"{not json" + RS, "not valid JSON"),
        (b'{"type":"one"}' + RS, "integer 'type'"),
        (b'{"type":42}' + RS, "unknown message type"),
        (b'{"type":1,"target":"x","arguments":"nope"}' + RS, "'arguments' must be an array"),
        (b'{"type":1,"target":"x","arguments":["' + b"a" * 40_000 + b'"]}' + RS, "maximum size"),
    ],
)
async def test_bad_frames_close_with_reason_others_unaffected(
    cluster: Deployment, api: HubbubClient, frame: bytes, error: str
) -> None:
    bystander = await RawClient.connect(cluster.gateways[1].url)
    client = await RawClient.connect(cluster.gateways[1].url)
    await client.send_raw(frame)
    close = await client.recv()
    assert close["type"] == 7 and error in close["error"]
    assert "allowReconnect" not in close
    await client.ws.wait_closed()
    await gone(api, client)
    await api.send_to_all("newMessage", ["still here"])
    assert (await bystander.recv())["arguments"] == ["still here"]


async def test_invocations(cluster: Deployment, api: HubbubClient) -> None:
    plain = await RawClient.connect(cluster.gateways[1].url)
    unknown = await plain.invoke("DoThings", 1)
    assert unknown["error"] == "Method 'DoThings' does not exist on this hub."
    denied = await plain.invoke("JoinGroup", "vip", invocation_id="2")
    assert "not permitted" in denied["error"]

    member = await RawClient.connect(
        cluster.gateways[1].url, token=client_token(roles=["hubbub.joinLeaveGroup.vip"])
    )
    joined = await member.invoke("JoinGroup", "vip")
    assert joined == {"type": 3, "invocationId": "1"}
    assert (
        "not permitted" in (await member.invoke("JoinGroup", "other", invocation_id="2"))["error"]
    )
    await api.send_to_group("vip", "newMessage", ["vip only"])
    assert (await member.recv())["arguments"] == ["vip only"]
    left = await member.invoke("LeaveGroup", "vip", invocation_id="3")
    assert "error" not in left
    assert not await api.group_exists("vip")

    # No invocation id: no answer. The next answer is for the next invocation.
    await plain.send({"type": 1, "target": "Nope", "arguments": []})
    assert (await plain.invoke("Nope2", invocation_id="9"))["invocationId"] == "9"


async def test_client_close_message_unregisters(cluster: Deployment, api: HubbubClient) -> None:
    client = await RawClient.connect(cluster.gateways[1].url)
    assert client.connection_id
    await client.send({"type": 7})
    await client.ws.wait_closed()
    await gone(api, client)


async def test_sigterm_drains_with_allow_reconnect(cluster: Deployment, api: HubbubClient) -> None:
    leaving = cluster.gateways[1]
    client = await RawClient.connect(leaving.url)
    leaving.signal(signal.SIGTERM)
    assert await client.recv() == {"type": 7, "allowReconnect": True}
    await client.ws.wait_closed()
    assert await asyncio.to_thread(leaving.process.wait, 20) == 0
    assert client.connection_id
    assert not await api.connection_exists(client.connection_id)
