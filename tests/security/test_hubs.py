"""Hubs can be pinned, and metric labels cannot grow without bound (issue 9, item 8)."""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hubbub.metrics import MAX_HUB_LABELS, Metrics
from hubbub.sdk.client import HubbubClient, ServiceAuth
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient, client_token


async def test_a_pinned_gateway_serves_only_its_hubs(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway(HUBBUB_HUBS='["Chat"]')
    deployment.start_worker()
    token = client_token("u")
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{gateway.url}/hubs/news/negotiate", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 404 and r.json()["code"] == "Error.Hub.NotFound", r.text
    with pytest.raises(InvalidStatus) as refused:
        ws = await websockets.connect(
            gateway.url.replace("http://", "ws://") + f"/hubs/news?access_token={token}"
        )
        await ws.close()
    assert refused.value.response.status_code == 404
    async with httpx.AsyncClient(base_url=gateway.url, auth=ServiceAuth(ACCESS_KEY)) as http:
        for method, path in [
            ("POST", "/api/hubs/news/:send"),
            ("POST", "/api/hubs/news/:batch"),
            ("PUT", "/api/hubs/news/users/u/groups/g"),
            ("HEAD", "/api/hubs/news/users/u"),
            ("POST", "/api/hubs/chat/:send?application=other"),  # other_chat
        ]:
            body = {"target": "m", "arguments": []}
            if path.endswith(":batch"):
                body = {"messages": [{"to": "all", "target": "m"}]}  # type: ignore[dict-item]
            r = await http.request(method, path, json=body if method == "POST" else None)
            assert r.status_code == 404, (method, path, r.text)
    # The pinned hub works, whatever the case of its name.
    client = await RawClient.connect(gateway.url, hub="CHAT")
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        await api.send_to_all("pinned", [1])
    assert (await client.recv())["target"] == "pinned"
    await client.close()


def test_hub_labels_are_bounded() -> None:
    metrics = Metrics()
    hubs = [f"h{n}" for n in range(MAX_HUB_LABELS + 50)]
    labels = [metrics.hub_label(h) for h in hubs]
    assert labels[:MAX_HUB_LABELS] == hubs[:MAX_HUB_LABELS]
    assert set(labels[MAX_HUB_LABELS:]) == {"_other"}
    assert [metrics.hub_label(h) for h in hubs] == labels  # the same answer every time
