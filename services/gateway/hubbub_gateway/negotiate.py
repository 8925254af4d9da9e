"""Negotiate: the HTTP step before a SignalR client opens its WebSocket.

Stateless by design: the connection id and token are signed (bound to the hub and the user, see
:mod:`hubbub.tokens`), so whichever gateway receives the WebSocket can accept it, from that user
only. No sticky sessions.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from enum import Enum
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from hubbub.identity import IdentityProviderUnavailable, is_idp_token
from hubbub.protocol import names
from hubbub.tokens import (
    ClientIdentity,
    TokenError,
    bearer,
    connection_token,
    new_connection_id,
)

from .errors import KNOWN_ERRORS, ApiError, known_error_response
from .state import GatewayState

TAGS: list[str | Enum] = ["SignalR clients"]

TRANSPORTS = [{"transport": "WebSockets", "transferFormats": ["Text", "Binary"]}]


async def admit_client(
    state: GatewayState, hub: str, authorization: str | None, access_token: str | None
) -> tuple[str, ClientIdentity]:
    """The checks every SignalR client passes, at negotiate and again at the upgrade: the
    canonical hub name, room on this gateway (not draining, not full: checked before the
    token, so a full gateway does not verify signatures), and who the token says the client
    is. Raises :class:`ApiError`.

    The token: ``Authorization: Bearer`` first, else the ``access_token`` query (what
    browsers' WebSockets, which cannot set headers, send). An asymmetric one (RS256, ES256...)
    is an identity provider's, checked against its JWKS when ``HUBBUB_JWKS_URL`` is set
    (async: the keys may need fetching); any other is an access-key token."""
    try:
        hub = state.hub(hub)
    except names.InvalidName as exc:
        raise ApiError(404, "Error.Hub.Invalid", str(exc)) from None
    state.refuse_if_draining()
    state.refuse_if_full()
    token = bearer(authorization)
    if token is None:
        token = access_token
    if token is None:
        raise ApiError(401, "Error.Unauthorized", "an access token is required")
    try:
        if state.identity is not None and is_idp_token(token):
            return hub, await state.identity.identify(token, hub)
        return hub, state.client_tokens.verify(token, hub)
    except TokenError as exc:
        raise ApiError(401, "Error.Unauthorized", str(exc)) from None
    except IdentityProviderUnavailable as exc:
        raise ApiError(503, "Error.IdentityProvider.Unavailable", str(exc)) from None


async def negotiate(request: Request, hub: str, negotiateVersion: int = 0) -> JSONResponse:
    """Documentation only: the route is served by :class:`NegotiateEndpoint` (:func:`install`)."""
    raise AssertionError("served by NegotiateEndpoint")  # pragma: no cover


class NegotiateEndpoint:
    """Negotiate as a plain ASGI app: the route's app, and what the send shortcut
    (:func:`.endpoints.send_shortcut`) calls for ``POST /hubs/{hub}/negotiate``.

    Every connection negotiates once, and through FastAPI's request handling (dependencies,
    ``Request``, ``JSONResponse``) negotiate cost 285-331 µs of gateway CPU, 189-192 µs as
    this app (wrk, one gateway, same hour). It reads what FastAPI would: the first
    ``Authorization`` header, and the last value of each query parameter (Starlette's rule).
    """

    route = "POST /hubs/{hub}/negotiate"

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return self.serve(scope, receive, send, scope["path_params"]["hub"], "")

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: str, name: str) -> None:
        """Answer the negotiate at ``hub`` (``name``: no recipient here, always empty)."""
        authorization = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
                break
        raw_query = scope["query_string"]
        query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True))
        try:
            version = _version(query.get("negotiateVersion"))
            state: GatewayState = scope["app"].state.hubbub
            hub, identity = await admit_client(state, hub, authorization, query.get("access_token"))
        except KNOWN_ERRORS as exc:
            refusal = known_error_response(scope, exc)
            assert refusal is not None
            return await refusal(scope, receive, send)
        stateful = query.get("useStatefulReconnect") == "true"
        body = orjson.dumps(answer(state, hub, identity, version, stateful))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _version(raw: str | None) -> int:
    """``negotiateVersion`` as FastAPI read it into an ``int``: absent is 0; ``+1``, ``1.0``
    and big numbers pass; anything else is a ``400``."""
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise ApiError(
            400,
            "Error.InvalidRequest",
            "query.negotiateVersion: Input should be a valid integer, unable to parse string "
            "as an integer",
        )
    return int(number)


def answer(
    state: GatewayState, hub: str, identity: ClientIdentity, version: int, stateful: bool
) -> dict[str, object]:
    """The negotiate response for an admitted client: a signed connection id (and, for v1, a
    connection token), the one transport, and stateful reconnect when asked for and on."""
    settings = state.settings
    v1 = version >= 1
    connection_id = new_connection_id(settings.access_key, hub, identity.user_id, in_token=v1)
    body: dict[str, object] = {
        "connectionId": connection_id,
        "negotiateVersion": 1 if v1 else 0,
        "availableTransports": TRANSPORTS,
    }
    # Stateful reconnect, when the client asks (withStatefulReconnect()) and it is on: the
    # token says so, signed, to whichever gateway the client re-attaches to.
    stateful = v1 and stateful and settings.reconnect_window > 0
    if stateful:
        body["useStatefulReconnect"] = True
    if v1:
        body["connectionToken"] = connection_token(
            settings.access_key,
            connection_id,
            settings.connection_token_ttl,
            resumable=stateful,
        )
    return body


def install(app: FastAPI) -> NegotiateEndpoint:
    """Add the negotiate route (documented by :func:`negotiate`, served by the endpoint);
    the endpoint, for the send shortcut."""
    app.router.add_api_route(
        "/hubs/{hub}/negotiate",
        negotiate,
        methods=["POST"],
        operation_id="negotiate",
        description="Answer v0 (pysignalr, signalrcore) and v1 (the JS client) negotiation.",
        tags=TAGS,
        response_class=JSONResponse,
    )
    route = app.router.routes[-1]
    assert isinstance(route, APIRoute) and route.endpoint is negotiate
    endpoint = NegotiateEndpoint()
    route.app = endpoint
    return endpoint
