"""The API reference a gateway serves: ``/openapi.json`` and Swagger UI at ``/docs``, offline.

Swagger UI's files are vendored under ``static/vendor`` (byte-for-byte from the npm package
``swagger-ui-dist``; ``static/vendor/README.md``) and served by the gateway, so ``/docs`` needs
no network but the gateway. ReDoc is not served: one renderer, kept offline, is enough.

The document is FastAPI's, adjusted once when first asked for:

- one operation per method, so a route that answers GET and HEAD gets two operation ids
  (``user_in_group`` and ``user_in_group_head``), never a duplicate;
- no ``422``: the gateway answers validation errors with ``400 {"code", "message"}``
  (:data:`.errors.ERROR_RESPONSES`, which the REST table documents on every operation);
- the bearer scheme every REST operation requires (``endpoints.SECURITY_SCHEME``), whose
  description says how to make a token for "Try it out"; and the admin console's
  (``admin.SECURITY_SCHEME``: one audience, ``<origin>/api/admin``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from . import admin
from .endpoints import SECURITY_SCHEME

STATIC = Path(__file__).parent / "static"
STATIC_PATH = "/static"
VENDOR = f"{STATIC_PATH}/vendor"
DOCS_PATH = "/docs"

BEARER_DESCRIPTION = (
    "A JWT signed (HS256) with the access key (`HUBBUB_ACCESS_KEY`), with `exp` and "
    "`aud` = **the exact URL of the request** (scheme, host, port and path; the query is "
    "ignored but `application`). A token therefore serves one operation on one path: for "
    '"Try it out", mint one for the URL Swagger UI shows under *Request URL*:\n\n'
    "    hubbub token --access-key KEY --audience "
    "http://127.0.0.1:8080/api/hubs/chat/:send\n\n"
    "and paste it here (without `Bearer`). `hubbub.sdk.client.HubbubClient` signs each call "
    "itself."
)


def _one_method_each(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Each documented route with several methods, as one route per method: the first keeps
    its operation id, the others get ``_<method>`` appended."""
    out: list[BaseRoute] = []
    for route in routes:
        methods = sorted(route.methods or ()) if isinstance(route, APIRoute) else []
        if not (isinstance(route, APIRoute) and route.include_in_schema and len(methods) > 1):
            out.append(route)
            continue
        base = route.operation_id or route.name
        for i, method in enumerate(methods):
            one = copy.copy(route)
            one.methods = {method}
            one.operation_id = base if i == 0 else f"{base}_{method.lower()}"
            out.append(one)
    return out


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document, built once (FastAPI's ``app.openapi`` contract)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=_one_method_each(list(app.routes)),
    )
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    components = spec.setdefault("components", {})
    schemas = components.get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": BEARER_DESCRIPTION,
        },
        admin.SECURITY_SCHEME: admin.SCHEME,
    }
    app.openapi_schema = spec
    return spec


def install(app: FastAPI) -> None:
    """``/static`` (the package's static files), ``/docs`` and the adjusted ``/openapi.json``.
    The app must be created with ``docs_url=None, redoc_url=None``."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC), name="static")
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{VENDOR}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{VENDOR}/swagger-ui.css",
            swagger_favicon_url=f"{root}{VENDOR}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )
