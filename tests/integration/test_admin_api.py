"""The admin console's JSON endpoints refuse without their token, and its page loads nothing
from another origin."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import websockets

from hubbub.sdk.client import HubbubClient
from hubbub.tokens import mint_token
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token

ADMIN_JSON = [
    "/api/admin/cluster",
    "/api/admin/hubs",
    "/api/admin/hubs/chat/connections",
    "/api/admin/hubs/chat/users?prefix=a",
    "/api/admin/hubs/chat/groups",
    "/api/admin/refusals",
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_admin_endpoints_need_a_token_for_the_admin_audience(
    deployment: Deployment,
) -> None:
    gateway = await deployment.start_gateway()
    base = gateway.url
    good = mint_token(ACCESS_KEY, f"{base}/api/admin")
    wrong = {
        "none": {},
        "not a JWT": bearer("nonsense"),
        "a REST URL": bearer(mint_token(ACCESS_KEY, f"{base}/api/hubs/chat/groups")),
        "the endpoint's own URL": bearer(mint_token(ACCESS_KEY, f"{base}/api/admin/cluster")),
        "another key": bearer(
            mint_token("another-key-of-enough-length-000000", f"{base}/api/admin")
        ),
        "expired": bearer(mint_token(ACCESS_KEY, f"{base}/api/admin", minutes=-5)),
        "a client token": bearer(mint_token(ACCESS_KEY, f"{base}/client", user_id="u")),
    }
    async with httpx.AsyncClient(base_url=base) as http:
        for path in ADMIN_JSON:
            for why, headers in wrong.items():
                r = await http.get(path, headers=headers)
                assert r.status_code == 401, (path, why, r.text)
                body = r.json()
                assert body["code"] == "Error.Unauthorized" and body["message"], (path, why, body)
            r = await http.get(path, headers=bearer(good))
            assert r.status_code == 200, (path, r.text)
        # The token as the page and the README say to make it.
        cli = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "hubbub"), "token", "--access-key", ACCESS_KEY,
            "--audience", f"{base}/api/admin", "--minutes", "5",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await cli.communicate()
        assert cli.returncode == 0
        made = out.decode().strip()
        r = await http.get("/api/admin/cluster", headers=bearer(made))
        assert r.status_code == 200, r.text
        # What an answer holds, with no worker and no client: this gateway, 16 partitions.
        cluster = (await http.get("/api/admin/cluster", headers=bearer(good))).json()
        assert cluster["gateway"] == f"{deployment.prefix}-gw1"
        assert [g["id"] for g in cluster["gateways"]] == [f"{deployment.prefix}-gw1"]
        assert cluster["workers"] == []
        assert [p["partition"] for p in cluster["partitions"]] == list(range(16))
        assert all(p["worker"] is None for p in cluster["partitions"])
        # Bounded pages and checked names, as the REST listings.
        r = await http.get("/api/admin/hubs/chat/users?limit=1001", headers=bearer(good))
        assert r.status_code == 400 and r.json()["code"] == "Error.InvalidRequest", r.text
        r = await http.get("/api/admin/hubs/chat/users?cursor=%21", headers=bearer(good))
        assert r.status_code == 400 and r.json()["code"] == "Error.InvalidCursor", r.text
        r = await http.get("/api/admin/hubs/chat/secrets", headers=bearer(good))
        assert r.status_code == 400, r.text
        r = await http.get("/api/admin/hubs/1bad/users", headers=bearer(good))
        assert r.status_code == 400 and r.json()["code"] == "Error.InvalidName", r.text
        # The refusals above are this gateway's recent refusals, newest first, bounded.
        refusals = (await http.get("/api/admin/refusals", headers=bearer(good))).json()
        assert refusals["gateway"] == f"{deployment.prefix}-gw1"
        items = refusals["items"]
        assert 0 < len(items) <= 100
        assert items[0]["path"] == "/api/admin/hubs/1bad/users" and items[0]["status"] == 400
        assert all(set(i) == {"time", "status", "code", "path", "message"} for i in items)
        assert not any("nonsense" in i["message"] for i in items)  # no token is echoed


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "data", "poster") and value:
                self.urls.append(value)


async def test_the_page_needs_no_token_and_nothing_from_elsewhere(
    deployment: Deployment,
) -> None:
    gateway = await deployment.start_gateway()
    base = gateway.url
    origin = urlsplit(base).netloc
    async with httpx.AsyncClient(base_url=base) as http:
        page = await http.get("/admin")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy, policy
        links = _Links()
        links.feed(page.text)
        assert sorted(links.urls) == ["/admin/admin.css", "/admin/admin.js"], links.urls
        texts = {"/admin": page.text}
        for url in links.urls:
            r = await http.get(url)
            assert r.status_code == 200, (url, r.text)
            texts[url] = r.text
        for url, body in texts.items():
            for found in re.findall(r"""(?:https?:)?//[^\s"'`)<>]+""", body):
                # Nothing absolute on another host (comments and the token command included).
                host = urlsplit(found if ":" in found.split("//")[0] else "http:" + found).netloc
                assert host in ("", origin), (url, found)
            assert "@import" not in body and "url(" not in body, url
        resolved = {urlsplit(urljoin(f"{base}/admin", u)).netloc for u in links.urls}
        assert resolved == {origin}
        # Only the page's own files are served there.
        r = await http.get("/admin/..%2Fendpoints.py")
        assert r.status_code == 404, r.text
        r = await http.get("/admin/index.py")
        assert r.status_code == 404, r.text


