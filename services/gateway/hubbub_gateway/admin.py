"""The admin console: a static page at ``/admin`` and the JSON endpoints it polls.

The page (``static/admin/``: HTML, JavaScript and CSS, no build step, nothing from another
origin) loads without a token and asks for one. Its data come from ``/api/admin/...``, which
need a service token like every REST call, signed with the access key; since a page cannot
sign each URL without holding the key, one audience covers them all: ``<origin>/api/admin``
(``hubbub token --access-key K --audience http://host:port/api/admin``). Any gateway answers
for the whole deployment (it reads Redis); only the refusals are this gateway's own.

Every answer is bounded: gateways and workers (:data:`hubbub.redis.directory.MAX_GATEWAYS`),
hubs (:data:`~hubbub.redis.directory.MAX_HUBS`), pages (``limit``), refusals (the ring).
"""

from __future__ import annotations

import dataclasses
import time
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

from hubbub.redis.directory import (
    DEFAULT_LIMIT,
    MAX_CURSOR_LENGTH,
    MAX_LIMIT,
    MAX_PREFIX_LENGTH,
    Page,
)
from hubbub.tokens import TokenError, bearer

from .errors import ERROR_RESPONSES, ApiError
from .state import GatewayState

AUDIENCE_PATH = "/api/admin"
# The OpenAPI security scheme of the admin endpoints (the REST API's is per URL).
SECURITY_SCHEME = "adminToken"
SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "A JWT signed (HS256) with the access key, with `exp` and `aud` = "
    f"`<origin>{AUDIENCE_PATH}` (one token for every admin endpoint):\n\n"
    "    hubbub token --access-key KEY --audience "
    f"http://127.0.0.1:8080{AUDIENCE_PATH} --minutes 15",
}
HUBS_WITH_COUNTS = 20  # hubs whose group and user counts one answer walks for

# The page's own files, read once; served with a policy that forbids any other origin.
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
}
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", "admin", name).read_bytes()


async def admin_token(request: Request) -> GatewayState:
    """Every admin endpoint's check: a service token whose ``aud`` is ``<origin>/api/admin``."""
    state: GatewayState = request.app.state.hubbub
    token = bearer(request.headers.get("authorization", ""))
    if token is None:
        raise ApiError(401, "Error.Unauthorized", "missing 'Authorization: Bearer <token>'")
    try:
        state.tokens.verify(token, AUDIENCE_PATH)
    except TokenError as exc:
        raise ApiError(
            401, "Error.Unauthorized", f"{exc} (want aud <origin>{AUDIENCE_PATH})"
        ) from None
    return state


Admin = Annotated[GatewayState, Depends(admin_token)]
router = APIRouter(prefix=AUDIENCE_PATH, tags=["admin console (Hubbub extension)"])


def _route(name: str) -> dict[str, Any]:
    """What each admin route documents: its operation id, the bearer scheme, the refusals."""
    return {
        "name": name,
        "operation_id": name,
        "responses": ERROR_RESPONSES,
        "openapi_extra": {"security": [{SECURITY_SCHEME: []}]},
    }


def _page(page: Page[Any]) -> dict[str, Any]:
    items = [i if isinstance(i, str) else dataclasses.asdict(i) for i in page.items]
    return {"items": items, "next": page.next}


@router.get("/cluster", **_route("admin_cluster"))
async def cluster(state: Admin) -> dict[str, Any]:
    """Gateways (connections, draining, last heartbeat), workers (partitions held, last
    heartbeat) and each publish partition's holder, lag and pending."""
    directory = state.directory
    partitions = await directory.partition_list()
    return {
        "gateway": state.settings.gateway_id,
        "time": time.time(),
        "gateways": [dataclasses.asdict(g) for g in await directory.gateways()],
        "workers": [dataclasses.asdict(w) for w in await directory.workers(partitions)],
        "partitions": [dataclasses.asdict(p) for p in partitions],
    }


@router.get("/hubs", **_route("admin_hubs"))
async def hubs(state: Admin) -> dict[str, Any]:
    """Hubs the gateways hold connections of, with their counts (the first
    :data:`HUBS_WITH_COUNTS` of them; the others by name only)."""
    names, truncated = await state.directory.hubs()
    items: list[dict[str, Any]] = []
    for n, hub in enumerate(names):
        if n < HUBS_WITH_COUNTS:
            items.append({"name": hub, **dataclasses.asdict(await state.directory.counts(hub))})
        else:
            items.append({"name": hub})
    return {"items": items, "truncated": truncated}


@router.get("/hubs/{hub}/{kind}", **_route("admin_search"))
async def search(
    state: Admin,
    hub: str,
    kind: Literal["connections", "users", "groups"],
    prefix: Annotated[str, Query(max_length=MAX_PREFIX_LENGTH)] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
) -> dict[str, Any]:
    """A hub's connections (with user and gateway), users or groups (with their connection
    counts) whose names start with ``prefix``, one page."""
    name = state.hub(hub)
    directory = state.directory
    if kind == "connections":
        return _page(await directory.connections(name, limit, cursor, prefix))
    if kind == "users":
        return _page(await directory.users(name, limit, cursor, prefix))
    return _page(await directory.groups(name, limit, cursor, prefix))


@router.get("/refusals", **_route("admin_refusals"))
async def refusals(state: Admin) -> dict[str, Any]:
    """The refusals this gateway logged lately (newest first)."""
    return {"gateway": state.settings.gateway_id, "items": state.refusals.recent()}


def install(app: FastAPI) -> None:
    """The page (no token needed: it holds no data) and the JSON endpoints."""
    files = {name: (_read(name), media) for name, media in _FILES.items()}
    headers = {"content-security-policy": _POLICY, "cache-control": "no-cache"}

    @app.get("/admin", include_in_schema=False)
    async def page() -> Response:
        body, media = files["index.html"]
        return Response(body, media_type=media, headers=headers)

    @app.get("/admin/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in files or name == "index.html":
            raise ApiError(404, "Error.NotFound", "no such file", quiet=True)
        body, media = files[name]
        return Response(body, media_type=media, headers=headers)

    app.include_router(router)
