"""Ingest: the REST API internal services call, shaped after Azure SignalR Service's.

A send is validated, encoded into its SignalR frame once, and appended to the publish stream;
the ``202`` carries the stream entry id as the message id. Membership calls change Redis
atomically and tell the gateways concerned. Paths exist under ``/api/hubs`` and the legacy
``/api/v1/hubs``; ``api-version`` is accepted and ignored.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, Field

from hubbub import names
from hubbub.envelopes import Kind, Publish
from hubbub.signalr import encode_invocation
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
from hubbub.tokens import TokenError, mint_token

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


async def authenticate(request: Request) -> None:
    """Service callers sign a JWT with the access key; ``aud`` is the request URL."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() != "bearer ":
        raise ApiError(401, "Error.Unauthorized", "missing 'Authorization: Bearer <token>'")
    try:
        request.app.state.hubbub.tokens.verify(auth[7:].strip(), str(request.url))
    except TokenError as exc:
        raise ApiError(401, "Error.Unauthorized", str(exc)) from None


async def hub_param(hub: str, application: str | None = None) -> str:
    return names.hub_name(hub, application)


Hub = Annotated[str, Depends(hub_param)]
Excluded = Annotated[list[str] | None, Query(description="Connection ids to leave out")]
State = Annotated[GatewayState, Depends(_state)]

router = APIRouter(dependencies=[Depends(authenticate)], tags=["REST API"])


async def _publish(
    state: GatewayState,
    request: Request,
    kind: Kind,
    hub: str,
    target: str,
    body: SendBody,
    excluded: list[str] | None = None,
) -> JSONResponse:
    if state.draining:
        raise ApiError(503, "Error.Draining", "this gateway is shutting down; retry elsewhere")
    for conn in excluded or ():
        names.connection_id(conn)
    started = time.perf_counter()
    frame = encode_invocation(body.target, body.arguments)
    telemetry = state.telemetry
    if telemetry is None:
        message = Publish(
            kind, hub, target, frame, tuple(excluded or ()), request.headers.get("traceparent")
        )
        message_id = await state.publish.append(message)
    else:
        message_id = await _publish_traced(telemetry, state, request, kind, hub, target, frame,
                                           tuple(excluded or ()))  # fmt: skip
    state.metrics.accepted.labels(kind.name.lower()).inc()
    state.metrics.stage.labels("ingest").observe(time.perf_counter() - started)
    return JSONResponse({"messageId": message_id}, status_code=202)


async def _publish_traced(
    telemetry: Telemetry,
    state: GatewayState,
    request: Request,
    kind: Kind,
    hub: str,
    target: str,
    frame: bytes,
    excluded: tuple[str, ...],
) -> str:
    """The REST span, and a producer span whose context travels in the stream entry."""
    tracer = telemetry.tracer
    route = request.scope.get("route")
    name = f"{request.method} {getattr(route, 'path', request.url.path)}"
    parent = context_from_headers(request.headers)
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as server:
        server.set_attribute("hubbub.hub", hub)
        stream = state.publish.stream_for(hub, kind, target)
        with tracer.start_as_current_span(
            f"send {stream}",
            kind=SpanKind.PRODUCER,
            attributes={
                SYSTEM: "redis",
                OPERATION: "send",
                DESTINATION: stream,
                "hubbub.kind": kind.name.lower(),
            },
        ) as producer:
            message = Publish(kind, hub, target, frame, excluded, traceparent_of(producer))
            message_id = await state.publish.append(message)
            producer.set_attribute(MESSAGE_ID, message_id)
            producer.set_attribute(BODY_SIZE, len(frame))
    return message_id


_BATCH_KINDS = {
    "all": (Kind.ALL, None),
    "group": (Kind.GROUP, names.group_name),
    "user": (Kind.USER, names.user_id),
    "connection": (Kind.CONNECTION, names.connection_id),
}


def _batch_message(hub: str, item: BatchItem) -> Publish:
    """Validate everything before anything is appended: a bad item refuses the whole batch."""
    kind, check = _BATCH_KINDS[item.to]
    target = check(item.name) if check is not None else ""
    if item.excluded and kind not in (Kind.ALL, Kind.GROUP):
        raise names.InvalidName("'excluded' applies to 'all' and 'group' only")
    for conn in item.excluded:
        names.connection_id(conn)
    frame = encode_invocation(item.target, item.arguments)
    return Publish(kind, hub, target, frame, tuple(item.excluded))


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
        return await _publish(state, request, Kind.ALL, hub, "", body, excluded)

    @r.post(prefix + "/users/{user}/:send", status_code=202, responses=accepted)
    async def send_to_user(
        request: Request, state: State, hub: Hub, user: str, body: SendBody
    ) -> JSONResponse:
        return await _publish(state, request, Kind.USER, hub, names.user_id(user), body)

    @r.post(prefix + "/groups/{group}/:send", status_code=202, responses=accepted)
    async def send_to_group(
        request: Request,
        state: State,
        hub: Hub,
        group: str,
        body: SendBody,
        excluded: Excluded = None,
    ) -> JSONResponse:
        target = names.group_name(group)
        return await _publish(state, request, Kind.GROUP, hub, target, body, excluded)

    @r.post(prefix + "/connections/{connection}/:send", status_code=202, responses=accepted)
    async def send_to_connection(
        request: Request, state: State, hub: Hub, connection: str, body: SendBody
    ) -> JSONResponse:
        target = names.connection_id(connection)
        return await _publish(state, request, Kind.CONNECTION, hub, target, body)

    @r.post(
        prefix + "/:batch",
        status_code=202,
        responses={202: {"model": BatchAccepted}},
        summary="Send many messages in one call (one Redis round trip)",
    )
    async def batch(state: State, hub: Hub, body: BatchBody) -> JSONResponse:
        if state.draining:
            raise ApiError(503, "Error.Draining", "this gateway is shutting down; retry elsewhere")
        messages = []
        for i, item in enumerate(body.messages):
            try:
                messages.append(_batch_message(hub, item))
            except names.InvalidName as exc:
                raise ApiError(400, "Error.InvalidName", f"messages[{i}]: {exc}") from None
        started = time.perf_counter()
        ids = await state.publish.append_many(messages)
        for m in messages:
            state.metrics.accepted.labels(m.kind.name.lower()).inc()
        state.metrics.stage.labels("ingest").observe(time.perf_counter() - started)
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
