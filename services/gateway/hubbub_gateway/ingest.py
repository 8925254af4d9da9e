"""Ingest: the REST API internal services call, shaped after Azure SignalR Service's.

A send is validated, encoded into its SignalR frame once, and appended to the publish stream;
the ``202`` carries the stream entry id as the message id. Membership calls change Redis
atomically and tell the gateways concerned. Paths exist under ``/api/hubs`` and the legacy
``/api/v1/hubs``; ``api-version`` is accepted and ignored.

Sends arrive by two edges that share every rule: the FastAPI routes below (which also document
the API in OpenAPI) and the raw ASGI path of :mod:`.ingest_fast`, which serves the hot send
endpoints without FastAPI's routing and dependency injection. Both check the caller with
:func:`check_service_token`, the body with the pydantic models, and hand over to
:func:`accept_send` / :func:`accept_batch`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from hubbub.metrics import Metrics
from hubbub.protocol import names
from hubbub.protocol.signalr import encode_invocation
from hubbub.telemetry import (
    BODY_SIZE,
    DESTINATION,
    MESSAGE_ID,
    OPERATION,
    SYSTEM,
    Telemetry,
    context_from_headers,
    traceparent_of,
)
from hubbub.tokens import ServiceTokenVerifier, TokenError, mint_token
from hubbub.wire.envelopes import Kind, MessageEntry

from .errors import ApiError
from .state import GatewayState


class SendBody(BaseModel):
    """A message for SignalR clients: the client method to call and its arguments."""

    target: str = Field(min_length=1, max_length=1024, description="Client method name")
    arguments: list[Any] = Field(default_factory=list)


class BatchItem(SendBody):
    """One message of a batch: who gets it, and the same body as a single send."""

    to: Literal["all", "group", "user", "connection"]
    name: str = Field(default="", description="Group, user or connection id; empty for all")
    excluded: list[str] = Field(default_factory=list)


class BatchBody(BaseModel):
    messages: list[BatchItem] = Field(min_length=1, max_length=10_000)


class BatchAccepted(BaseModel):
    messageIds: list[str]


class Accepted(BaseModel):
    messageId: str


class TokenAnswer(BaseModel):
    token: str


async def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.hubbub
    return state


def check_service_token(tokens: ServiceTokenVerifier, authorization: str, url: str) -> None:
    """Service callers sign a JWT with the access key; ``aud`` is the request URL."""
    if authorization[:7].lower() != "bearer ":
        raise ApiError(401, "Error.Unauthorized", "missing 'Authorization: Bearer <token>'")
    try:
        tokens.verify(authorization[7:].strip(), url)
    except TokenError as exc:
        raise ApiError(401, "Error.Unauthorized", str(exc)) from None


async def authenticate(request: Request) -> None:
    state: GatewayState = request.app.state.hubbub
    check_service_token(state.tokens, request.headers.get("authorization", ""), str(request.url))


async def hub_param(hub: str, application: str | None = None) -> str:
    return names.hub_name(hub, application)


Hub = Annotated[str, Depends(hub_param)]
Excluded = Annotated[list[str] | None, Query(description="Connection ids to leave out")]
State = Annotated[GatewayState, Depends(_state)]

router = APIRouter(dependencies=[Depends(authenticate)], tags=["REST API"])


# ---------------------------------------------------------------- sends, for both edges

_TARGET_CHECKS: dict[Kind, Callable[[str], str] | None] = {
    Kind.ALL: None,
    Kind.GROUP: names.group_name,
    Kind.USER: names.user_id,
    Kind.CONNECTION: names.connection_id,
}
EXCLUDABLE = frozenset({Kind.ALL, Kind.GROUP})  # the kinds whose sends take ``excluded``


def _check_accepting(state: GatewayState) -> None:
    if state.draining:
        raise ApiError(503, "Error.Draining", "this gateway is shutting down; retry elsewhere")


def _message(
    kind: Kind, hub: str, name: str, body: SendBody, excluded: Sequence[str] = ()
) -> MessageEntry:
    """Check the recipient and the excluded ids, and encode the frame once."""
    check = _TARGET_CHECKS[kind]
    target = check(name) if check is not None else ""
    for conn in excluded:
        names.connection_id(conn)
    try:
        frame = encode_invocation(body.target, body.arguments)
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise ApiError(400, "Error.InvalidRequest", f"arguments: {exc}") from None
    return MessageEntry(kind, hub, target, frame, tuple(excluded))


def _batch_messages(hub: str, body: BatchBody) -> list[MessageEntry]:
    """Validate everything before anything is appended: a bad item refuses the whole batch."""
    messages = []
    for i, item in enumerate(body.messages):
        kind = Kind.from_label(item.to)
        try:
            if item.excluded and kind not in EXCLUDABLE:
                raise names.InvalidName("'excluded' applies to 'all' and 'group' only")
            messages.append(_message(kind, hub, item.name, item, item.excluded))
        except names.InvalidName as exc:
            raise ApiError(400, "Error.InvalidName", f"messages[{i}]: {exc}") from None
        except ApiError as exc:
            raise ApiError(exc.status, exc.code, f"messages[{i}]: {exc.message}") from None
    return messages


@functools.cache
def _counters(metrics: Metrics) -> tuple[dict[Kind, Counter], Histogram]:
    """The metrics' labelled children, looked up once (``labels()`` takes a lock)."""
    accepted = {kind: metrics.accepted.labels(kind.label) for kind in Kind}
    return accepted, metrics.stage.labels("ingest")


