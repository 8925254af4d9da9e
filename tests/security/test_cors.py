"""CORS (issue 9, item 9): an allow-list, checked on WebSocket upgrades too.

Browsers do not apply CORS to WebSockets, so a page from any origin could open one with
``skipNegotiation``; the gateway checks ``Origin`` itself. Clients that send no ``Origin``
(Node, Python, services) are unaffected, and the gateway's own origin always works.
"""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.support.processes import Deployment
from tests.support.rawclient import RawClient, client_token

HANDSHAKE = '{"protocol":"json","version":1}\x1e'


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + f"/hubs/chat?access_token={client_token('u')}"


async def opens(base: str, origin: str | None) -> bool:
    """Whether the upgrade (with ``skipNegotiation``) is accepted; a refusal must be a 403."""
    try:
        ws = await websockets.connect(
            ws_url(base), origin=Origin(origin) if origin else None, ping_interval=None
        )
    except InvalidStatus as exc:
        assert exc.response.status_code == 403
        return False
    await ws.send(HANDSHAKE)
    assert await ws.recv() == "{}\x1e"
    await ws.close()
    return True


async def test_by_default_no_other_origin_may_connect(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway()
    assert not await opens(gateway.url, "http://evil.example")
    assert await opens(gateway.url, None)  # Node, Python: no Origin
    assert await opens(gateway.url, gateway.url)  # a page served by the gateway itself
    async with httpx.AsyncClient() as http:
        preflight = await http.options(
            f"{gateway.url}/api/hubs/chat/:send",
            headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
        )
    assert "access-control-allow-origin" not in preflight.headers
    assert "Traceback" not in deployment.logs()


async def test_listed_origins_may_connect(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway(HUBBUB_CORS_ORIGINS='["http://app.example"]')
    assert await opens(gateway.url, "http://app.example")
    assert not await opens(gateway.url, "http://evil.example")
    client = await RawClient.connect(gateway.url)  # negotiate + upgrade without Origin
    assert client.connection_id
    await client.close()


@pytest.mark.parametrize("origins", ['["*"]'])
async def test_star_allows_any_origin(deployment: Deployment, origins: str) -> None:
    gateway = await deployment.start_gateway(HUBBUB_CORS_ORIGINS=origins)
    assert await opens(gateway.url, "http://anything.example")
