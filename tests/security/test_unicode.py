"""Bad Unicode (issue 9, item 7): lone surrogates in names and claims are refused cleanly.

A JSON body may spell a lone surrogate (``"\\ud800"``); Python decodes it into a ``str`` that
cannot be encoded as UTF-8, so it must be refused where names are checked (400, or 401 for a
token's user id), never reach a Redis key (a 500) or a registration (a stuck connection id).
"""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hubbub.sdk.client import ServiceAuth
from hubbub.tokens import mint_token
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient

SURROGATE_JSON = '"\\ud800"'  # as a JSON text: a lone high surrogate


def _batch(to: str) -> bytes:
    item = f'{{"to":"{to}","name":{SURROGATE_JSON},"target":"m","arguments":[]}}'
    return f'{{"messages":[{item}]}}'.encode()


@pytest.mark.parametrize("to", ["group", "user"])
@pytest.mark.parametrize("origin", [None, "http://page.example"])
async def test_a_lone_surrogate_name_in_a_batch_is_a_400(
    cluster: Deployment, to: str, origin: str | None
) -> None:
    headers = {"content-type": "application/json"}
    if origin:
        headers["origin"] = origin  # through CORS as well
    async with httpx.AsyncClient(auth=ServiceAuth(ACCESS_KEY)) as http:
        r = await http.post(
            f"{cluster.gateways[0].url}/api/hubs/chat/:batch", content=_batch(to), headers=headers
        )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "Error.InvalidName"
    assert "messages[0]" in r.json()["message"]
    assert "Traceback" not in cluster.logs()


async def test_a_lone_surrogate_user_in_a_client_token_is_refused_and_nothing_sticks(
    cluster: Deployment,
) -> None:
    gateway = cluster.gateways[1]
    token = mint_token(ACCESS_KEY, "http://test/client", user_id="\ud800")
    url = gateway.url.replace("http://", "ws://") + f"/hubs/chat?access_token={token}"
    with pytest.raises(InvalidStatus) as refused:
        ws = await websockets.connect(url, ping_interval=None)
        await ws.close()
    assert refused.value.response.status_code == 401
    # The gateway is fine: a normal client still connects and receives.
    client = await RawClient.connect(gateway.url)
    assert client.connection_id
    await client.close()
    assert "Traceback" not in cluster.logs()
