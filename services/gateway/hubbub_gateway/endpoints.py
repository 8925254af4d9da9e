"""The REST API, shaped after Azure SignalR Service's, as one table of endpoints.

Every endpoint exists under ``/api/hubs/{hub}`` and, undocumented, under the legacy
``/api/v1/hubs/{hub}``; ``api-version`` is accepted and ignored, ``application`` prefixes the
hub name, and every call is signed with the access key (``aud`` = the request URL).
Membership calls change Redis atomically and tell the gateways concerned.

:func:`install` registers the table's routes, from which OpenAPI documents the API. The send
and batch endpoints are documented like the others (from their body models) but served by
raw ASGI apps (:class:`.ingest.SendEndpoint`, :class:`.ingest.BatchEndpoint`), and
:func:`send_shortcut`, built from the same table and installed as the innermost middleware,
takes their requests straight to those apps without going through the router. Being
innermost, it sits behind CORS, the body limit and any middleware added later, like a route.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import orjson
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.datastructures import Default
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send

from hubbub.protocol import names
from hubbub.redis.directory import DEFAULT_LIMIT, MAX_CURSOR_LENGTH, MAX_LIMIT
from hubbub.settings import Settings
from hubbub.tokens import mint_token
from hubbub.urls import escape_segment, routed_path, segment_value
from hubbub.wire.envelopes import Kind
from hubbub.wire.messages import EXCLUDABLE, MAX_METHOD_LENGTH

from .errors import ERROR_RESPONSES, ApiError
from .ingest import (
    Accepted,
    BatchAccepted,
    BatchBody,
    BatchEndpoint,
    RawEndpoint,
    SendBody,
    SendEndpoint,
    check_service_token,
)
from .invoke import TooManyAsked
from .state import GatewayState

# Prefix -> documented in OpenAPI.
PREFIXES = {"/api/hubs/{hub}": True, "/api/v1/hubs/{hub}": False}
TAGS: list[Any] = ["REST API"]
# The OpenAPI security scheme every REST operation requires (defined by .apidocs).
SECURITY_SCHEME = "accessKeyToken"


class TokenAnswer(BaseModel):
    token: str


async def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.hubbub
    return state


class NameConvertor(Convertor[str]):
    """A group, user or connection path parameter: one segment of the routed path
    (:func:`hubbub.urls.routed_path`), read back as the name it spells (``a%2Fb`` -> ``a/b``)."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return segment_value(value)

    def to_string(self, value: str) -> str:
        return escape_segment(value)


register_url_convertor("name", NameConvertor())


async def authenticate(request: Request) -> None:
    """Every REST route's dependency. (The send apps make the same check themselves, after
    reading the body, which is where FastAPI's routes made it.) The audience is compared with
    the routed path, what the router acted on, not with ``request.url``, which Starlette
    builds from the decoded path and the caller's ``Host`` header."""
    state: GatewayState = request.app.state.hubbub
    check_service_token(
        state.tokens,
        request.headers.get("authorization", ""),
        request.scope["path"],
        request.query_params.get("application"),
    )


async def hub_param(request: Request, hub: str, application: str | None = None) -> str:
    """The canonical hub name, ``?application=`` its prefix, as Azure's SDK spells it; one
    this gateway serves (``HUBBUB_HUBS``)."""
    state: GatewayState = request.app.state.hubbub
    return state.hub(hub, application)


Hub = Annotated[str, Depends(hub_param)]
Excluded = Annotated[list[str] | None, Query(description="Connection ids to leave out")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Sent again within HUBBUB_IDEMPOTENCY_WINDOW (300 s), answers the first "
        "message id and sends nothing",
    ),
]
State = Annotated[GatewayState, Depends(_state)]


def _not_found(code: str, what: str) -> ApiError:
    return ApiError(404, code, f"{what} does not exist", quiet=True)


def _exists(found: bool, code: str, what: str, request: Request) -> Response:
    if not found:
        if request.method == "HEAD":
            return Response(status_code=404, headers={"x-ms-error-code": code})
        raise _not_found(code, what)
    return Response(status_code=200)


# ---------------------------------------------------------------- connection <-> group


