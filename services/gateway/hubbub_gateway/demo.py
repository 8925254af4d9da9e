"""What ``GET /`` answers: the demo page under ``hubbub dev``, else a small JSON index.

With ``HUBBUB_DEMO_PAGE`` on (``hubbub dev`` sets it), ``/`` is a page (``static/demo/``) that
connects to this gateway as a user with the official ``@microsoft/signalr`` browser bundle
(vendored, ``static/vendor/signalr.min.js``), shows the messages it receives, joins groups
and sends through the REST API. The page never holds the access key: two endpoints mint
tokens for it, and exist only while the setting is on (a 404 otherwise, like any path):

- ``POST /demo/token`` ``{"user"}``: a client token for the demo hub, allowed to join and
  leave groups;
- ``POST /demo/rest-token`` ``{"path"}``: a REST token whose audience is that path under the
  demo hub's REST prefix on this gateway, so the page's own ``fetch`` is signed as a service's.

Anyone who can reach them acts as a service of the demo hub, so they are for a local
deployment only, and refuse a request from a page of another origin (``Origin`` other than
this gateway's): with ``hubbub dev``'s CORS allowing any origin, a page on the web would
otherwise get tokens from a developer's gateway through the browser.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from hubbub.protocol import names
from hubbub.settings import Settings
from hubbub.tokens import mint_token

from .apidocs import DOCS_PATH, STATIC
from .errors import ApiError
from .state import GatewayState

DEMO_HUB = "chat"
DEMO_ROLES = ["hubbub.joinLeaveGroup"]
TOKEN_MINUTES = 60
PAGE = STATIC / "demo" / "index.html"
MAX_PATH = 1024


class DemoUser(BaseModel):
    user: str = Field(min_length=1, max_length=names.MAX_USER_LENGTH)


class DemoPath(BaseModel):
    path: str = Field(min_length=1, max_length=MAX_PATH)


class DemoToken(BaseModel):
    token: str
    hub: str = DEMO_HUB


def index(app: FastAPI) -> dict[str, Any]:
    """``GET /`` without the demo page: what this is and where to go."""
    return {
        "name": "Hubbub",
        "version": app.version,
        "links": {
            "docs": DOCS_PATH,
            "openapi": app.openapi_url,
            "admin": "/admin",
            "health": "/api/health",
        },
    }


def _endpoint(request: Request) -> str:
    """This gateway's base URL for an audience: the first public URL when configured (the
    Host header is the caller's to choose), else the one the request came to."""
    state: GatewayState = request.app.state.hubbub
    public = state.tokens.origins.urls
    return public[0] if public else str(request.base_url).rstrip("/")


def _same_origin_only(request: Request) -> None:
    """Refuse a browser request from another origin's page (its ``Origin`` header); requests
    without one (curl, the SDK) pass: they could sign their own tokens with the key. And
    refuse a request addressed to a host name other than ``localhost`` (an IP address is
    fine): a page of another site that rebinds its own name to this gateway's address (DNS
    rebinding) is same-origin as far as the browser knows, but keeps its name in ``Host``."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{host}"
    if origin is not None and origin != own:
        raise ApiError(
            403, "Error.Demo.ForeignOrigin", f"the demo endpoints serve {own}'s page only"
        )
    if not _loopback_or_address(host):
        raise ApiError(
            403,
            "Error.Demo.ForeignOrigin",
            "the demo endpoints answer requests to localhost or an IP address only",
        )


def _loopback_or_address(host: str) -> bool:
    """``Host`` is ``localhost`` or an IP address (with or without a port)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or "]" in host else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def install(app: FastAPI, settings: Settings) -> None:
    """``GET /``, and the demo's endpoints when ``settings.demo_page`` is on."""
    if not settings.demo_page:

        @app.get("/", include_in_schema=False)
        async def front() -> JSONResponse:
            return JSONResponse(index(app))

        return

    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.post("/demo/token", include_in_schema=False)
    async def demo_token(request: Request, body: DemoUser) -> DemoToken:
        _same_origin_only(request)
        state: GatewayState = request.app.state.hubbub
        hub = state.hub(DEMO_HUB)
        token = mint_token(
            settings.access_key,
            f"{_endpoint(request)}/hubs/{hub}",
            minutes=TOKEN_MINUTES,
            user_id=names.user_id(body.user),
            hub=hub,
            roles=DEMO_ROLES,
        )
        return DemoToken(token=token, hub=hub)

    @app.post("/demo/rest-token", include_in_schema=False)
    async def demo_rest_token(request: Request, body: DemoPath) -> DemoToken:
        _same_origin_only(request)
        state: GatewayState = request.app.state.hubbub
        hub = state.hub(DEMO_HUB)
        prefix = f"/api/hubs/{hub}/"
        if not body.path.startswith(prefix) or "?" in body.path or "#" in body.path:
            raise ApiError(400, "Error.InvalidRequest", f"path: must start with {prefix}")
        token = mint_token(settings.access_key, _endpoint(request) + body.path, minutes=5)
        return DemoToken(token=token, hub=hub)
