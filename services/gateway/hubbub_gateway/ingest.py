"""Ingest: the send and batch endpoints of the REST API, one raw ASGI app each.

A send is checked, its SignalR frame encoded once (:func:`hubbub.wire.messages.build_message`)
and appended to the publish stream; the ``202`` carries the stream entry id as the message id.
Internal services call these endpoints thousands of times a second, and FastAPI's request
handling (dependency solving, request objects) took about two thirds of the gateway's CPU per
request, so :class:`SendEndpoint` and :class:`BatchEndpoint` serve them as plain ASGI apps:
they read the body as FastAPI would and run the checks in the order its routes did, with the
same answers, byte for byte:

    400 not JSON  ->  401 token  ->  400 hub name  ->  400 body (the pydantic models)
    ->  503 draining  ->  400 names and arguments  ->  202 + message id

The ``413`` for a body over the limit comes before all of them, from
:func:`.middleware.body_limit`. Which requests reach these apps, and how they are documented,
is the endpoint table's business (:mod:`.endpoints`).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import email.message
import functools
import json
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

import orjson
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field, ValidationError
from starlette.types import Receive, Scope, Send

from hubbub.metrics import Metrics
from hubbub.protocol import names
from hubbub.redis.stream import PublishStream
from hubbub.telemetry import (
    BODY_SIZE,
    DESTINATION,
    MESSAGE_ID,
    OPERATION,
    SYSTEM,
    Telemetry,
    context_from_headers,
    span,
    traceparent_of,
)
from hubbub.tokens import ServiceTokenVerifier, TokenError, bearer
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.messages import (
    EXCLUDABLE,
    MAX_METHOD_LENGTH,
    InvalidArguments,
    TooManyExcluded,
    build_message,
)

from .errors import KNOWN_ERRORS, ApiError, invalid_request, known_error_response
from .state import GatewayState


class SendBody(BaseModel):
    """A message for SignalR clients: the client method to call and its arguments."""

    target: str = Field(
        min_length=1, max_length=MAX_METHOD_LENGTH, description="Client method name"
    )
    arguments: list[Any] = Field(default_factory=list)


class BatchItem(SendBody):
    """One message of a batch: who gets it, and the same body as a single send."""

    to: Literal["all", "group", "user", "connection"]
    name: str = Field(default="", description="Group, user or connection id; empty for all")
    excluded: list[str] = Field(default_factory=list)
    idempotencyKey: str | None = Field(
        default=None,
        description="Like the Idempotency-Key header of a single send, for this message",
    )


class BatchBody(BaseModel):
    messages: list[BatchItem] = Field(min_length=1, max_length=10_000)


class BatchAccepted(BaseModel):
    messageIds: list[str]


class Accepted(BaseModel):
    messageId: str


Model = TypeVar("Model", bound=BaseModel)

_NO_TRACE: dict[str, str] = {}
_NO_QUERY: tuple[None, tuple[str, ...]] = (None, ())
_EMPTY = object()  # no body at all, which FastAPI tells apart from a JSON null


# ---------------------------------------------------------------- reading a body as FastAPI does


def decode_body(raw: bytes, content_type: str) -> Any:
    """The body as FastAPI's routes decode it: JSON (``json.loads``, with the same errors) for
    ``application/json`` and ``application/*+json``; the bytes themselves otherwise, which
    no body model accepts."""
    if not raw:
        return _EMPTY
    if content_type != "application/json" and not _is_json(content_type):
        return raw
    try:
        # One difference remains: orjson reads integers beyond 64 bits as floats (as JavaScript
        # clients would), json.loads as ints that no frame can carry (answered 400).
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # not always an error for json.loads (NaN, a BOM, UTF-16): let it decide
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid_request([{"loc": ("body", exc.pos), "msg": "JSON decode error"}]) from None
    except Exception:  # e.g. invalid UTF-8; FastAPI answers these with a plain 400
        raise ApiError(400, "Error.Http400", "There was an error parsing the body") from None


@functools.lru_cache(maxsize=64)
def _is_json(content_type: str) -> bool:
    """FastAPI's test, parameters ignored; no content type is not JSON (its strict mode)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def validate_body(model: type[Model], data: Any) -> Model:
    """The decoded body through its model, with FastAPI's error texts (``body.target: ...``)."""
    if data is _EMPTY:
        raise invalid_request([{"loc": ("body",), "msg": "Field required"}])
    try:
        # The model's validator itself (what model_validate calls, at twice the cost).
        body: Model = model.__pydantic_validator__.validate_python(data, from_attributes=True)
        return body
    except ValidationError as exc:
        raise invalid_request(
            {"loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()
        ) from None


async def _rest_of_body(receive: Receive, first: bytes) -> bytes | None:
    """The body sent in several messages, or ``None`` if the client went away meanwhile."""
    chunks = [first]
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def check_service_token(
    tokens: ServiceTokenVerifier, authorization: str, path: str, application: str | None
) -> None:
    """Service callers sign a JWT with the access key; ``aud`` is the request URL, compared
    with the routed ``path`` (``scope["path"]`` behind :func:`.endpoints.send_shortcut`: what
    the router acted on) and ``?application=`` (:func:`hubbub.tokens.rest_target`). The one
    check of every REST request, routed or taken by the send shortcut."""
    token = bearer(authorization)
    if token is None:
        raise ApiError(401, "Error.Unauthorized", "missing 'Authorization: Bearer <token>'")
    try:
        tokens.verify(token, path, application)
    except TokenError as exc:
        raise ApiError(401, "Error.Unauthorized", str(exc)) from None


# ---------------------------------------------------------------- accepting messages


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


def _spans(
    telemetry: Telemetry | None,
    route: str,
    trace: Mapping[str, str],
    publish: PublishStream,
    message: MessageEntry,
) -> AbstractContextManager[Span | None]:
    """The REST SERVER span, the caller's trace its parent, with the PRODUCER span of the
    append inside it; ``as`` gives the producer, whose context travels in the stream entry.
    With tracing off, the shared no-op of :func:`~hubbub.telemetry.span` (and nothing else
    is worked out)."""
    if telemetry is None:
        return span(None, route)
    parent = context_from_headers(trace)
    return _traced(telemetry.tracer, route, parent, publish, message)


@contextlib.contextmanager
def _traced(
    tracer: Tracer,
    route: str,
    parent: Context | None,
    publish: PublishStream,
    message: MessageEntry,
) -> Iterator[Span | None]:
    stream = publish.stream_for(message.hub, message.kind, message.target)
    attributes = {SYSTEM: "redis", OPERATION: "send", DESTINATION: stream,
                  "hubbub.kind": message.kind.label}  # fmt: skip
    with span(tracer, route, kind=SpanKind.SERVER, context=parent) as server:
        assert server is not None
        server.set_attribute("hubbub.hub", message.hub)
        with span(tracer, f"send {stream}", kind=SpanKind.PRODUCER, attributes=attributes) as p:
            yield p


def _batch_messages(
    hub: str, body: BatchBody, max_excluded: int
) -> tuple[list[MessageEntry], list[str | None]]:
    """Check everything before anything is appended: a bad item refuses the whole batch.
    The messages, and their idempotency keys (empty when no item has one)."""
    messages = []
    keys: list[str | None] = []
    for i, item in enumerate(body.messages):
        kind = Kind.from_label(item.to)
        key = item.idempotencyKey
        try:
            if key is not None:
                key = names.idempotency_key(key)
            message = build_message(
                kind,
                hub,
                item.name,
                item.target,
                item.arguments,
                item.excluded,
                max_excluded=max_excluded,
            )
        except (names.InvalidName, InvalidArguments, TooManyExcluded) as exc:
            raise type(exc)(f"messages[{i}]: {exc}") from None
        messages.append(message)
        keys.append(key)
    return messages, keys if any(k is not None for k in keys) else []


# ---------------------------------------------------------------- the ASGI apps


class RawEndpoint(abc.ABC):
    """What a send and a batch share: headers, body, caller, hub, errors, the ``202``.

    ``route`` is the route's method and template (``POST /api/hubs/{hub}/:send``), which names
    the REST span; ``param`` the path parameter naming the recipient, if any. As a route's app
    it takes the path parameters the router found; the shortcut calls :meth:`serve` with them.
    """

    def __init__(self, route: str, param: str | None = None) -> None:
        self.route = route
        self.param = param

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        params = scope["path_params"]
        name = params[self.param] if self.param is not None else ""
        return self.serve(scope, receive, send, params["hub"], name)

    async def serve(self, scope: Scope, receive: Receive, send: Send, hub: str, name: str) -> None:
        """Answer the request; ``hub`` and ``name`` are the path parameters (``name`` read
        from its segment by :class:`.endpoints.NameConvertor` or the shortcut)."""
        authorization = content_type = ""
        trace = _NO_TRACE
        idempotency_key: str | None = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"idempotency-key":
                idempotency_key = value.decode("latin-1")
            elif key == b"content-type":
                content_type = value.decode("latin-1")
            elif key in (b"traceparent", b"tracestate"):
                trace = {**trace, key.decode(): value.decode("latin-1")}
        # The whole body; its size is body_limit's concern (it refuses or stops reading one
        # over the limit before it gets here).
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        raw: bytes = message.get("body", b"")
        if message.get("more_body", False):
            whole = await _rest_of_body(receive, raw)
            if whole is None:
                return
            raw = whole
        try:
            data = decode_body(raw, content_type)
            state: GatewayState = scope["app"].state.hubbub
            query = scope["query_string"]
            application, excluded = _query(query) if query else _NO_QUERY
            check_service_token(state.tokens, authorization, scope["path"], application)
            hub = state.hub(hub, application)
            if idempotency_key is not None:
                idempotency_key = names.idempotency_key(idempotency_key)
            answer = await self.accept(state, hub, name, data, excluded, trace, idempotency_key)
        except KNOWN_ERRORS as exc:
            refusal = known_error_response(scope, exc)
            assert refusal is not None
            return await refusal(scope, receive, send)
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [
                    (b"content-length", b"%d" % len(answer)),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    @abc.abstractmethod
    async def accept(
        self,
        state: GatewayState,
        hub: str,
        name: str,
        data: Any,
        excluded: Sequence[str],
        trace: Mapping[str, str],
        idempotency_key: str | None,
    ) -> bytes:
        """Validate the decoded body, append, and return the ``202``'s body. With an
        ``Idempotency-Key``, a retry within the window answers the first message id."""


def _query(query_string: bytes) -> tuple[str | None, Sequence[str]]:
    """``application`` (the last one, as Starlette's query params have it) and every
    ``excluded``; anything else, ``api-version`` included, is ignored."""
    application = None
    excluded: list[str] = []
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == "application":
            application = value
        elif key == "excluded":
            excluded.append(value)
    return application, excluded


class SendEndpoint(RawEndpoint):
    """``POST .../:send`` to all, or to the group, user or connection in path parameter
    ``param``; ``excluded`` is taken for broadcasts and groups only, ignored otherwise."""

    def __init__(self, route: str, kind: Kind, param: str | None) -> None:
        super().__init__(route, param)
        self.kind = kind
        self.takes_excluded = kind in EXCLUDABLE

    async def accept(
        self,
        state: GatewayState,
        hub: str,
        name: str,
        data: Any,
        excluded: Sequence[str],
        trace: Mapping[str, str],
        idempotency_key: str | None,
    ) -> bytes:
        """Check the send and append it; the ``202``'s body. Without tracing, the caller's
        ``traceparent`` is stored as it came; with it, the producer span's."""
        body = validate_body(SendBody, data)
        state.refuse_if_draining()
        started = time.perf_counter()
        message = build_message(
            self.kind,
            hub,
            name,
            body.target,
            body.arguments,
            excluded if self.takes_excluded else (),
            trace.get("traceparent"),
            max_excluded=state.settings.max_excluded,
        )
        with _spans(state.telemetry, self.route, trace, state.publish, message) as producer:
            if producer is not None:
                message = dataclasses.replace(message, traceparent=traceparent_of(producer))
            message_id = await state.publish.append(message, idempotency_key)
            if producer is not None:
                producer.set_attribute(MESSAGE_ID, message_id)
                producer.set_attribute(BODY_SIZE, len(message.frame))
        _accepted(state, (message,), started)
        return orjson.dumps({"messageId": message_id})


class BatchEndpoint(RawEndpoint):
    """``POST .../:batch``: many messages in one call and one Redis round trip."""

    async def accept(
        self,
        state: GatewayState,
        hub: str,
        name: str,
        data: Any,
        excluded: Sequence[str],
        trace: Mapping[str, str],
        idempotency_key: str | None,
    ) -> bytes:
        """Check every message, then append them all in one round trip (not traced). Keys
        are per message (``idempotencyKey``); the header is not used for a batch."""
        body = validate_body(BatchBody, data)
        state.refuse_if_draining()
        messages, keys = _batch_messages(hub, body, state.settings.max_excluded)
        started = time.perf_counter()
        ids = await state.publish.append_many(messages, keys)
        _accepted(state, messages, started)
        return orjson.dumps({"messageIds": ids})