async def add_connection_to_group(state: State, hub: Hub, group: str, connection: str) -> Response:
    done = await state.membership.add_connection_to_group(
        hub, names.connection_id(connection), names.group_name(group)
    )
    if not done:
        raise _not_found("Error.Connection.NotExisted", "connection")
    return Response(status_code=200)


async def remove_connection_from_group(
    state: State, hub: Hub, group: str, connection: str
) -> Response:
    done = await state.membership.remove_connection_from_group(
        hub, names.connection_id(connection), names.group_name(group)
    )
    if not done:
        raise _not_found("Warning.Connection.NotExisted", "connection")
    return Response(status_code=200)


async def remove_connection_from_all_groups(state: State, hub: Hub, connection: str) -> Response:
    await state.membership.remove_connection_from_all_groups(hub, names.connection_id(connection))
    return Response(status_code=200)


# ---------------------------------------------------------------- user <-> group


async def add_user_to_group(
    state: State,
    hub: Hub,
    user: str,
    group: str,
    ttl: Annotated[int | None, Query(ge=0, description="Seconds; absent = durable")] = None,
) -> Response:
    await state.membership.add_user_to_group(hub, names.user_id(user), names.group_name(group), ttl)
    return Response(status_code=200)


async def remove_user_from_group(state: State, hub: Hub, user: str, group: str) -> Response:
    await state.membership.remove_user_from_group(hub, names.user_id(user), names.group_name(group))
    return Response(status_code=204)


async def remove_user_from_all_groups(state: State, hub: Hub, user: str) -> Response:
    await state.membership.remove_user_from_all_groups(hub, names.user_id(user))
    return Response(status_code=204)


async def user_in_group(
    request: Request, state: State, hub: Hub, user: str, group: str
) -> Response:
    found = await state.membership.user_in_group(hub, names.user_id(user), names.group_name(group))
    return _exists(found, "Info.User.NotInGroup", "user in group", request)


# ---------------------------------------------------------------- existence and close


async def connection_exists(request: Request, state: State, hub: Hub, connection: str) -> Response:
    found = await state.membership.connection_exists(hub, names.connection_id(connection))
    return _exists(found, "Warning.Connection.NotExisted", "connection", request)


async def user_exists(request: Request, state: State, hub: Hub, user: str) -> Response:
    found = await state.membership.user_exists(hub, names.user_id(user))
    return _exists(found, "Warning.User.NotExisted", "user", request)


async def group_exists(request: Request, state: State, hub: Hub, group: str) -> Response:
    found = await state.membership.group_exists(hub, names.group_name(group))
    return _exists(found, "Warning.Group.NotExisted", "group", request)


async def close_connection(
    state: State,
    hub: Hub,
    connection: str,
    reason: Annotated[str | None, Query(max_length=1024)] = None,
) -> Response:
    await state.membership.close_connection(hub, names.connection_id(connection), reason)
    return Response(status_code=200)


# ---------------------------------------------------------------- listings (Hubbub extensions)

Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page, at most {MAX_LIMIT}")
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_LENGTH,
        description="The previous page's `next`; absent for the first page",
    ),
]
_NEXT = Field(description="Cursor of the next page; null: this was the last. A page may "
              "hold fewer than `limit` items (even none) before the last one")  # fmt: skip


class ConnectionsPage(BaseModel):
    """Connection ids, one page (a member present during the whole walk is listed at least
    once; Redis may repeat one across pages)."""

    items: list[str]
    next: str | None = _NEXT


class GroupItem(BaseModel):
    name: str
    connections: int = Field(description="Connections in the group")


class GroupsPage(BaseModel):
    """Groups with at least one connection, one page."""

    items: list[GroupItem]
    next: str | None = _NEXT


class UserGroupItem(BaseModel):
    name: str
    expiresAt: float | None = Field(description="Unix seconds; null: durable")


class UserGroupsPage(BaseModel):
    """Groups the user was added to (PUT /users/{user}/groups/{group}), one page."""

    items: list[UserGroupItem]
    next: str | None = _NEXT


class HubCountsAnswer(BaseModel):
    connections: int = Field(description="Exact")
    groups: int = Field(description="Groups with a connection in them")
    users: int = Field(description="Users with a live connection")
    complete: bool = Field(
        description="false: groups and users are lower bounds (the count stopped at its "
        "budget of Redis calls)"
    )