def _accepted(state: GatewayState, messages: Sequence[MessageEntry], started: float) -> None:
    accepted, ingest_seconds = _counters(state.metrics)
    if len(messages) == 1:
        accepted[messages[0].kind].inc()
    else:
        for kind, n in collections.Counter(m.kind for m in messages).items():
            accepted[kind].inc(n)
    ingest_seconds.observe(time.perf_counter() - started)


async def accept_send(
    state: GatewayState,
    kind: Kind,
    hub: str,
    name: str,
    body: SendBody,
    excluded: Sequence[str],
    route: str,
    headers: Mapping[str, str],
) -> str:
    """Validate one send and append it; the message id. ``hub`` is already a checked name
    (:func:`hubbub.protocol.names.hub_name`), ``name`` the raw group, user or connection id ("" for
    all); ``route`` names the REST span and ``headers`` carry the caller's trace context."""
    _check_accepting(state)
    started = time.perf_counter()
    message = _message(kind, hub, name, body, excluded)
    telemetry = state.telemetry
    if telemetry is None:
        traceparent = headers.get("traceparent")
        if traceparent:
            message = dataclasses.replace(message, traceparent=traceparent)
        message_id = await state.publish.append(message)
    else:
        message_id = await _publish_traced(telemetry, state, message, route, headers)
    _accepted(state, (message,), started)
    return message_id


async def accept_batch(state: GatewayState, hub: str, body: BatchBody) -> list[str]:
    """Validate every message of a batch, then append them all in one round trip."""
    _check_accepting(state)
    messages = _batch_messages(hub, body)
    started = time.perf_counter()
    ids = await state.publish.append_many(messages)
    _accepted(state, messages, started)
    return ids


async def _publish_traced(
    telemetry: Telemetry,
    state: GatewayState,
    message: MessageEntry,
    route: str,
    headers: Mapping[str, str],
) -> str:
    """The REST span, and a producer span whose context travels in the stream entry."""
    tracer = telemetry.tracer
    parent = context_from_headers(headers)
    with tracer.start_as_current_span(route, context=parent, kind=SpanKind.SERVER) as server:
        server.set_attribute("hubbub.hub", message.hub)
        stream = state.publish.stream_for(message.hub, message.kind, message.target)
        with tracer.start_as_current_span(
            f"send {stream}",
            kind=SpanKind.PRODUCER,
            attributes={
                SYSTEM: "redis",
                OPERATION: "send",
                DESTINATION: stream,
                "hubbub.kind": message.kind.label,
            },
        ) as producer:
            traced = dataclasses.replace(message, traceparent=traceparent_of(producer))
            message_id = await state.publish.append(traced)
            producer.set_attribute(MESSAGE_ID, message_id)
            producer.set_attribute(BODY_SIZE, len(message.frame))
    return message_id


