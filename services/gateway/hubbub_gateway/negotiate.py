"""Negotiate: the HTTP step before a SignalR client opens its WebSocket.

Stateless by design: the connection id and token are signed (bound to the hub and the user, see
:mod:`hubbub.tokens`), so whichever gateway receives the WebSocket can accept it, from that user
only. No sticky sessions.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hubbub.identity import IdentityProviderUnavailable, is_idp_token
from hubbub.protocol import names
from hubbub.tokens import (
    ClientIdentity,
    TokenError,
    bearer,
    connection_token,
    new_connection_id,
)

from .errors import ApiError
from .state import GatewayState

router = APIRouter(tags=["SignalR clients"])

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


@router.post("/hubs/{hub}/negotiate", operation_id="negotiate")
async def negotiate(request: Request, hub: str, negotiateVersion: int = 0) -> JSONResponse:
    """Answer v0 (pysignalr, signalrcore) and v1 (the JS client) negotiation."""
    state: GatewayState = request.app.state.hubbub
    hub, identity = await admit_client(
        state, hub, request.headers.get("authorization"), request.query_params.get("access_token")
    )
    settings = state.settings
    v1 = negotiateVersion >= 1
    connection_id = new_connection_id(settings.access_key, hub, identity.user_id, in_token=v1)
    body: dict[str, object] = {
        "connectionId": connection_id,
        "negotiateVersion": 1 if v1 else 0,
        "availableTransports": TRANSPORTS,
    }
    # Stateful reconnect, when the client asks (withStatefulReconnect()) and it is on: the
    # token says so, signed, to whichever gateway the client re-attaches to.
    stateful = (
        v1
        and request.query_params.get("useStatefulReconnect") == "true"
        and settings.reconnect_window > 0
    )
    if stateful:
        body["useStatefulReconnect"] = True
    if v1:
        body["connectionToken"] = connection_token(
            settings.access_key,
            connection_id,
            settings.connection_token_ttl,
            resumable=stateful,
        )
    return JSONResponse(body)
