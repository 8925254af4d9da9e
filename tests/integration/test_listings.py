"""The listing endpoints (Hubbub extensions) against real gateways and Redis: pages walk a
whole group, cursors from clients are checked, every listing needs a token for its URL."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hubbub.sdk.client import HubbubClient
from hubbub.tokens import mint_token
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient, client_token

MEMBERS = 250


def signed(url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(ACCESS_KEY, url)}"}


async def get(http: httpx.AsyncClient, url: str, **params: Any) -> httpx.Response:
    """A GET signed for its URL (the query is not part of the audience)."""
    return await http.get(url, params=params, headers=signed(url))


async def walk(http: httpx.AsyncClient, url: str, limit: int) -> tuple[list[Any], int]:
    """Every item of a listing, page after page; and how many pages it took."""
    items: list[Any] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        r = await get(http, url, **params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "next"}, body
        assert len(body["items"]) <= limit, (len(body["items"]), limit)
        items += body["items"]
        pages += 1
        assert pages < 1000, "the walk does not end"
        cursor = body["next"]
        if cursor is None:
            return items, pages


@pytest.fixture
async def hub(deployment: Deployment) -> AsyncIterator[tuple[str, list[RawClient]]]:
    """One gateway; MEMBERS connections (users u0..), all in group ``big``; alice's 3
    connections, in ``small``; alice bound to groups ``g1`` (durable) and ``g2`` (an hour)."""
    gateway = await deployment.start_gateway()
    clients: list[RawClient] = []
    async with httpx.AsyncClient() as http:
        for start in range(0, MEMBERS, 50):
            clients += await asyncio.gather(
                *(
                    RawClient.connect(gateway.url, token=client_token(f"u{n}"), http=http)
                    for n in range(start, min(start + 50, MEMBERS))
                )
            )
        alice = [
            await RawClient.connect(gateway.url, token=client_token("alice"), http=http)
            for _ in range(3)
        ]
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        for start in range(0, MEMBERS, 50):
            await asyncio.gather(
                *(
                    api.add_connection_to_group("big", c.connection_id or "")
                    for c in clients[start : start + 50]
                )
            )
        for c in alice:
            await api.add_connection_to_group("small", c.connection_id or "")
        await api.add_user_to_group("g1", "alice")
        await api.add_user_to_group("g2", "alice", ttl=3600)
    yield gateway.url, [*clients, *alice]
    for c in [*clients, *alice]:
        await c.close()


async def test_a_group_of_250_walked_100_at_a_time_gives_every_member(
    hub: tuple[str, list[RawClient]],
) -> None:
    base, clients = hub
    members = {c.connection_id for c in clients[:MEMBERS]}
    async with httpx.AsyncClient() as http:
        items, pages = await walk(http, f"{base}/api/hubs/chat/groups/big/connections", 100)
        # SCAN may repeat a member across pages; every member comes at least once, nothing else.
        assert set(items) == members
        assert len(items) >= MEMBERS and pages >= 3, (len(items), pages)
        # The legacy prefix lists the same.
        legacy, _ = await walk(http, f"{base}/api/v1/hubs/chat/groups/big/connections", 1000)
        assert set(legacy) == members

        alice = {c.connection_id for c in clients[MEMBERS:]}
        items, _ = await walk(http, f"{base}/api/hubs/chat/users/alice/connections", 1)
        assert set(items) == alice and len(items) == 3  # a small set: no repeats
        items, _ = await walk(http, f"{base}/api/hubs/chat/users/nobody/connections", 10)
        assert items == []


async def test_groups_of_a_user_and_of_a_hub(hub: tuple[str, list[RawClient]]) -> None:
    base, _ = hub
    async with httpx.AsyncClient() as http:
        # Two pages of one: the whole (small) set comes in one Redis batch, cut after g1.
        items, pages = await walk(http, f"{base}/api/hubs/chat/users/alice/groups", 1)
        assert pages == 2
        assert [g["name"] for g in items] == ["g1", "g2"]
        assert items[0]["expiresAt"] is None
        assert isinstance(items[1]["expiresAt"], float) and items[1]["expiresAt"] > 0

        groups, _ = await walk(http, f"{base}/api/hubs/chat/groups", 1)
        # alice's connections joined g1 and g2 through her bindings.
        assert sorted(groups, key=lambda g: g["name"]) == [
            {"name": "big", "connections": MEMBERS},
            {"name": "g1", "connections": 3},
            {"name": "g2", "connections": 3},
            {"name": "small", "connections": 3},
        ]
        r = await get(http, f"{base}/api/hubs/chat/counts")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "connections": MEMBERS + 3,
            "groups": 4,
            "users": MEMBERS + 1,
            "complete": True,
        }
        # The existence checks beside them still answer as before.
        r = await get(http, f"{base}/api/hubs/chat/groups/big")
        assert r.status_code == 200 and r.content == b"", r.text
        r = await get(http, f"{base}/api/hubs/chat/users/alice/groups/g2")
        assert r.status_code == 200 and r.content == b"", r.text
        r = await get(http, f"{base}/api/hubs/chat/users/alice/groups/nope")
        assert r.status_code == 404, r.text


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("cursor", "code"),
    [
        ("not a cursor!", "Error.InvalidCursor"),  # not base64url
        (_cursor("abc"), "Error.InvalidCursor"),  # not a position
        (_cursor("-1"), "Error.InvalidCursor"),
        (_cursor(str(2**64)), "Error.InvalidCursor"),  # beyond Redis's cursors
        (_cursor("1" * 21), "Error.InvalidCursor"),
        (_cursor("12:"), "Error.InvalidCursor"),  # a mark without a name
        ("gA", "Error.InvalidCursor"),  # not UTF-8
        ("A" * 6001, "Error.InvalidRequest"),  # longer than any cursor we make
    ],
)
async def test_a_cursor_we_did_not_make_is_a_400(
    deployment: Deployment, cursor: str, code: str
) -> None:
    gateway = await deployment.start_gateway()
    async with httpx.AsyncClient() as http:
        for path in (
            "/groups/big/connections",
            "/users/a/connections",
            "/users/a/groups",
            "/groups",
        ):
            r = await get(http, f"{gateway.url}/api/hubs/chat{path}", cursor=cursor)
            assert r.status_code == 400, (path, r.text)
            assert r.json()["code"] == code, r.text
            assert r.headers["x-ms-error-code"] == code


async def test_limits_and_tokens(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway()
    url = f"{gateway.url}/api/hubs/chat/groups/big/connections"
    async with httpx.AsyncClient() as http:
        for limit in (0, -1, 1001, "x"):
            r = await get(http, url, limit=limit)
            assert r.status_code == 400, (limit, r.text)
            assert r.json()["code"] == "Error.InvalidRequest", r.text
        r = await get(http, url, limit=1000)
        assert r.status_code == 200 and r.json() == {"items": [], "next": None}, r.text
        # A round-trip of our own cursor shape is accepted.
        r = await get(http, url, cursor=_cursor("0:some group"))
        assert r.status_code == 200, r.text

        listings = ["/groups/big/connections", "/users/a/connections", "/users/a/groups",
                    "/groups", "/counts"]  # fmt: skip
        for path in listings:
            target = f"{gateway.url}/api/hubs/chat{path}"
            r = await http.get(target)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["code"] == "Error.Unauthorized", r.text
            # A token for another URL: the existence check beside it, another hub.
            for other in (
                f"{gateway.url}/api/hubs/chat/groups/big",
                f"{gateway.url}/api/hubs/x{path}",
            ):
                r = await http.get(target, headers=signed(other))
                assert r.status_code == 401, (path, other, r.text)
            wrong_key = mint_token("another-key-of-enough-length-000000", target)
            r = await http.get(target, headers={"Authorization": f"Bearer {wrong_key}"})
            assert r.status_code == 401, (path, r.text)
        # Names are checked like everywhere: too long a group is a 400.
        long_group = f"{gateway.url}/api/hubs/chat/groups/{'g' * 1025}/connections"
        r = await get(http, long_group)
        assert r.status_code == 400 and r.json()["code"] == "Error.InvalidName", r.text


async def test_glob_characters_in_hub_and_group_names_match_only_themselves(
    deployment: Deployment,
) -> None:
    """Hub names may hold ``[`` and ``]``, group names anything: as a SCAN pattern, hub
    ``h[1]`` would match hub ``h1``'s keys, group ``*`` every group."""
    gateway = await deployment.start_gateway()
    async with httpx.AsyncClient() as http:
        a = await RawClient.connect(gateway.url, hub="h[1]", token=client_token("ann"), http=http)
        b = await RawClient.connect(gateway.url, hub="h1", token=client_token("ben"), http=http)
        try:
            for hub, client in (("h[1]", a), ("h1", b)):
                async with HubbubClient(gateway.url, ACCESS_KEY, hub) as api:
                    await api.add_connection_to_group("*", client.connection_id or "")
                    await api.add_connection_to_group("g?", client.connection_id or "")
            url = f"{gateway.url}/api/hubs/h%5B1%5D/counts"
            r = await get(http, url)
            assert r.json() == {"connections": 1, "groups": 2, "users": 1, "complete": True}
            groups, _ = await walk(http, f"{gateway.url}/api/hubs/h%5B1%5D/groups", 10)
            assert sorted(g["name"] for g in groups) == ["*", "g?"]
            admin = {
                "Authorization": f"Bearer {mint_token(ACCESS_KEY, f'{gateway.url}/api/admin')}"
            }
            for prefix, expected in (("*", ["*"]), ("g", ["g?"]), ("?", []), ("", ["*", "g?"])):
                r = await http.get(
                    f"{gateway.url}/api/admin/hubs/h%5B1%5D/groups",
                    params={"prefix": prefix},
                    headers=admin,
                )
                assert sorted(g["name"] for g in r.json()["items"]) == expected, (prefix, r.text)
            r = await http.get(f"{gateway.url}/api/admin/hubs/h1/users", headers=admin)
            assert r.json() == {"items": ["ben"], "next": None}, r.text
        finally:
            await a.close()
            await b.close()