async def test_a_draining_gateway_shows_as_draining(deployment: Deployment) -> None:
    """SIGTERM: the gateway drains until its clients' Close has gone out; a client that
    stopped reading with megabytes waiting for it holds the drain open until the gateway
    gives up on it (the close timeout, 5 s), as in tests/faults/test_drain.py. Meanwhile
    the other gateway's console reports it draining, and then gone."""
    first = await deployment.start_gateway(HUBBUB_SEND_BUFFER_MAX=str(64 * 1024 * 1024))
    second = await deployment.start_gateway()
    deployment.start_worker()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", first.port or 0))
    stubborn = await websockets.connect(
        first.url.replace("http://", "ws://") + f"/hubs/chat?access_token={client_token('u')}",
        sock=sock,
        max_queue=1,  # stops reading once one message waits unconsumed
        max_size=None,
    )
    await stubborn.send('{"protocol":"json","version":1}\x1e')
    assert await stubborn.recv() == "{}\x1e"
    reader = await RawClient.connect(first.url)
    async with HubbubClient(first.url, ACCESS_KEY, "chat") as api:
        for n in range(200):
            await api.send_to_all("fill", ["x" * 20_000, n])
        for n in range(200):  # all written to the stubborn client too
            assert (await reader.recv())["arguments"][1] == n
    admin = bearer(mint_token(ACCESS_KEY, f"{second.url}/api/admin"))
    ours = f"{deployment.prefix}-gw1"
    async with httpx.AsyncClient(base_url=second.url) as http:

        async def status() -> dict[str, Any]:
            r = await http.get("/api/admin/cluster", headers=admin)
            assert r.status_code == 200, r.text
            return {g["id"]: g for g in r.json()["gateways"]}

        async def reported() -> bool:
            return (await status())[ours]["connections"] == 2

        await eventually(reported)
        assert (await status())[ours]["draining"] is False
        first.signal(signal.SIGTERM)

        async def draining() -> bool:
            gateway = (await status()).get(ours)
            return gateway is not None and gateway["draining"] is True and gateway["live"]

        await eventually(draining, timeout=4)

        async def gone() -> bool:  # deregistered once it stopped
            return ours not in await status()

        await eventually(gone, timeout=15)

    async def exited() -> bool:  # on its own: a second SIGTERM while it exits would kill it
        return first.returncode is not None

    await eventually(exited, timeout=15)
    assert first.returncode == 0, first.output()[-4000:]
    stubborn.transport.abort()
