"""The REST endpoint table in one process (the real app, lifespan and Redis): the documented
send routes are served by the same ASGI apps as the shortcut, CORS and the body limit wrap the
send endpoints like any route, draining is refused in its place in the order of checks, and
``:generateToken`` takes its default lifetime from the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from hubbub.dev.embedded import RedisProcess
from hubbub.sdk.client import ServiceAuth
from hubbub.settings import Settings
from hubbub_gateway.app import create_app
from hubbub_gateway.endpoints import PREFIXES, table
from hubbub_gateway.ingest import BatchEndpoint, RawEndpoint, SendEndpoint
from hubbub_gateway.state import GatewayState
from tests.support.processes import ACCESS_KEY
from tests.support.rawclient import client_token

LIMIT = 4096
JSON = {"content-type": "application/json"}
ORIGIN = {"origin": "http://app.test"}


@pytest.fixture
async def app(redis_server: RedisProcess, prefix: str) -> AsyncIterator[FastAPI]:
    settings = Settings(
        redis_url=redis_server.url,
        key_prefix=prefix,
        access_key=ACCESS_KEY,
        gateway_id=f"{prefix}-inproc",
        max_body_size=LIMIT,
        token_default_minutes=7,
        cors_origins=["http://app.test"],
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(
        transport=transport, base_url="http://gw.test", auth=ServiceAuth(ACCESS_KEY)
    )


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as http:
        yield http


@pytest.fixture
async def routes_only(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The router alone, without any middleware: what serves a request the shortcut did not
    take (the app's own ``__call__`` would set ``scope["app"]``)."""

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app
        await app.router(scope, receive, send)

    async with client(router) as http:
        yield http


def test_every_send_and_batch_route_is_served_by_its_endpoint_app(app: FastAPI) -> None:
    sends = {
        prefix + e.path: e for prefix in PREFIXES for e in table(Settings()) if e.body is not None
    }
    served = {
        route.path_format: route.app  # the template, without the routes' NameConvertor
        for route in app.routes
        if isinstance(route, APIRoute) and isinstance(route.app, RawEndpoint)
    }
    assert served.keys() == sends.keys()
    for path, raw in served.items():
        endpoint = sends[path]
        assert raw.route == f"POST {path}"
        if isinstance(raw, SendEndpoint):
            assert raw.kind == endpoint.kind
        else:
            assert isinstance(raw, BatchEndpoint)


REQUESTS: list[tuple[str, bytes]] = [
    ("/api/hubs/chat/:send", b'{"target": "t", "arguments": [1]}'),
    ("/api/v1/hubs/chat/users/u/:send?application=App", b'{"target": "t"}'),
    ("/api/hubs/chat/groups/g/:send?excluded=a&excluded=b", b'{"target": "t"}'),
    ("/api/hubs/chat/connections/c/:send", b'{"target": "t"}'),
    ("/api/hubs/chat/:batch", b'{"messages": [{"to": "all", "target": "t"}]}'),
    ("/api/hubs/chat/:send", b"not json"),
    ("/api/hubs/chat/:send", b'{"target": "", "arguments": 5}'),
    ("/api/hubs/1bad/:send", b'{"target": "t"}'),
    ("/api/hubs/chat/groups/%20/:send", b'{"target": "t"}'),
    ("/api/hubs/chat/:send?excluded=bad%20id", b'{"target": "t"}'),
    ("/api/hubs/chat/:send", b'{"target": "t", "arguments": [NaN, 123456789012345678901234]}'),
    ("/api/hubs/chat/:batch", b'{"messages": [{"to": "user", "name": " ", "target": "t"}]}'),
]


@pytest.mark.parametrize(("path", "body"), REQUESTS)
async def test_the_router_answers_as_the_shortcut_does(
    http: httpx.AsyncClient, routes_only: httpx.AsyncClient, path: str, body: bytes
) -> None:
    """The shortcut only skips the router: the route finds the same app for the request."""
    fast = await http.post(path, content=body, headers=JSON)
    routed = await routes_only.post(path, content=body, headers=JSON)
    assert routed.status_code == fast.status_code, routed.text
    if fast.status_code == 202:
        assert routed.json().keys() == fast.json().keys()
    else:
        assert routed.content == fast.content
        assert routed.headers["x-ms-error-code"] == fast.headers["x-ms-error-code"]
    assert fast.headers["vary"] == "Origin"  # CORS wraps the shortcut; the bare router has none
    assert "vary" not in routed.headers


