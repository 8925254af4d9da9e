"""``hubbub-fanout``: a fan-out worker process.

The process around a :class:`~.supervisor.Supervisor`: settings, logging, the ``/metrics``,
``/livez`` and ``/readyz`` server (:mod:`.health`), tracing, the Redis connections, and
stopping on ``SIGTERM`` or ``SIGINT``.

With ``HUBBUB_UPSTREAM_URL`` or ``HUBBUB_UPSTREAM_RULES`` set, the process also runs the HTTP
upstream dispatcher (:class:`hubbub.upstream.webhook.Webhooks` on an
:class:`~hubbub.upstream.consumer.UpstreamConsumer` of group ``HUBBUB_UPSTREAM_GROUP``) beside
the supervisor. ``hubbub-fanout --upstream-only`` runs the dispatcher alone, to scale it apart
from routing; ``--no-upstream`` runs routing alone whatever the settings say.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Literal

import uvloop
from opentelemetry.trace import Tracer

from hubbub.logs import configure
from hubbub.metrics import Metrics
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.pipe import Pipe
from hubbub.runtime import tune_gc
from hubbub.settings import Settings
from hubbub.startup import add_version, load_settings, require_redis
from hubbub.telemetry import setup_tracing
from hubbub.upstream.consumer import UpstreamConsumer
from hubbub.upstream.webhook import InvalidRules, Webhooks

from .health import Health, serve_probes
from .supervisor import Supervisor, worker_name

log = logging.getLogger("hubbub.fanout")

Mode = Literal["both", "route", "upstream"]


def upstream_configured(settings: Settings) -> bool:
    return bool(settings.upstream_url or settings.upstream_rules)


class Dispatcher:
    """The HTTP upstream dispatcher: a consumer whose handler is :class:`Webhooks`."""

    def __init__(
        self, settings: Settings, name: str, metrics: Metrics, tracer: Tracer | None
    ) -> None:
        self.webhooks = Webhooks(settings, metrics=metrics, tracer=tracer)
        self.consumer = UpstreamConsumer(
            settings,
            group=settings.upstream_group,
            name=name,
            handler=self.webhooks,
            metrics=metrics,
            tracer=tracer,
        )
        self.group = settings.upstream_group

    def stop(self) -> None:
        self.consumer.stop()

    async def run(self) -> None:
        log.info("upstream dispatcher started (group %s)", self.group)
        try:
            await self.consumer.run()
        finally:
            await self.webhooks.aclose()
            log.info("upstream dispatcher stopped")


async def _mark_health(health: Health, task: asyncio.Task[None], interval: float) -> None:
    """Dispatcher alone: live and ready while it runs (it backs off on Redis errors itself)."""
    while not task.done():
        health.turn_started()
        health.turn_done()
        await asyncio.sleep(interval)


async def serve(settings: Settings, mode: Mode = "both") -> None:
    name = worker_name(settings)
    settings = settings.model_copy(update={"worker_name": name})
    metrics = Metrics("worker")
    health = Health.for_settings(settings)
    if settings.metrics_port:
        try:
            serve_probes(settings.metrics_host, settings.metrics_port, metrics.registry, health)
        except OSError as exc:  # e.g. two workers on one machine: route anyway
            log.warning(
                "no /metrics, /livez, /readyz: %s:%d unavailable (%s)",
                settings.metrics_host,
                settings.metrics_port,
                exc,
            )
    telemetry = setup_tracing("hubbub-fanout")
    tracer = telemetry.tracer if telemetry else None
    dispatcher = Dispatcher(settings, name, metrics, tracer) if mode != "route" else None
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    if dispatcher is not None:
        tasks.append(asyncio.create_task(dispatcher.run(), name="upstream"))
    endpoint = RedisEndpoint.from_settings(settings, f"hubbub-fanout-{name}")
    redis = endpoint.redis()
    pipe = Pipe(endpoint)
    worker: Supervisor | None = None
    watch: asyncio.Task[None] | None = None
    if mode != "upstream":
        worker = Supervisor(
            settings, redis=redis, pipe=pipe, metrics=metrics, tracer=tracer, health=health
        )
        tasks.append(asyncio.create_task(worker.run(), name="supervisor"))
    elif tasks:
        watch = asyncio.create_task(_mark_health(health, tasks[0], settings.lease_interval))

    def stop() -> None:
        if worker is not None:
            worker.stop()
        if dispatcher is not None:
            dispatcher.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("fan-out worker %s started (%s)", name, _describe(mode))
    try:
        # One part failing stops the other: the process exits and is restarted whole.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        if any(task.exception() for task in done):
            stop()
        await asyncio.gather(*tasks)
    finally:
        log.info("fan-out worker %s stopped", name)
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await redis.aclose()
        await pipe.aclose()
        if telemetry is not None:
            telemetry.shutdown()


def _describe(mode: Mode) -> str:
    return {"both": "routing and upstream dispatcher", "route": "routing",
            "upstream": "upstream dispatcher only"}[mode]  # fmt: skip


PROG = "hubbub-fanout"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run one Hubbub fan-out worker (and the HTTP upstream dispatcher when "
        "HUBBUB_UPSTREAM_URL or HUBBUB_UPSTREAM_RULES is set), with Redis at HUBBUB_REDIS_URL; "
        "/metrics, /livez and /readyz on HUBBUB_METRICS_HOST:HUBBUB_METRICS_PORT.",
        epilog="Configured by HUBBUB_* environment variables (shared/hubbub/settings.py, "
        "docs/operations.md). Exits 2, with one line, when Redis is unusable.",
    )
    add_version(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--upstream-only",
        action="store_true",
        help="run only the HTTP upstream dispatcher (needs HUBBUB_UPSTREAM_URL or _RULES)",
    )
    group.add_argument(
        "--no-upstream", action="store_true", help="run only routing, never the dispatcher"
    )
    return p


def mode_of(args: argparse.Namespace, settings: Settings, p: argparse.ArgumentParser) -> Mode:
    configured = upstream_configured(settings)
    if args.upstream_only:
        if not configured:
            p.error("--upstream-only needs HUBBUB_UPSTREAM_URL or HUBBUB_UPSTREAM_RULES")
        return "upstream"
    if args.no_upstream or not configured:
        return "route"
    return "both"


def parse_mode(argv: Sequence[str], settings: Settings) -> Mode:
    p = parser()
    return mode_of(p.parse_args(argv), settings, p)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)  # --help starts nothing
    settings = load_settings(PROG)
    mode = mode_of(args, settings, p)
    configure(settings.log_level, "fanout", settings.log_format)
    # httpx logs every request at INFO: one line per webhook call is too many.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    require_redis(PROG, settings, "hubbub-fanout-check")
    tune_gc()
    try:
        uvloop.run(serve(settings, mode))
    except InvalidRules as exc:
        log.error("invalid upstream settings: %s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