async def list_group_connections(
    state: State, hub: Hub, group: str, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> ConnectionsPage:
    """The group's connection ids (Hubbub extension)."""
    page = await state.directory.group_connections(hub, names.group_name(group), limit, cursor)
    return ConnectionsPage(items=page.items, next=page.next)


async def list_user_connections(
    state: State, hub: Hub, user: str, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> ConnectionsPage:
    """The user's live connection ids (Hubbub extension)."""
    page = await state.directory.user_connections(hub, names.user_id(user), limit, cursor)
    return ConnectionsPage(items=page.items, next=page.next)


async def list_user_groups(
    state: State, hub: Hub, user: str, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> UserGroupsPage:
    """The groups the user was added to, with their expiry (Hubbub extension). Groups one of
    its connections joined by itself are not listed (ask GET /users/{user}/groups/{group})."""
    page = await state.directory.user_groups(hub, names.user_id(user), limit, cursor)
    return UserGroupsPage(
        items=[UserGroupItem(name=g.name, expiresAt=g.expires) for g in page.items],
        next=page.next,
    )


async def list_groups(
    state: State, hub: Hub, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> GroupsPage:
    """The hub's groups with their connection counts (Hubbub extension)."""
    page = await state.directory.groups(hub, limit, cursor)
    return GroupsPage(
        items=[GroupItem(name=g.name, connections=g.connections) for g in page.items],
        next=page.next,
    )


async def get_hub_counts(state: State, hub: Hub) -> HubCountsAnswer:
    """How many connections, groups and users the hub has (Hubbub extension)."""
    counts = await state.directory.counts(hub)
    return HubCountsAnswer(
        connections=counts.connections,
        groups=counts.groups,
        users=counts.users,
        complete=counts.complete,
    )


# ---------------------------------------------------------------- client results


class InvokeBody(BaseModel):
    """A client method to invoke, whose handler's return value is the answer."""

    target: str = Field(min_length=1, max_length=MAX_METHOD_LENGTH, description="Client method")
    arguments: list[Any] = Field(default_factory=list)


class InvokeAnswer(BaseModel):
    result: Any = Field(description="What the client's handler returned")


async def invoke_connection(
    state: State, hub: Hub, connection: str, body: InvokeBody
) -> InvokeAnswer:
    """Invoke a method on one client and answer what its handler returns (SignalR client
    results), whichever gateway holds the connection; 504 after HUBBUB_INVOCATION_TIMEOUT,
    429 at once while HUBBUB_MAX_PENDING_INVOCATIONS calls to it wait here already."""
    state.refuse_if_draining()
    conn = names.connection_id(connection)
    if not await state.membership.connection_exists(hub, conn):
        raise _not_found("Error.Connection.NotExisted", "connection")
    try:
        answer = await state.invoker.ask(hub, conn, body.target, body.arguments)
    except TooManyAsked:
        raise ApiError(
            429,
            "Error.Invocation.TooMany",
            f"{state.settings.max_pending_invocations} invocations of this connection are "
            "waiting for its answer already (HUBBUB_MAX_PENDING_INVOCATIONS)",
        ) from None
    if answer is None:
        raise ApiError(
            504,
            "Error.Invocation.Timeout",
            f"the client did not answer within {state.settings.invocation_timeout:g} s",
        )
    outcome = orjson.loads(answer)
    if "error" in outcome:
        raise ApiError(502, "Error.Invocation.Failed", f"the client answered: {outcome['error']}")
    return InvokeAnswer(result=outcome.get("result"))


# ---------------------------------------------------------------- client tokens


def _generate_token(default_minutes: int) -> Callable[..., Any]:
    """``:generateToken``, whose default lifetime is the deployment's (and documented so)."""

    async def generate_token(
        request: Request,
        state: State,
        hub: Hub,
        userId: Annotated[str | None, Query()] = None,
        minutesToExpire: Annotated[int, Query(ge=1, le=60 * 24 * 365)] = default_minutes,
        role: Annotated[list[str] | None, Query()] = None,
    ) -> TokenAnswer:
        user = names.user_id(userId) if userId is not None else None
        # The first public URL when configured: the Host header is the caller's to choose.
        public = state.tokens.origins.urls
        endpoint = public[0] if public else str(request.base_url).rstrip("/")
        audience = f"{endpoint}/hubs/{hub}"
        token = mint_token(
            state.settings.access_key,
            audience,
            minutes=minutesToExpire,
            user_id=user,
            hub=hub,
            roles=role,
        )
        return TokenAnswer(token=token)

    return generate_token


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Endpoint:
    """One REST endpoint; ``path`` is below the hub prefix.

    ``name`` makes the OpenAPI operation id and, unless ``summary`` is given, its summary.
    Sends and the batch have a ``body`` model (and sends a ``kind``) instead of a ``handler``:
    a raw ASGI app serves them.
    """

    methods: tuple[str, ...]
    path: str
    handler: Callable[..., Any] | None = None
    name: str = ""
    summary: str | None = None
    status_code: int | None = None
    responses: dict[int | str, dict[str, Any]] | None = None
    response_model: Any = None
    body: type[SendBody] | type[BatchBody] | None = None
    kind: Kind | None = None


_POST, _PUT, _DELETE, _GET, _GET_HEAD = ("POST",), ("PUT",), ("DELETE",), ("GET",), ("GET", "HEAD")
_ACCEPTED: dict[int | str, dict[str, Any]] = {202: {"model": Accepted}}
_BATCH_ACCEPTED: dict[int | str, dict[str, Any]] = {202: {"model": BatchAccepted}}


def table(settings: Settings) -> list[Endpoint]:
    """Every REST endpoint, in the order the routes are tried and documented."""

    def send(path: str, name: str, kind: Kind, summary: str | None = None) -> Endpoint:
        return Endpoint(_POST, path, name=name, summary=summary, status_code=202,
                        responses=_ACCEPTED, body=SendBody, kind=kind)  # fmt: skip

    return [
        send("/:send", "broadcast", Kind.ALL, summary="Broadcast"),
        send("/users/{user}/:send", "send_to_user", Kind.USER),
        send("/groups/{group}/:send", "send_to_group", Kind.GROUP),
        send("/connections/{connection}/:send", "send_to_connection", Kind.CONNECTION),
        Endpoint(
            _POST,
            "/:batch",
            name="batch",
            status_code=202,
            responses=_BATCH_ACCEPTED,
            summary="Send many messages in one call (one Redis round trip)",
            body=BatchBody,
        ),
        Endpoint(_PUT, "/groups/{group}/connections/{connection}", add_connection_to_group),
        Endpoint(_DELETE, "/groups/{group}/connections/{connection}", remove_connection_from_group),
        Endpoint(_DELETE, "/connections/{connection}/groups", remove_connection_from_all_groups),
        Endpoint(_PUT, "/users/{user}/groups/{group}", add_user_to_group),
        Endpoint(_DELETE, "/users/{user}/groups/{group}", remove_user_from_group, status_code=204),
        Endpoint(_DELETE, "/users/{user}/groups", remove_user_from_all_groups, status_code=204),
        Endpoint(_GET_HEAD, "/users/{user}/groups/{group}", user_in_group),
        Endpoint(_GET_HEAD, "/connections/{connection}", connection_exists),
        Endpoint(_GET_HEAD, "/users/{user}", user_exists),
        Endpoint(_GET_HEAD, "/groups/{group}", group_exists),
        Endpoint(_DELETE, "/connections/{connection}", close_connection),
        # Listings (Hubbub extensions); none shares a path shape with an existence check.
        Endpoint(
            _GET,
            "/groups/{group}/connections",
            list_group_connections,
            name="list_group_connections",
            response_model=ConnectionsPage,
        ),
        Endpoint(
            _GET,
            "/users/{user}/connections",
            list_user_connections,
            name="list_user_connections",
            response_model=ConnectionsPage,
        ),
        Endpoint(
            _GET,
            "/users/{user}/groups",
            list_user_groups,
            name="list_user_groups",
            response_model=UserGroupsPage,
        ),
        Endpoint(_GET, "/groups", list_groups, name="list_groups", response_model=GroupsPage),
        Endpoint(
            _GET, "/counts", get_hub_counts, name="get_hub_counts", response_model=HubCountsAnswer
        ),
        Endpoint(
            _POST,
            "/connections/{connection}/:invoke",
            invoke_connection,
            summary="Invoke a client method and answer its result",
            response_model=InvokeAnswer,
            responses={
                404: {"description": "No such connection"},
                429: {"description": "HUBBUB_MAX_PENDING_INVOCATIONS already wait for it"},
                502: {"description": "The client answered with an error"},
                504: {"description": "No answer within HUBBUB_INVOCATION_TIMEOUT"},
            },
        ),
        Endpoint(
            _POST,
            "/:generateToken",
            _generate_token(settings.token_default_minutes),
            response_model=TokenAnswer,
        ),
    ]


def _params(template: str) -> list[str]:
    return re.findall(r"{(\w+)}", template)


def _documented(endpoint: Endpoint) -> Callable[..., Any]:
    """A send's stand-in FastAPI endpoint, for OpenAPI to read: hub, path parameters, body
    and, for broadcasts and groups, ``excluded``. It is never called: the route's app is the
    send's ASGI app."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("hub", keyword, annotation=Hub)]
    params += [inspect.Parameter(p, keyword, annotation=str) for p in _params(endpoint.path)]
    params.append(inspect.Parameter("body", keyword, annotation=endpoint.body))
    if endpoint.body is SendBody:
        params.append(
            inspect.Parameter("idempotency_key", keyword, annotation=IdempotencyKey, default=None)
        )
    if endpoint.kind in EXCLUDABLE:
        params.append(inspect.Parameter("excluded", keyword, annotation=Excluded, default=None))

    async def stand_in(**_: Any) -> None:
        raise AssertionError(f"{endpoint.name} is served by its ASGI app")

    stand_in.__name__ = stand_in.__qualname__ = endpoint.name
    setattr(stand_in, "__signature__", inspect.Signature(params))  # noqa: B010
    return stand_in


def _app_of(route: str, endpoint: Endpoint) -> RawEndpoint:
    if endpoint.body is BatchBody:
        return BatchEndpoint(route)
    assert endpoint.kind is not None
    recipient = next(iter(_params(endpoint.path)), None)  # the path below the hub prefix
    return SendEndpoint(route, endpoint.kind, recipient)


def _responses(endpoint: Endpoint) -> dict[int | str, dict[str, Any]]:
    """The endpoint's own responses over the refusals every operation may answer, each with
    the ``{code, message}`` body."""
    merged = {status: dict(answer) for status, answer in ERROR_RESPONSES.items()}
    for status, answer in (endpoint.responses or {}).items():
        merged[status] = {**merged.get(status, {}), **answer}
        if isinstance(status, int) and status >= 400:
            merged[status].setdefault("model", ERROR_RESPONSES[400]["model"])
    return merged


def install(app: FastAPI, settings: Settings) -> list[tuple[str, RawEndpoint]]:
    """Register the REST routes on ``app``; the send and batch routes' (template, ASGI app),
    for :func:`send_shortcut`.

    The routes go on the app's own router, not an included one: the route's ``app`` is what
    serves it there, and for sends that is set to the send's ASGI app.
    """
    sends: list[tuple[str, RawEndpoint]] = []
    endpoints = table(settings)
    for prefix, documented in PREFIXES.items():
        for endpoint in endpoints:
            path = prefix + endpoint.path
            handler = endpoint.handler or _documented(endpoint)
            name = endpoint.name or handler.__name__
            app.router.add_api_route(
                prefix + re.sub(r"{(\w+)}", r"{\1:name}", endpoint.path),  # NameConvertor
                handler,
                methods=list(endpoint.methods),
                name=name,
                # Unique per documented operation; .apidocs suffixes the method when a route
                # has several (GET and HEAD).
                operation_id=name,
                summary=endpoint.summary,
                status_code=endpoint.status_code,
                responses=_responses(endpoint),
                openapi_extra={"security": [{SECURITY_SCHEME: []}]},
                response_model=endpoint.response_model or Default(None),
                dependencies=[Depends(authenticate)],
                tags=TAGS,
                include_in_schema=documented,
            )
            if endpoint.body is not None:
                route = app.router.routes[-1]
                assert isinstance(route, APIRoute) and route.endpoint is handler
                raw = _app_of(f"{endpoint.methods[0]} {path}", endpoint)
                route.app = raw
                sends.append((path, raw))
    return sends


class ShortcutTarget(Protocol):
    """What the send shortcut calls: an endpoint's ASGI app taking its path parameters."""

    def serve(
        self, scope: Scope, receive: Receive, send: Send, hub: str, name: str
    ) -> Awaitable[None]:
        """Answer the request; ``hub`` and ``name`` (the recipient, or empty) as in the path."""


def send_shortcut(
    app: ASGIApp,
    sends: Sequence[tuple[str, ShortcutTarget]],
    sockets: Sequence[tuple[str, ShortcutTarget]] = (),
) -> ASGIApp:
    """The innermost middleware: a ``POST`` to a send or batch endpoint (or to negotiate,
    :class:`.negotiate.NegotiateEndpoint`) goes straight to its app
    (:meth:`.ingest.RawEndpoint.serve`), with the path parameters the router would find; so
    does a WebSocket to one of ``sockets`` (the hub's, :class:`.connect.SocketEndpoint`).
    Every connection negotiates and opens its socket once: FastAPI's routing, dependencies
    and ``Request`` were a sixth of a gateway's CPU per connection (W4, py-spy).

    Its regexes are made from the routes' templates with Starlette's rule for a parameter
    (``[^/]+``), so it takes exactly the requests those routes would serve; anything else
    (other methods: 405, other paths: 404, a trailing slash: 307, any path under a
    ``root_path``) goes on to the router, which finds the same apps for the same requests.

    It also gives the router, and every check after it, the routed path
    (:func:`hubbub.urls.routed_path`: one percent-decoding per segment) in ``scope["path"]``
    instead of the server's, which decodes ``%2F`` into a separator: a group or user named
    ``a/b`` is then one path parameter (read back by :class:`NameConvertor`), and a service
    token's audience is compared with the path the request is routed on. Paths without
    ``%`` (nearly all) are left as they are; doing this here, not in a layer of its own,
    saves a call per request. Middleware outside it sees the server's path.
    """
    posts, post_targets = _shortcut_table(sends)
    opens, socket_targets = _shortcut_table(sockets)

    def shortcut(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        raw = scope.get("raw_path")
        if raw and b"%" in raw:
            scope = {**scope, "path": routed_path(raw.decode("latin-1"))}
        kind = scope["type"]
        if kind == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = posts.fullmatch(scope["path"])
            if match is not None and match.lastindex is not None:
                target, hub, name = post_targets[match.lastindex]
                recipient = segment_value(match[name]) if name else ""  # as NameConvertor
                return target.serve(scope, receive, send, match[hub], recipient)
        elif kind == "websocket" and not scope.get("root_path"):
            match = opens.fullmatch(scope["path"])
            if match is not None and match.lastindex is not None:
                target, hub, _ = socket_targets[match.lastindex]
                return target.serve(scope, receive, send, match[hub], "")
        return app(scope, receive, send)

    return shortcut


def _shortcut_table(
    routes: Sequence[tuple[str, ShortcutTarget]],
) -> tuple[re.Pattern[str], dict[int, tuple[ShortcutTarget, int, int]]]:
    """One regex for ``routes``' templates, and the number of each template's group in it ->
    its app and the numbers of its parameters' groups (the hub, and the recipient's or 0 for
    none). No routes: a regex that matches nothing."""
    targets: dict[int, tuple[ShortcutTarget, int, int]] = {}
    alternatives = []
    group = 1
    for template, target in routes:
        params = _params(template)
        assert params[0] == "hub" and len(params) <= 2, template
        alternatives.append("(" + re.sub(r"\\{\w+\\}", "([^/]+)", re.escape(template)) + ")")
        targets[group] = (target, group + 1, group + 2 if len(params) == 2 else 0)
        group += 1 + len(params)
    return re.compile("|".join(alternatives) or "(?!)"), targets
