"""Connection takeover (issue 9, item 1): a connection id is never a capability.

Against real gateway processes and a real Redis: only the party that negotiated a connection
(or reconnects with its own, unexpired, signed id or token: same user, same hub) can ever
receive what is addressed to that connection id.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from hubbub.sdk.client import HubbubClient
from hubbub.tokens import connection_token, mint_token, new_connection_id
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RS, client_token

HANDSHAKE = '{"protocol":"json","version":1}\x1e'


async def negotiate(base: str, token: str, hub: str = "chat", v1: bool = True) -> dict[str, Any]:
    query = "?negotiateVersion=1" if v1 else ""
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{base}/hubs/{hub}/negotiate{query}", headers={"Authorization": f"Bearer {token}"}
        )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def ws_url(base: str, id_: str, token: str, hub: str = "chat") -> str:
    return base.replace("http://", "ws://") + f"/hubs/{hub}?id={id_}&access_token={token}"


async def open_socket(url: str) -> ClientConnection:
    """Upgrade and handshake; the handshake must be accepted."""
    ws = await websockets.connect(url, max_size=None, ping_interval=None)
    await ws.send(HANDSHAKE)
    assert await asyncio.wait_for(ws.recv(), 10) == "{}\x1e"
    return ws


async def refused(url: str) -> dict[str, Any]:
    """The upgrade is refused: the status and JSON body of the refusal."""
    with pytest.raises(InvalidStatus) as exc:
        ws = await websockets.connect(url, ping_interval=None)
        await ws.close()  # accepted: pytest.raises fails the test
    response = exc.value.response
    body: dict[str, Any] = orjson.loads(response.body or b"{}")
    body["status"] = response.status_code
    return body


async def next_message(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """The next record that is not a Ping."""
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        data = frame.encode() if isinstance(frame, str) else frame
        for record in data.split(RS):
            if record:
                message: dict[str, Any] = orjson.loads(record)
                if message.get("type") != 6:
                    return message


async def gone(api: HubbubClient, conn: str) -> None:
    async def absent() -> bool:
        return not await api.connection_exists(conn)

    await eventually(absent, timeout=5)


def not_existed(body: dict[str, Any]) -> None:
    assert body["status"] == 404, body
    assert body["code"] == "Error.Connection.NotExisted", body


async def test_another_user_cannot_reuse_a_closed_connections_token(
    cluster: Deployment, api: HubbubClient
) -> None:
    gw0, gw1 = cluster.gateways[0].url, cluster.gateways[1].url
    alice, bob = client_token("alice"), client_token("bob")
    negotiated = await negotiate(gw0, alice)
    conn, token = negotiated["connectionId"], negotiated["connectionToken"]
    ws = await open_socket(ws_url(gw1, token, alice))
    assert await api.connection_exists(conn)
    await ws.close()
    await gone(api, conn)

    # Bob, with alice's token or her bare id, on either gateway: refused.
    for base in (gw0, gw1):
        not_existed(await refused(ws_url(base, token, bob)))
        not_existed(await refused(ws_url(base, conn, bob)))
    assert not await api.connection_exists(conn)

    # What is sent to alice's connection id never reaches bob's own connection.
    mine = await negotiate(gw1, bob)
    bob_ws = await open_socket(ws_url(gw1, mine["connectionToken"], bob))
    await api.send_to_connection(conn, "newMessage", ["for alice"])
    await api.send_to_connection(mine["connectionId"], "newMessage", ["for bob"])
    assert (await next_message(bob_ws))["arguments"] == ["for bob"]
    await bob_ws.close()


async def test_bare_id_is_refused(cluster: Deployment, api: HubbubClient) -> None:
    for gw in cluster.gateways:
        not_existed(await refused(ws_url(gw.url, "admin-console", client_token("mallory"))))
        not_existed(await refused(ws_url(gw.url, "admin-console", client_token())))
    url = f"{cluster.gateways[0].url}/api/hubs/chat/connections/admin-console"
    async with httpx.AsyncClient() as http:
        r = await http.get(url, headers={"Authorization": f"Bearer {mint_token(ACCESS_KEY, url)}"})
    assert r.status_code == 404
    assert not await api.connection_exists("admin-console")


async def test_v0_id_is_bound_to_its_user_and_hub(cluster: Deployment, api: HubbubClient) -> None:
    gw = cluster.gateways[1].url
    alice = client_token("alice")
    conn = (await negotiate(gw, alice, v1=False))["connectionId"]
    not_existed(await refused(ws_url(gw, conn, client_token("bob"))))
    not_existed(await refused(ws_url(gw, conn, client_token())))  # anonymous
    not_existed(await refused(ws_url(gw, conn, alice, hub="other")))
    assert not await api.connection_exists(conn)
    # The id is good for alice, on chat.
    ws = await open_socket(ws_url(gw, conn, alice))
    assert await api.connection_exists(conn)
    await ws.close()


async def test_expired_v1_connection_token_is_refused(deployment: Deployment) -> None:
    gw = (await deployment.start_gateway(HUBBUB_CONNECTION_TOKEN_TTL="2")).url
    alice = client_token("alice")
    before = time.time()
    fresh = await negotiate(gw, alice)
    # The gateway issues tokens for its TTL (the expiry is the token's middle part).
    expires = int(fresh["connectionToken"].split(".")[1])
    assert before + 2 <= expires <= time.time() + 3
    ws = await open_socket(ws_url(gw, fresh["connectionToken"], alice))  # in time: accepted
    await ws.close()
    # A token this deployment signed, for alice on chat, whose expiry has passed (minted with
    # the access key rather than waited for).
    conn = new_connection_id(ACCESS_KEY, "chat", "alice", in_token=True)
    stale = connection_token(ACCESS_KEY, conn, 2, now=time.time() - 10)
    body = await refused(ws_url(gw, stale, alice))
    not_existed(body)
    assert "expired" in body["message"]
    # A v1 id is only good inside its token: not bare, where the expiry would not apply.
    not_existed(await refused(ws_url(gw, conn, alice)))
    not_existed(await refused(ws_url(gw, fresh["connectionId"], alice)))


@pytest.mark.parametrize("across", [False, True], ids=["one-gateway", "two-gateways"])
async def test_concurrent_opens_of_one_id_leave_one_indexed_connection(
    deployment: Deployment, across: bool
) -> None:
    """On one gateway the second upgrade gets 409; across gateways, Redis refuses the second
    registration (a handshake error). Either way the survivor is fully indexed."""
    for _ in range(2):
        await deployment.start_gateway(HUBBUB_KEEPALIVE_INTERVAL="0.5")
    deployment.start_worker()
    bases = [gw.url for gw in deployment.gateways]
    alice = client_token("alice")
    async with HubbubClient(bases[0], ACCESS_KEY, "chat") as api:
        for _ in range(3):
            negotiated = await negotiate(bases[0], alice)
            conn, token = negotiated["connectionId"], negotiated["connectionToken"]
            urls = [ws_url(bases[0], token, alice), ws_url(bases[1 if across else 0], token, alice)]
            upgrades = await asyncio.gather(
                *(websockets.connect(url, ping_interval=None) for url in urls),
                return_exceptions=True,
            )
            sockets = [ws for ws in upgrades if isinstance(ws, ClientConnection)]
            await asyncio.gather(*(ws.send(HANDSHAKE) for ws in sockets))
            answers = await asyncio.gather(*(ws.recv() for ws in sockets))
            live = [ws for ws, answer in zip(sockets, answers, strict=True) if answer == "{}\x1e"]
            assert len(live) == 1, (upgrades, answers)
            for failure in upgrades:
                if not isinstance(failure, ClientConnection):
                    assert isinstance(failure, InvalidStatus), failure
                    assert failure.response.status_code == 409
            ws = live[0]
            assert await api.connection_exists(conn)
            # Fully indexed: a send to the id reaches it, and it gets Pings.
            await api.send_to_connection(conn, "newMessage", ["direct"])
            assert (await next_message(ws))["arguments"] == ["direct"]
            ping = await asyncio.wait_for(ws.recv(), 5)
            assert '{"type":6}' in str(ping)
            for other in sockets:
                await other.close()
            await gone(api, conn)


async def test_stale_id_reconnect_by_the_same_user_is_a_fresh_session(
    cluster: Deployment, api: HubbubClient
) -> None:
    """pysignalr reconnects with its old id (v0) and crashes on 404."""
    gw = cluster.gateways[1].url
    alice = client_token("alice")
    conn = (await negotiate(gw, alice, v1=False))["connectionId"]
    ws = await open_socket(ws_url(gw, conn, alice))
    await ws.close()
    await gone(api, conn)
    for base in (gw, cluster.gateways[0].url):  # on whichever gateway it lands
        again = await open_socket(ws_url(base, conn, alice))
        assert await api.connection_exists(conn)
        await api.send_to_connection(conn, "newMessage", ["again"])
        assert (await next_message(again))["arguments"] == ["again"]
        await again.close()
        await gone(api, conn)
