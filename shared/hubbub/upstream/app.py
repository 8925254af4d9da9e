"""The upstream SDK: handlers per hub and method, in Python, for what clients invoke.

::

    app = Upstream(Settings(), name="chat-service")
    chat = app.hub("chat")

    @chat.on("sendMessage")
    async def send_message(call: Call, room: str, text: str) -> str:
        await chat.send_to_group(room, "message", [call.user_id, text])
        return "sent"                       # the caller's invoke() resolves to it

    app.run()                               # or: async with app: ... (e.g. in a lifespan)

Any number of processes run the same ``name``: they share the work (one consumer group) and
each connection's invocations are handled in order (:mod:`.consumer`). A handler's return
value is the Completion's result; :class:`HubError` 's message is its error; any other
exception is logged with its traceback and the caller gets a generic error (like ASP.NET
Core without detailed errors).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import orjson

from hubbub.metrics import Metrics
from hubbub.protocol import names
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.membership import Membership
from hubbub.sdk.publisher import Publisher
from hubbub.settings import Settings
from hubbub.startup import require_redis
from hubbub.telemetry import setup_tracing
from hubbub.wire.envelopes import Event, UpstreamEntry

from .consumer import Answer, UpstreamConsumer, arguments_of

log = logging.getLogger("hubbub.upstream")


class HubError(Exception):
    """Raised by a handler: its message is the error the caller's ``invoke()`` rejects with."""


