"""The gateway application: SignalR endpoints for clients, REST for internal services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.types import ASGIApp

from hubbub.identity import JwksVerifier
from hubbub.logs import REFUSALS
from hubbub.metrics import Metrics
from hubbub.redis.directory import Directory
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.membership import Membership
from hubbub.redis.pipe import Pipe
from hubbub.redis.stream import PublishStream
from hubbub.settings import Settings
from hubbub.telemetry import setup_tracing
from hubbub.tokens import ClientTokenVerifier, ServiceTokenVerifier
from hubbub.wire import keys
from hubbub.wire.keys import KeySchema

from . import admin, apidocs, connect, demo, endpoints, errors, negotiate
from .deliver import LocalConnection, LocalIndex
from .health import Health
from .inbox import InboxReader
from .invoke import Invoker
from .middleware import body_limit, cors
from .reconcile import Reconciler
from .resume import Journal
from .state import GatewayState

log = logging.getLogger("hubbub.gateway")


async def _heartbeat(state: GatewayState, reader: InboxReader) -> None:
    """Keep this gateway's entry alive; if it was reaped meanwhile, make clients reconnect."""
    settings, redis, schema = state.settings, state.redis, state.schema
    first = True
    while True:
        try:
            now = time.time()
            added = await redis.zadd(
                schema.gateways, {settings.gateway_id: now + settings.gateway_lease}
            )
            # Workers heartbeat into their own set, scored by when their heartbeat expires.
            await _report_status(state)
            workers = await redis.zcount(schema.workers, now, "+inf")
            services = await redis.zcount(schema.upstream_services, now, "+inf")
            state.invoker.services = state.health.upstream_services = services
            if added and not first:
                log.warning("this gateway was reaped while unreachable; closing its clients")
                await reader.create_inbox()
                for conn in tuple(state.index.connections.values()):
                    conn.close(allow_reconnect=True)
            first = False
            state.health.heartbeat(True, workers)
        except RedisError as exc:
            state.health.heartbeat(False)
            state.health.redis_failed(repr(exc))
            state.metrics.redis_errors.labels("heartbeat").inc()
            log.warning("heartbeat failed: %r", exc)
        await asyncio.sleep(settings.heartbeat_interval)


async def _report_status(state: GatewayState) -> None:
    """What the admin console shows of this gateway (every gateway's, from any gateway):
    its connections and whether it drains, renewed with each heartbeat, gone with it."""
    status = state.schema.gateway_status(state.settings.gateway_id)
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hset(
            status,
            mapping={
                keys.GATEWAY_STATUS_CONNECTIONS: len(state.index.connections),
                keys.GATEWAY_STATUS_DRAINING: int(state.draining),
            },
        )
        pipe.pexpire(status, int(state.settings.gateway_ttl * 1000))
        await pipe.execute()


async def _ticker(state: GatewayState) -> None:
    keepalive = max(1, round(state.settings.keepalive_interval))
    timeout = max(1, round(state.settings.client_timeout))
    while True:
        await asyncio.sleep(1.0)
        state.index.tick(keepalive, timeout)
        journal = state.index.journal
        if journal is not None:
            try:
                await journal.tick(tuple(state.index.connections.values()))
            except RedisError as exc:
                state.metrics.redis_errors.labels("resume").inc()
                log.warning("acknowledgements not stored: %r", exc)