NEGOTIATES = [
    "/hubs/chat/negotiate?negotiateVersion=1&access_token={token}",
    "/hubs/Chat/negotiate?access_token={token}",
    "/hubs/chat/negotiate?negotiateVersion=1&useStatefulReconnect=true&access_token={token}",
    "/hubs/chat/negotiate?negotiateVersion=x&access_token={token}",
    "/hubs/chat/negotiate?negotiateVersion=1",
    "/hubs/chat/negotiate?access_token=nope",
    "/hubs/1bad/negotiate?access_token={token}",
]


@pytest.mark.parametrize("url", NEGOTIATES)
async def test_the_router_negotiates_as_the_shortcut_does(app: FastAPI, url: str) -> None:
    """Negotiate, too, is one ASGI app (:class:`hubbub_gateway.negotiate.NegotiateEndpoint`)
    behind the shortcut and the route alike."""

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app
        await app.router(scope, receive, send)

    url = url.format(token=client_token("u"))
    answers = []
    for asgi in (app, router):
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as plain:
            answers.append(await plain.post(url))
    fast, routed = answers
    assert routed.status_code == fast.status_code, routed.text
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    if fast.status_code == 200:
        assert routed.json().keys() == fast.json().keys()
        assert fast.json()["negotiateVersion"] == routed.json()["negotiateVersion"]
    else:
        assert routed.content == fast.content
        assert fast.status_code in (400, 401, 404), fast.text


async def test_cors_and_the_body_limit_wrap_the_send_endpoints(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    preflight = await http.options(
        "/api/hubs/chat/:batch", headers={**ORIGIN, "access-control-request-method": "POST"}
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.test"
    answers = [await http.post("/api/hubs/chat/:send", json={"target": "t"}, headers=ORIGIN)]
    unsigned = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test")
    async with unsigned:
        for headers in ({}, {"authorization": "Bearer nope"}):
            answers.append(
                await unsigned.post(
                    "/api/hubs/chat/:send", json={"target": "t"}, headers={**ORIGIN, **headers}
                )
            )
    big = b'{"target": "t", "arguments": ["' + b"a" * LIMIT + b'"]}'
    answers.append(await http.post("/api/hubs/chat/:send", content=big, headers={**JSON, **ORIGIN}))
    assert [r.status_code for r in answers] == [202, 401, 401, 413]
    for r in answers:
        assert r.headers["access-control-allow-origin"] == "http://app.test"
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["vary"] == "Origin"


async def test_draining_is_refused_after_the_body_and_before_the_names(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    state: GatewayState = app.state.hubbub
    state.draining = True
    try:
        for path in ("/api/hubs/chat/:send", "/api/hubs/chat/connections/bad%20id/:send"):
            r = await http.post(path, json={"target": "t"})
            assert r.status_code == 503 and r.headers["x-ms-error-code"] == "Error.Draining"
        r = await http.post("/api/hubs/chat/:batch", json={"messages": [{"to": "x"}]})
        assert r.status_code == 400 and r.json()["code"] == "Error.InvalidRequest"
        r = await http.post(
            "/api/hubs/chat/:batch", json={"messages": [{"to": "all", "target": "t"}]}
        )
        assert r.status_code == 503 and r.json()["code"] == "Error.Draining"
    finally:
        state.draining = False


async def test_generated_tokens_last_the_configured_default(http: httpx.AsyncClient) -> None:
    for query, minutes in (({}, 7), ({"minutesToExpire": 2}, 2)):
        r = await http.post("/api/hubs/chat/:generateToken", params=query)
        assert r.status_code == 200, r.text
        claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == minutes * 60
    spec = (await http.get("/openapi.json")).json()
    params = spec["paths"]["/api/hubs/{hub}/:generateToken"]["post"]["parameters"]
    minutes_param = next(p for p in params if p["name"] == "minutesToExpire")
    assert minutes_param["schema"]["default"] == 7
