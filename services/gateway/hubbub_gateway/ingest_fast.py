"""The hot REST sends on a raw ASGI path, in front of the FastAPI app.

``POST .../:send`` (to all, ``users/{u}``, ``groups/{g}``, ``connections/{c}``) and
``POST .../:batch`` under ``/api/hubs/{hub}`` and the legacy ``/api/v1/hubs/{hub}`` are what
internal services call thousands of times a second, and FastAPI's layers (routing, dependency
solving, request objects, middleware) took about two thirds of the gateway's CPU per request.
:class:`FastSends`, in front of the whole FastAPI app (:class:`FastSendsApp`), answers them
directly with the functions the FastAPI routes use (:mod:`.ingest`, :mod:`.errors`): the same
checks, in the same order, with the same answers, byte for byte:

    413 body over the limit  ->  400 not JSON  ->  401 token  ->  400 hub name
    ->  400 body (the pydantic models)  ->  503 draining  ->  400 names  ->  202 + message id

Everything else goes on to the FastAPI app, and so do the send requests this path leaves to it:
those with an ``Origin`` header (CORS answers them), without a JSON content type (FastAPI has
its own answer to those) or under a ``root_path``. The FastAPI routes stay, for them and for
the OpenAPI documentation.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hubbub.protocol import names
from hubbub.wire.envelopes import Kind

from .errors import (
    KNOWN_ERRORS,
    ApiError,
    invalid_request,
    known_error_response,
    too_large_response,
)
from .ingest import (
    EXCLUDABLE,
    BatchBody,
    SendBody,
    accept_batch,
    accept_send,
    check_service_token,
)
from .state import GatewayState

_PATH = re.compile(r"/api(/v1)?/hubs/([^/]+)(?:/(users|groups|connections)/([^/]+))?/:(send|batch)")
_KINDS = {None: Kind.ALL, "users": Kind.USER, "groups": Kind.GROUP, "connections": Kind.CONNECTION}
_PARAMS = {None: "", "users": "/users/{user}", "groups": "/groups/{group}",
           "connections": "/connections/{connection}"}  # fmt: skip
# Route templates, as the FastAPI routes name their spans ("POST /api/hubs/{hub}/:send").
_ROUTES = {
    (v1, sub, op): f"POST /api{v1 or ''}/hubs/{{hub}}{_PARAMS[sub]}/:{op}"
    for v1 in (None, "/v1")
    for sub in _PARAMS
    for op in ("send", "batch")
}
# Every response of the app passes CORSMiddleware, which adds this when there is no Origin.
_VARY = (b"vary", b"Origin")
_NO_TRACE: dict[str, str] = {}
_EMPTY = object()  # no body at all, which FastAPI tells apart from a JSON null

Model = TypeVar("Model", bound=BaseModel)


class _Disconnected(Exception):
    pass


class _TooLarge(Exception):
    pass


class FastSends:
    """ASGI app: the send endpoints answered directly, anything else passed on to ``app``.

    ``owner`` is the Starlette app whose ``state.hubbub`` the lifespan fills in.
    """

    def __init__(self, app: ASGIApp, limit: int, owner: Starlette) -> None:
        self.app = app
        self.limit = limit
        self.owner = owner
        self._urls: dict[tuple[Any, ...], str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = _PATH.fullmatch(scope["path"])
        if match is None or (match[5] == "batch" and match[3] is not None):
            return await self.app(scope, receive, send)
        authorization = content_type = ""
        host = b""
        length = -1
        trace = _NO_TRACE
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif key == b"host":
                host = value
            elif key == b"origin":
                return await self.app(scope, receive, send)  # CORS
            elif key in (b"traceparent", b"tracestate"):
                trace = {**trace, key.decode(): value.decode("latin-1")}
        if content_type.partition(";")[0].strip().lower() != "application/json":
            return await self.app(scope, receive, send)
        try:
            if length > self.limit:
                raise _TooLarge
            raw = await self._body(receive)
        except _TooLarge:
            return await _answer(too_large_response(self.limit), scope, receive, send)
        except _Disconnected:
            return None
        try:
            url = self._url(scope, host)
            answer = await self._accept(scope, match, raw, authorization, url, trace)
        except KNOWN_ERRORS as exc:
            refusal = known_error_response(exc)
            assert refusal is not None
            return await _answer(refusal, scope, receive, send)
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [
                    (b"content-length", b"%d" % len(answer)),
                    (b"content-type", b"application/json"),
                    _VARY,
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    def _url(self, scope: Scope, host: bytes) -> str:
        """The request URL without its query, as Starlette's ``request.url`` spells it (the
        FastAPI routes check ``aud`` against that); remembered, callers reuse a few paths."""
        key = (scope["scheme"], host, scope["path"], scope.get("server"))
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= 4096:
                self._urls.clear()
            url = self._urls[key] = str(URL(scope={**scope, "query_string": b""}))
        return url

    async def _accept(
        self, scope: Scope, match: re.Match[str], raw: bytes, authorization: str, url: str,
        trace: dict[str, str],
    ) -> bytes:  # fmt: skip
        """The checks and the publish, in the FastAPI routes' order; the 202's body."""
        data = _json(raw)
        state: GatewayState = self.owner.state.hubbub
        check_service_token(state.tokens, authorization, url)
        v1, hub, sub, name, op = match.groups()
        application = None
        excluded: list[str] = []
        if scope["query_string"]:
            for key, value in parse_qsl(scope["query_string"].decode("latin-1"), True):
                if key == "application":
                    application = value
                elif key == "excluded":
                    excluded.append(value)
        hub = names.hub_name(hub, application)
        if op == "batch":
            ids = await accept_batch(state, hub, _validate(BatchBody, data))
            return orjson.dumps({"messageIds": ids})
        kind = _KINDS[sub]
        message_id = await accept_send(
            state,
            kind,
            hub,
            name or "",
            _validate(SendBody, data),
            excluded if kind in EXCLUDABLE else (),
            _ROUTES[v1, sub, op],
            trace,
        )
        return orjson.dumps({"messageId": message_id})

    async def _body(self, receive: Receive) -> bytes:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > self.limit:
                raise _TooLarge
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)


async def _answer(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    response.raw_headers.append(_VARY)
    await response(scope, receive, send)


class FastSendsApp(FastAPI):
    """The gateway's FastAPI app with :class:`FastSends` in front of all of it, FastAPI's own
    layers included (its telemetry hooks, error and body-limit middleware)."""

    def __init__(self, *, body_limit: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_sends = FastSends(super().__call__, body_limit, self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fast_sends(scope, receive, send)


def _json(raw: bytes) -> Any:
    """The body as FastAPI decodes it (``json.loads``, with the same errors); orjson first."""
    if not raw:
        return _EMPTY
    try:
        # One difference remains: orjson reads integers beyond 64 bits as floats (as JavaScript
        # clients would), json.loads as ints that no frame can carry (the routes answer 400).
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # not always an error for json.loads (NaN, a BOM, UTF-16): let it decide
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid_request([{"loc": ("body", exc.pos), "msg": "JSON decode error"}]) from None
    except Exception:  # e.g. invalid UTF-8; FastAPI answers these with a plain 400
        raise ApiError(400, "Error.Http400", "There was an error parsing the body") from None


def _validate(model: type[Model], data: Any) -> Model:
    """The body through its pydantic model, with FastAPI's error locations (``body.target``)."""
    if data is _EMPTY:
        raise invalid_request([{"loc": ("body",), "msg": "Field required"}])
    try:
        return model.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        raise invalid_request(
            {"loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()
        ) from None