@dataclass(frozen=True, slots=True)
class Call:
    """A client's invocation, as a handler receives it (the arguments come as parameters)."""

    hub: str
    connection_id: str
    user_id: str | None
    claims: dict[str, Any]
    method: str
    arguments: list[Any]
    invocation_id: str | None  # None: the client does not wait for an answer (send())


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A client connected or disconnected (``error``: why it was closed, if it was)."""

    hub: str
    connection_id: str
    user_id: str | None
    claims: dict[str, Any]
    error: str | None = None


MethodHandler = Callable[..., Awaitable[Any]]
EventHandler = Callable[[ConnectionEvent], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass
class Hub:
    """One hub's handlers, and the sends and group changes a handler makes (``await
    hub.send_to_group(...)``) once the app runs."""

    name: str
    app: Upstream
    methods: dict[str, MethodHandler] = field(default_factory=dict)
    connected: list[EventHandler] = field(default_factory=list)
    disconnected: list[EventHandler] = field(default_factory=list)

    def on(self, method: str) -> Callable[[F], F]:
        """``@hub.on("sendMessage")``: the handler of a method (matched case-insensitively,
        like SignalR), ``async def handler(call: Call, *arguments)``."""

        def register(handler: F) -> F:
            is_async = inspect.iscoroutinefunction(handler)
            if not is_async:
                raise TypeError(f"the handler of {method!r} must be an async function")
            self.methods[method.lower()] = handler
            return handler

        return register

    def on_connected(self, handler: EventHandler) -> EventHandler:
        self.connected.append(handler)
        return handler

    def on_disconnected(self, handler: EventHandler) -> EventHandler:
        self.disconnected.append(handler)
        return handler

    # ------------------------------------------------------------ sends and group changes

    def _publisher(self) -> Publisher:
        return self.app._publisher(self.name)

    # ``idempotency_key``: a handler run twice for one invocation (at least once) sends once
    # if it passes a key derived from the call, e.g. f"{call.connection_id}:{call.invocation_id}".

    async def send_to_all(
        self,
        method: str,
        arguments: Sequence[Any] = (),
        excluded: Sequence[str] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._publisher().send_to_all(
            method, arguments, excluded, idempotency_key=idempotency_key
        )

    async def send_to_group(
        self,
        group: str,
        method: str,
        arguments: Sequence[Any] = (),
        excluded: Sequence[str] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._publisher().send_to_group(
            group, method, arguments, excluded, idempotency_key=idempotency_key
        )

    async def send_to_user(
        self,
        user: str,
        method: str,
        arguments: Sequence[Any] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._publisher().send_to_user(
            user, method, arguments, idempotency_key=idempotency_key
        )

    async def send_to_connection(
        self,
        connection: str,
        method: str,
        arguments: Sequence[Any] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._publisher().send_to_connection(
            connection, method, arguments, idempotency_key=idempotency_key
        )

    async def add_connection_to_group(self, group: str, connection: str) -> bool:
        """False if the connection does not exist (any more)."""
        return await self.app._membership().add_connection_to_group(
            self.name, names.connection_id(connection), names.group_name(group)
        )

    async def remove_connection_from_group(self, group: str, connection: str) -> bool:
        return await self.app._membership().remove_connection_from_group(
            self.name, names.connection_id(connection), names.group_name(group)
        )

    async def add_user_to_group(self, group: str, user: str, ttl: float | None = None) -> None:
        await self.app._membership().add_user_to_group(
            self.name, names.user_id(user), names.group_name(group), ttl
        )

    async def remove_user_from_group(self, group: str, user: str) -> None:
        await self.app._membership().remove_user_from_group(
            self.name, names.user_id(user), names.group_name(group)
        )


class Upstream:
    """A service that handles what clients of some hubs do. ``name`` is its consumer group:
    every process of the service uses the same one (a second service, with another name,
    sees every entry too). ``answer_unknown``: a blocking invocation of a method without a
    handler gets an error (turn it off when another service handles other methods)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        name: str,
        answer_unknown: bool = True,
        consumer_name: str | None = None,
        concurrency: int = 256,
    ) -> None:
        self.settings = settings or Settings()
        self.name = names.group_name(name)
        self.answer_unknown = answer_unknown
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.hubs: dict[str, Hub] = {}
        self.metrics = Metrics("service")
        self._publishers: dict[str, Publisher] = {}
        self._members: Membership | None = None
        self._consumer: UpstreamConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def hub(self, name: str) -> Hub:
        hub_name = names.hub_name(name)
        hub = self.hubs.get(hub_name)
        if hub is None:
            hub = self.hubs[hub_name] = Hub(hub_name, self)
        return hub

    # ------------------------------------------------------------ running

    async def serve(self) -> None:
        """Consume until :meth:`stop`."""
        telemetry = setup_tracing(f"hubbub-upstream-{self.name}")
        self._consumer = consumer = UpstreamConsumer(
            self.settings,
            group=self.name,
            name=self.consumer_name,
            handler=self.handle,
            metrics=self.metrics,
            tracer=telemetry.tracer if telemetry else None,
            concurrency=self.concurrency,
        )
        log.info("upstream %s: consumer %s started", self.name, self.consumer_name)
        try:
            await consumer.run()
        finally:
            await self._close()
            if telemetry is not None:
                telemetry.shutdown()
            log.info("upstream %s: consumer %s stopped", self.name, self.consumer_name)

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.stop()

    async def __aenter__(self) -> Upstream:
        self._task = asyncio.create_task(self.serve())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    def run(self) -> None:
        """Serve in this process until SIGTERM or SIGINT (uvloop). A bad Redis URL or a Redis
        that does not answer at start ends the process: one line on stderr, exit code 2
        (:mod:`hubbub.startup`); later outages are retried."""
        import uvloop

        require_redis(f"hubbub upstream {self.name}", self.settings, f"hubbub-upstream-{self.name}")

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            await self.serve()

        uvloop.run(main())

    def _publisher(self, hub: str) -> Publisher:
        publisher = self._publishers.get(hub)
        if publisher is None:
            publisher = Publisher.from_settings(self.settings, hub)
            self._publishers[hub] = publisher
        return publisher

    def _membership(self) -> Membership:
        if self._members is None:
            settings = self.settings
            redis = RedisEndpoint.from_settings(settings, f"hubbub-upstream-{self.name}").redis()
            self._members = Membership.from_settings(redis, settings)
        return self._members

    async def _close(self) -> None:
        for publisher in self._publishers.values():
            await publisher.pipe.aclose()
        self._publishers.clear()
        if self._members is not None:
            await self._members.redis.aclose()
            self._members = None

    # ------------------------------------------------------------ handling

    async def handle(self, entry: UpstreamEntry) -> Answer | None:
        """The consumer's handler: finds and calls the hub's handler for ``entry``."""
        hub = self.hubs.get(entry.hub)
        if entry.event is not Event.INVOCATION:
            if hub is not None:
                event = ConnectionEvent(
                    entry.hub, entry.connection, entry.user, _claims(entry), entry.error
                )
                handlers = hub.connected if entry.event is Event.CONNECTED else hub.disconnected
                for on_event in handlers:
                    await on_event(event)
            return None
        handler = hub.methods.get(entry.target.lower()) if hub is not None else None
        if handler is None:
            if self.answer_unknown:
                return Answer(error=f"Method '{entry.target}' does not exist on this hub.")
            return None
        arguments = arguments_of(entry)
        call = Call(
            entry.hub,
            entry.connection,
            entry.user,
            _claims(entry),
            entry.target,
            arguments,
            entry.call or None,
        )
        try:
            result = await handler(call, *arguments)
        except HubError as exc:
            return Answer(error=str(exc))
        except TypeError as exc:
            if _wrong_arguments(handler, arguments):
                return Answer(error=f"Failed to invoke '{entry.target}': wrong arguments.")
            raise exc
        return Answer(result=result)


def _claims(entry: UpstreamEntry) -> dict[str, Any]:
    try:
        claims = orjson.loads(entry.claims)
    except orjson.JSONDecodeError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _wrong_arguments(handler: MethodHandler, arguments: list[Any]) -> bool:
    try:
        inspect.signature(handler).bind(None, *arguments)
    except TypeError:
        return True
    return False