# ---------------------------------------------------------------- the FastAPI routes


async def _send(
    request: Request,
    state: GatewayState,
    kind: Kind,
    hub: str,
    name: str,
    body: SendBody,
    excluded: list[str] | None = None,
) -> JSONResponse:
    route = request.scope.get("route")
    name_of_route = f"{request.method} {getattr(route, 'path', request.url.path)}"
    message_id = await accept_send(
        state, kind, hub, name, body, excluded or (), name_of_route, request.headers
    )
    return JSONResponse({"messageId": message_id}, status_code=202)


def _not_found(code: str, what: str) -> ApiError:
    return ApiError(404, code, f"{what} does not exist")


def _exists(found: bool, code: str, what: str, request: Request) -> Response:
    if not found:
        if request.method == "HEAD":
            return Response(status_code=404, headers={"x-ms-error-code": code})
        raise _not_found(code, what)
    return Response(status_code=200)


def routes(prefix: str) -> APIRouter:
    r = APIRouter()
    accepted = {202: {"model": Accepted}}

    @r.post(prefix + "/:send", status_code=202, responses=accepted, summary="Broadcast")
    async def broadcast(
        request: Request, state: State, hub: Hub, body: SendBody, excluded: Excluded = None
    ) -> JSONResponse:
        return await _send(request, state, Kind.ALL, hub, "", body, excluded)

    @r.post(prefix + "/users/{user}/:send", status_code=202, responses=accepted)
    async def send_to_user(
        request: Request, state: State, hub: Hub, user: str, body: SendBody
    ) -> JSONResponse:
        return await _send(request, state, Kind.USER, hub, user, body)

    @r.post(prefix + "/groups/{group}/:send", status_code=202, responses=accepted)
    async def send_to_group(
        request: Request,
        state: State,
        hub: Hub,
        group: str,
        body: SendBody,
        excluded: Excluded = None,
    ) -> JSONResponse:
        return await _send(request, state, Kind.GROUP, hub, group, body, excluded)

    @r.post(prefix + "/connections/{connection}/:send", status_code=202, responses=accepted)
    async def send_to_connection(
        request: Request, state: State, hub: Hub, connection: str, body: SendBody
    ) -> JSONResponse:
        return await _send(request, state, Kind.CONNECTION, hub, connection, body)

    @r.post(
        prefix + "/:batch",
        status_code=202,
        responses={202: {"model": BatchAccepted}},
        summary="Send many messages in one call (one Redis round trip)",
    )
    async def batch(state: State, hub: Hub, body: BatchBody) -> JSONResponse:
        ids = await accept_batch(state, hub, body)
        return JSONResponse({"messageIds": ids}, status_code=202)

    # ------------------------------------------------------------ connection <-> group

    @r.put(prefix + "/groups/{group}/connections/{connection}")
    async def add_connection_to_group(
        state: State, hub: Hub, group: str, connection: str
    ) -> Response:
        done = await state.membership.add_connection_to_group(
            hub, names.connection_id(connection), names.group_name(group)
        )
        if not done:
            raise _not_found("Error.Connection.NotExisted", "connection")
        return Response(status_code=200)

    @r.delete(prefix + "/groups/{group}/connections/{connection}")
    async def remove_connection_from_group(
        state: State, hub: Hub, group: str, connection: str
    ) -> Response:
        done = await state.membership.remove_connection_from_group(
            hub, names.connection_id(connection), names.group_name(group)
        )
        if not done:
            raise _not_found("Warning.Connection.NotExisted", "connection")
        return Response(status_code=200)

    @r.delete(prefix + "/connections/{connection}/groups")
    async def remove_connection_from_all_groups(
        state: State, hub: Hub, connection: str
    ) -> Response:
        await state.membership.remove_connection_from_all_groups(
            hub, names.connection_id(connection)
        )
        return Response(status_code=200)

    # ------------------------------------------------------------ user <-> group

    @r.put(prefix + "/users/{user}/groups/{group}")
    async def add_user_to_group(
        state: State,
        hub: Hub,
        user: str,
        group: str,
        ttl: Annotated[int | None, Query(ge=0, description="Seconds; absent = durable")] = None,
    ) -> Response:
        await state.membership.add_user_to_group(
            hub, names.user_id(user), names.group_name(group), ttl
        )
        return Response(status_code=200)

    @r.delete(prefix + "/users/{user}/groups/{group}", status_code=204)
    async def remove_user_from_group(state: State, hub: Hub, user: str, group: str) -> Response:
        await state.membership.remove_user_from_group(
            hub, names.user_id(user), names.group_name(group)
        )
        return Response(status_code=204)

    @r.delete(prefix + "/users/{user}/groups", status_code=204)
    async def remove_user_from_all_groups(state: State, hub: Hub, user: str) -> Response:
        await state.membership.remove_user_from_all_groups(hub, names.user_id(user))
        return Response(status_code=204)

    @r.api_route(prefix + "/users/{user}/groups/{group}", methods=["GET", "HEAD"])
    async def user_in_group(
        request: Request, state: State, hub: Hub, user: str, group: str
    ) -> Response:
        found = await state.membership.user_in_group(
            hub, names.user_id(user), names.group_name(group)
        )
        return _exists(found, "Info.User.NotInGroup", "user in group", request)

    # ------------------------------------------------------------ existence and close

    @r.api_route(prefix + "/connections/{connection}", methods=["GET", "HEAD"])
    async def connection_exists(
        request: Request, state: State, hub: Hub, connection: str
    ) -> Response:
        found = await state.membership.connection_exists(hub, names.connection_id(connection))
        return _exists(found, "Warning.Connection.NotExisted", "connection", request)

    @r.api_route(prefix + "/users/{user}", methods=["GET", "HEAD"])
    async def user_exists(request: Request, state: State, hub: Hub, user: str) -> Response:
        found = await state.membership.user_exists(hub, names.user_id(user))
        return _exists(found, "Warning.User.NotExisted", "user", request)

    @r.api_route(prefix + "/groups/{group}", methods=["GET", "HEAD"])
    async def group_exists(request: Request, state: State, hub: Hub, group: str) -> Response:
        found = await state.membership.group_exists(hub, names.group_name(group))
        return _exists(found, "Warning.Group.NotExisted", "group", request)

    @r.delete(prefix + "/connections/{connection}")
    async def close_connection(
        state: State,
        hub: Hub,
        connection: str,
        reason: Annotated[str | None, Query(max_length=1024)] = None,
    ) -> Response:
        await state.membership.close_connection(hub, names.connection_id(connection), reason)
        return Response(status_code=200)

    # ------------------------------------------------------------ client tokens

    @r.post(prefix + "/:generateToken", response_model=TokenAnswer)
    async def generate_token(
        request: Request,
        state: State,
        hub: Hub,
        userId: Annotated[str | None, Query()] = None,
        minutesToExpire: Annotated[int, Query(ge=1, le=60 * 24 * 365)] = 60,
        role: Annotated[list[str] | None, Query()] = None,
    ) -> TokenAnswer:
        user = names.user_id(userId) if userId is not None else None
        audience = str(request.base_url).rstrip("/") + f"/hubs/{hub}"
        token = mint_token(
            state.settings.access_key,
            audience,
            minutes=minutesToExpire,
            user_id=user,
            hub=hub,
            roles=role,
        )
        return TokenAnswer(token=token)

    return r


router.include_router(routes("/api/hubs/{hub}"))
router.include_router(routes("/api/v1/hubs/{hub}"), include_in_schema=False)
