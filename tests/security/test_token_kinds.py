"""Client and service tokens are separate (issue 9, item 6), against real gateways.

A REST (service) token, whose audience is a REST URL, never opens a client connection; a
client token never calls the REST API.
"""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hubbub.tokens import mint_token
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import client_token


async def test_a_rest_token_does_not_negotiate_or_open_a_socket(cluster: Deployment) -> None:
    base = cluster.gateways[1].url
    rest_url = f"{base}/api/hubs/chat/:send"
    service = mint_token(ACCESS_KEY, rest_url, user_id="mallory")
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{base}/hubs/chat/negotiate?negotiateVersion=1",
            headers={"Authorization": f"Bearer {service}"},
        )
        assert r.status_code == 401, r.text
        assert "client endpoint" in r.json()["message"]
        # The same caller with a client token is welcome.
        ok = await http.post(
            f"{base}/hubs/chat/negotiate?negotiateVersion=1",
            headers={"Authorization": f"Bearer {client_token('mallory')}"},
        )
        assert ok.status_code == 200, ok.text
    url = base.replace("http://", "ws://") + f"/hubs/chat?access_token={service}"
    with pytest.raises(InvalidStatus) as refused:
        ws = await websockets.connect(url, ping_interval=None)
        await ws.close()
    assert refused.value.response.status_code == 401


async def test_a_client_token_does_not_call_the_rest_api(cluster: Deployment) -> None:
    base = cluster.gateways[0].url
    for audience in ("http://test/client", f"{base}/hubs/chat", f"{base}/client/?hub=chat"):
        token = mint_token(ACCESS_KEY, audience, user_id="alice")
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{base}/api/hubs/chat/:send",
                json={"target": "m", "arguments": []},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert r.status_code == 401, (audience, r.text)
        assert r.json()["code"] == "Error.Unauthorized"
