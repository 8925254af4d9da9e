"""Audiences are exact (issue 9, item 5), against real gateway processes.

A service token's ``aud`` binds the REST target the router acts on: the path decoded once per
segment, compared exactly (only the hub segment ignores case), and, with
``HUBBUB_PUBLIC_URLS``, one of the public origins whatever ``Host`` the request carries.
"""

from __future__ import annotations

import httpx
import pytest

from hubbub.sdk.client import HubbubClient, ServiceAuth
from hubbub.tokens import mint_token
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient, client_token

PUBLIC = "https://hubbub.example.com"
SEND = {"target": "m", "arguments": ["x"]}


def _bearer(audience: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(ACCESS_KEY, audience)}"}


def _unauthorised(r: httpx.Response) -> None:
    assert r.status_code == 401, (r.request.url, r.status_code, r.text)
    assert r.json()["code"] == "Error.Unauthorized", r.text
    assert "audience" in r.json()["message"], r.text


@pytest.fixture
async def gateway(deployment: Deployment) -> str:
    gw = await deployment.start_gateway()
    deployment.start_worker()
    return gw.url


async def test_one_token_names_one_group_and_user(gateway: str) -> None:
    """The bindings reproduced for issue 9: a token for users/zed/groups/vip authorised VIP,
    vip%20, vip%09 and users/ZED too. Each is now a 401 and changes nothing."""
    vip = "/api/hubs/h/users/zed/groups/vip"
    token = _bearer(gateway + vip)
    async with httpx.AsyncClient(base_url=gateway) as http:
        for path in (
            "/api/hubs/h/users/zed/groups/VIP",
            "/api/hubs/h/users/zed/groups/vip%20",
            "/api/hubs/h/users/zed/groups/vip%09",
            "/api/hubs/h/users/ZED/groups/vip",
            "/api/hubs/h/users/zed/groups/vi%70%2F",
            "/api/v1/hubs/h/users/zed/groups/vip",
        ):
            _unauthorised(await http.put(path, headers=token))
        r = await http.put(vip, headers=token)
        assert r.status_code == 200, r.text
    async with HubbubClient(gateway, ACCESS_KEY, "h") as api:
        assert await api.user_in_group("vip", "zed")
        for group, user in (("VIP", "zed"), ("vip ", "zed"), ("vip\t", "zed"), ("vip", "ZED")):
            assert not await api.user_in_group(group, user), (group, user)


async def test_paths_are_decoded_once(gateway: str) -> None:
    """A token for group "aA" does not reach group "a%41" (sent as a%2541)."""
    token = _bearer(f"{gateway}/api/hubs/h/users/u/groups/aA")
    async with httpx.AsyncClient(base_url=gateway) as http:
        _unauthorised(await http.put("/api/hubs/h/users/u/groups/a%2541", headers=token))
        token = _bearer(f"{gateway}/api/hubs/h/groups/aA/:send")
        _unauthorised(await http.post("/api/hubs/h/groups/a%2541/:send", json=SEND, headers=token))
    async with HubbubClient(gateway, ACCESS_KEY, "h") as api:
        assert not await api.group_exists("a%41")
        assert not await api.user_in_group("a%41", "u")


@pytest.mark.parametrize(
    ("group", "user", "other_group", "other_user"),
    [
        ("a/b", "c%41", "a%2Fb", "cA"),
        ("a%41", "x/y", "aA", "x%2Fy"),
        ("a%2Fb", "aA", "a/b", "a%41"),
    ],
)
async def test_names_with_slash_and_percent_work_with_their_token(
    gateway: str, group: str, user: str, other_group: str, other_user: str
) -> None:
    """hubbub's SDK signs the URL it calls (each name percent-encoded); the gateway acts on
    exactly those names, through the router (PUT, HEAD) and the send shortcut (POST)."""
    client = await RawClient.connect(gateway, hub="h", token=client_token(user))
    async with HubbubClient(gateway, ACCESS_KEY, "h") as api:
        await api.add_user_to_group(group, user)
        assert await api.user_in_group(group, user)
        assert await api.user_exists(user)
        assert not await api.user_in_group(other_group, user)
        assert not await api.user_in_group(group, other_user)
        assert not await api.user_exists(other_user)
        await api.send_to_group(group, "toGroup", [group])
        await api.send_to_user(user, "toUser", [user])
    received = sorted([await client.recv(), await client.recv()], key=lambda m: m["target"])
    assert received == [
        {"type": 1, "target": "toGroup", "arguments": [group]},
        {"type": 1, "target": "toUser", "arguments": [user]},
    ]
    await client.close()


