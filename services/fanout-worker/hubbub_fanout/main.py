"""``hubbub-fanout``: a fan-out worker process.

The process around a :class:`~.supervisor.Supervisor`: settings, logging, the ``/metrics``,
``/livez`` and ``/readyz`` server (:mod:`.health`), tracing, the Redis connections, and
stopping on ``SIGTERM`` or ``SIGINT``.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop

from hubbub.logs import configure
from hubbub.metrics import Metrics
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.pipe import Pipe
from hubbub.runtime import tune_gc
from hubbub.settings import Settings
from hubbub.telemetry import setup_tracing

from .health import Health, serve_probes
from .supervisor import Supervisor, worker_name

log = logging.getLogger("hubbub.fanout")


async def serve(settings: Settings) -> None:
    name = worker_name(settings)
    settings = settings.model_copy(update={"worker_name": name})
    endpoint = RedisEndpoint.from_settings(settings, f"hubbub-fanout-{name}")
    redis = endpoint.redis()
    pipe = Pipe(endpoint)
    metrics = Metrics()
    health = Health.for_settings(settings)
    if settings.metrics_port:
        try:
            serve_probes("0.0.0.0", settings.metrics_port, metrics.registry, health)
        except OSError as exc:  # e.g. two workers on one machine: route anyway
            log.warning(
                "no /metrics, /livez, /readyz: port %d unavailable (%s)",
                settings.metrics_port,
                exc,
            )
    telemetry = setup_tracing("hubbub-fanout")
    worker = Supervisor(
        settings,
        redis=redis,
        pipe=pipe,
        metrics=metrics,
        tracer=telemetry.tracer if telemetry else None,
        health=health,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info("fan-out worker %s started", name)
    try:
        await worker.run()
    finally:
        log.info("fan-out worker %s stopped", name)
        await redis.aclose()
        await pipe.aclose()
        if telemetry is not None:
            telemetry.shutdown()


def main() -> None:
    settings = Settings()
    configure(settings.log_level, "fanout", settings.log_format)
    tune_gc()
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
