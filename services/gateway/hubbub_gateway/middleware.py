"""The gateway's own middleware: the body limit, and CORS that costs nothing without ``Origin``.

Both wrap every HTTP request, the REST sends included (thousands a second), so each does its
work only when there is some (REST callers send no ``Origin`` and announce their body's
length). Each is a plain function, made by a factory that ``add_middleware`` takes like a
class, that hands on the next app's awaitable when there is nothing to do: a coroutine, or a
call through an instance's ``__call__``, per layer and request is a measurable part of a
send's cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import too_large_response

_VARY_ORIGIN = (b"vary", b"Origin")


def body_limit(app: ASGIApp, limit: int) -> ASGIApp:
    """Refuse request bodies over ``limit`` with 413 before anything parses them.

    A body whose ``Content-Length`` is within the limit is passed on untouched (the server
    delivers no more than announced); one without is counted as it is read, and reading past
    the limit raises :class:`_TooLarge` out of ``receive``, which ends the request here.
    """

    def limited(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return app(scope, receive, send)
        length = -1
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if length > limit:
            return too_large(scope, receive, send)
        if length >= 0 and not chunked:
            return app(scope, receive, send)
        return counted(scope, receive, send)

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0

        async def receive_within_limit() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        try:
            await app(scope, receive_within_limit, send)
        except _TooLarge:
            await too_large(scope, receive, send)

    async def too_large(scope: Scope, receive: Receive, send: Send) -> None:
        await too_large_response(limit)(scope, receive, send)

    return limited


class _TooLarge(Exception):
    pass


def cors(app: ASGIApp, /, **options: Any) -> ASGIApp:
    """Starlette's CORS middleware for requests with an ``Origin`` header; for the others, the
    one thing it does to them, done directly: ``Vary: Origin`` on the response."""
    starlette_cors = CORSMiddleware(app, **options)

    def without_origin(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http":
            for name, _ in scope["headers"]:
                if name == b"origin":
                    break
            else:
                return app(scope, receive, _vary_origin(send))
        return starlette_cors(scope, receive, send)

    return without_origin


def origin_allowed(origin: str, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a page from ``origin`` may open a WebSocket (browsers do not apply CORS to
    them, so the gateway checks): listed in ``HUBBUB_CORS_ORIGINS`` (``*`` = any), or the
    gateway's own origin, as the ``Host`` it was reached by says (same-origin always works)."""
    if "*" in allowed or origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def _vary_origin(send: Send) -> Send:
    def vary(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            headers = message.get("headers", ())
            for name, _ in headers:
                if name == b"vary":  # join it in, as Starlette does
                    mutable = MutableHeaders(scope=message)
                    mutable["Vary"] = ", ".join([*mutable.getlist("Vary"), "Origin"])
                    break
            else:
                message["headers"] = [*headers, _VARY_ORIGIN]
        return send(message)

    return vary