class GatewayApp(FastAPI):
    """FastAPI with the application's middleware (``add_middleware``) *outside* FastAPI's own
    layers (its server-error, telemetry and body-limit middleware, then exception handling).

    Every request still passes every middleware the gateway adds, and the send shortcut, the
    innermost of them, hands the hot sends to their endpoints before FastAPI's fixed layers,
    which would otherwise cost a send several coroutine hops (bench/ingest.py: about a tenth
    of the gateway's CPU per single send). A request the middleware refuses or the shortcut
    answers therefore does not pass FastAPI's server-error page: an unexpected exception
    there reaches uvicorn, which answers 500 and logs it.
    """

    def build_middleware_stack(self) -> ASGIApp:
        added, self.user_middleware = self.user_middleware, []
        try:
            app = super().build_middleware_stack()  # FastAPI's own layers around the router
        finally:
            self.user_middleware = added
        for factory, args, kwargs in reversed(added):
            app = factory(app, *args, **kwargs)
        return app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        endpoint = RedisEndpoint.from_settings(settings, f"hubbub-gateway-{settings.gateway_id}")
        redis = endpoint.redis()
        # Hot-path connections: one shared by every publish, one for the blocking inbox read.
        publish_pipe = Pipe(endpoint)
        inbox_pipe = Pipe(endpoint)
        schema = KeySchema(settings.key_prefix)
        telemetry = setup_tracing("hubbub-gateway")
        metrics = Metrics("gateway")
        publish = PublishStream.from_settings(publish_pipe, settings)
        index = LocalIndex(
            metrics,
            telemetry.tracer if telemetry else None,
            schema.inbox(settings.gateway_id),
            schema.broadcast_feed,
            settings.invocation_timeout,
            settings.max_pending_invocations,
        )
        state = GatewayState(
            settings=settings,
            redis=redis,
            schema=schema,
            membership=Membership.from_settings(redis, settings, publish_pipe),
            publish=publish,
            index=index,
            metrics=metrics,
            tokens=ServiceTokenVerifier(settings.access_keys, public_urls=settings.public_urls),
            client_tokens=ClientTokenVerifier(
                settings.access_keys, public_urls=settings.public_urls
            ),
            health=Health.for_settings(settings),
            invoker=Invoker(
                settings, pipe=publish_pipe, publish=publish, index=index, metrics=metrics
            ),
            directory=Directory.from_settings(redis, settings),
            telemetry=telemetry,
            identity=JwksVerifier.from_settings(settings),
        )
        app.state.hubbub = state
        if state.identity is not None:
            await state.identity.start()  # at most HUBBUB_JWKS_FETCH_TIMEOUT; never raises
        reader = InboxReader(
            settings, redis=redis, pipe=inbox_pipe, index=state.index, health=state.health
        )
        await reader.start_positions()
        index.journal = Journal(
            redis,
            state.membership,
            settings.gateway_id,
            metrics,
            settings.reconnect_buffer_bytes,
            settings.reconnect_window,
            reader.inbox,
            reader.feed,
            index,
            publish_pipe,
        )
        index.journal.positions = reader.positions
        tasks = [
            asyncio.create_task(reader.run(), name="inbox"),
            asyncio.create_task(_heartbeat(state, reader), name="heartbeat"),
            asyncio.create_task(_ticker(state), name="ticker"),
            asyncio.create_task(Reconciler(state).run(), name="reconcile"),
        ]
        logging.getLogger(REFUSALS).addHandler(state.refusals)
        log.info(
            "gateway %s ready on http://%s:%d", settings.gateway_id, settings.host, settings.port
        )
        try:
            yield
        finally:
            logging.getLogger(REFUSALS).removeHandler(state.refusals)
            await _shutdown(state, tasks)
            if state.identity is not None:
                await state.identity.aclose()
            await publish_pipe.aclose()
            await inbox_pipe.aclose()

    app = GatewayApp(
        title="Hubbub",
        version="0.1.0",
        summary="SignalR-compatible real-time messaging on Redis",
        lifespan=lifespan,
        # Swagger UI from the gateway's own files (apidocs), never a CDN; no ReDoc.
        docs_url=None,
        redoc_url=None,
        # The gateway traces with its own spans (hubbub.telemetry) and counts with Prometheus;
        # FastAPI's telemetry would also look for global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    negotiating = negotiate.install(app)
    app.include_router(connect.router)
    sends: list[tuple[str, endpoints.ShortcutTarget]] = [
        *endpoints.install(app, settings),
        ("/hubs/{hub}/negotiate", negotiating),
    ]
    admin.install(app)
    apidocs.install(app)
    demo.install(app, settings)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        """Browsers ask for it with every page (the admin console, /docs): nothing, and no
        refusal logged for it."""
        return Response(status_code=204)

    @app.api_route("/api/health", methods=["GET", "HEAD"], tags=["health"])
    async def health(request: Request) -> Response:
        state: GatewayState = request.app.state.hubbub
        ready, body = state.health.report(state.draining)
        # Which process answered: a launcher checks that its own child, not another one on
        # the same port, is the one that became healthy (hubbub.dev.launcher).
        body["gatewayId"] = state.settings.gateway_id
        body["pid"] = os.getpid()
        if state.identity is not None:
            # Reported, not a reason to leave the load balancer: access-key clients and the
            # REST API do not need the identity provider, and every gateway sees the same one.
            body["identityProvider"] = state.identity.status()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        state: GatewayState = request.app.state.hubbub
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/api/live", methods=["GET", "HEAD"], tags=["health"])
    async def live() -> Response:
        """Liveness: the process answers. Not tied to Redis, so an outage restarts nothing.
        A small JSON body for people and scripts; HEAD gets the headers alone."""
        return JSONResponse({"status": "ok"})

    # Innermost first: each add_middleware wraps what was added before, so the send shortcut
    # sits behind the body limit, CORS and anything added later, like every route.
    app.add_middleware(
        endpoints.send_shortcut, sends=sends, sockets=[("/hubs/{hub}", connect.SocketEndpoint())]
    )
    app.add_middleware(body_limit, limit=settings.max_body_size)
    app.add_middleware(
        cors,
        allow_origin_regex=".*" if "*" in settings.cors_origins else None,
        allow_origins=[o for o in settings.cors_origins if o != "*"],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    return app


async def drain(state: GatewayState, deadline: float) -> None:
    """Refuse new clients and ask every connected one to reconnect (to another gateway).

    Close carries ``allowReconnect`` and no ``error``: the JS client then reconnects with
    a new connection id, and pysignalr does not raise. A resumable connection instead loses
    its transport without a Close, so its client re-attaches elsewhere and keeps its id, its
    groups and every message: the gateway goes on journaling for it until another gateway
    adopts it (or the deadline).
    """
    state.draining = True
    connections = tuple(state.index.connections.values())
    resumable = [c for c in connections if c.resume is not None and not c.resume.released]
    for conn in connections:
        if conn.resume is not None and not conn.resume.released:
            conn.socket.close(1012)  # service restart, and no SignalR Close: re-attach
        else:
            conn.close(allow_reconnect=True)
    waits = [c.closed() for c in connections]
    if resumable and state.index.journal is not None:
        waits.append(_handed_over(state.index.journal, resumable))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), deadline)
    handed = sum(1 for c in resumable if c.resume is not None and c.resume.released)
    log.info("drained %d connections (%d resumed elsewhere)", len(connections), handed)


async def _handed_over(journal: Journal, connections: list[LocalConnection]) -> None:
    """Until every resumable connection was adopted by another gateway (or has ended)."""
    while any(c.resume is not None and not c.resume.released for c in connections):
        journal.changed.clear()
        await journal.changed.wait()


async def _shutdown(state: GatewayState, tasks: list[asyncio.Task[None]]) -> None:
    """Drain if nobody did yet, stop the background tasks, deregister."""
    if not state.draining:
        await drain(state, state.settings.drain_timeout)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    index = state.index
    log.info("delivered %d, duplicates suppressed %d", index.delivered, index.duplicates)
    try:
        await state.membership.reap_gateway(state.settings.gateway_id)
    except RedisError as exc:
        log.warning("could not deregister on shutdown: %r", exc)
    await state.redis.aclose()
    if state.telemetry is not None:
        state.telemetry.shutdown()