async def test_the_hub_segment_ignores_case_and_azure_audiences_work(gateway: str) -> None:
    """Azure's Management SDK signs scheme://host/ (no port) + the path with the hub in lower
    case and every name escaped (Uri.EscapeDataString) + ?api-version=...; the request goes to
    the server endpoint, with the same query."""
    client = await RawClient.connect(gateway, hub="Chat", token=client_token("u"))
    host = gateway.rsplit(":", 1)[0]  # http://127.0.0.1
    tail = "?api-version=2022-06-01"
    async with httpx.AsyncClient(base_url=gateway) as http:
        r = await http.put(
            f"/api/hubs/Chat/users/u/groups/a%2Fb{tail}",
            headers=_bearer(f"{host}/api/hubs/chat/users/u/groups/a%2Fb{tail}"),
        )
        assert r.status_code == 200, r.text
        r = await http.post(
            f"/api/hubs/CHAT/groups/a%2Fb/:send{tail}",
            json=SEND,
            headers=_bearer(f"{host}/api/hubs/chat/groups/a%2Fb/:send{tail}"),
        )
        assert r.status_code == 202, r.text
        # The application prefix is part of the hub: a token for chat is not one for app_chat.
        app = "?application=app&api-version=2022-06-01"
        _unauthorised(
            await http.post(
                f"/api/hubs/chat/:send{app}",
                json=SEND,
                headers=_bearer(f"{host}/api/hubs/chat/:send{tail}"),
            )
        )
        r = await http.post(
            f"/api/hubs/chat/:send{app}",
            json=SEND,
            headers=_bearer(f"{host}/api/hubs/chat/:send{app}"),
        )
        assert r.status_code == 202, r.text
    assert await client.recv() == {"type": 1, **SEND}
    await client.close()


async def test_public_urls_bind_the_origin_not_the_host_header(deployment: Deployment) -> None:
    gw = await deployment.start_gateway(HUBBUB_PUBLIC_URLS=f'["{PUBLIC}"]')
    send = "/api/hubs/chat/:send"
    async with httpx.AsyncClient(base_url=gw.url) as http:
        # A token for another host, the Host header spoofed to match it.
        r = await http.post(
            send,
            json=SEND,
            headers={**_bearer(f"https://evil.example{send}"), "Host": "evil.example"},
        )
        _unauthorised(r)
        # The address the request really arrived at is not a public URL either.
        _unauthorised(await http.post(send, json=SEND, headers=_bearer(gw.url + send)))
        membership = "/api/hubs/chat/users/u/groups/g"
        _unauthorised(await http.put(membership, headers=_bearer(gw.url + membership)))
        # A token for the public URL, arriving at 127.0.0.1:<port> (behind the balancer).
        for audience in (PUBLIC + send, f"{PUBLIC}:443{send}?api-version=2022-06-01"):
            r = await http.post(send, json=SEND, headers=_bearer(audience))
            assert r.status_code == 202, (audience, r.text)
        r = await http.put(
            membership, headers={**_bearer(PUBLIC + membership), "Host": "x.example"}
        )
        assert r.status_code == 200, r.text
        # Client tokens name the public endpoint too; :generateToken mints them so.
        negotiate = "/hubs/chat/negotiate?negotiateVersion=1"
        r = await http.post(negotiate, headers={"Authorization": f"Bearer {client_token('u')}"})
        assert r.status_code == 401 and "client endpoint" in r.json()["message"], r.text
        r = await http.post(
            "/api/hubs/chat/:generateToken?userId=u",
            headers=_bearer(f"{PUBLIC}/api/hubs/chat/:generateToken"),
        )
        assert r.status_code == 200, r.text
        minted = r.json()["token"]
        r = await http.post(negotiate, headers={"Authorization": f"Bearer {minted}"})
        assert r.status_code == 200, r.text
    # hubbub's own SDK signs the URL it calls, so it is pointed at the public URL (here the
    # request still goes to 127.0.0.1: the transport's address is not what is signed).
    transport = httpx.AsyncHTTPTransport()
    async with httpx.AsyncClient(
        base_url=PUBLIC, auth=ServiceAuth(ACCESS_KEY), transport=_Redirect(transport, gw.url)
    ) as http:
        r = await http.post(send, json=SEND)
        assert r.status_code == 202, r.text


class _Redirect(httpx.AsyncBaseTransport):
    """Sends every request to ``target`` (scheme, host, port) with its URL otherwise intact,
    as a load balancer in front of the public URL would."""

    def __init__(self, inner: httpx.AsyncBaseTransport, target: str) -> None:
        self.inner = inner
        self.target = httpx.URL(target)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(
            scheme=self.target.scheme, host=self.target.host, port=self.target.port
        )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
