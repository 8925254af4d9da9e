"""Supervisor: runs a worker's parts in one loop, in the order that keeps partitions in order.

Each turn runs the periodic jobs that are due (leases, reaping, trimming, gauges), then
recovers the partitions that need it (their pending entries are routed before anything new),
then reads and routes what is new. Everything runs in this one task, one step at a time, so
no two steps ever see a partition change under them. A Redis error anywhere backs off and
marks every owned partition for recovery, since a batch may have been read and not
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from opentelemetry.trace import Tracer
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hubbub.metrics import Metrics
from hubbub.redis.leases import Leases
from hubbub.redis.pipe import Pipe
from hubbub.settings import Settings

from .consume import Consumer
from .gauges import Gauges
from .health import Health
from .reap import Reaper
from .recover import Recovery
from .route import Router

log = logging.getLogger("hubbub.fanout")

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


def worker_name(settings: Settings) -> str:
    """The name this worker holds leases and reads under: the configured one, else host-pid."""
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Periodic:
    """A job run every ``interval`` seconds; the first run is at the first turn."""

    name: str
    interval: float
    run: Callable[[], Awaitable[None]]
    due: float = 0.0  # on the schedule's clock


class Schedule:
    """Runs the periodic jobs that are due, in their order. A job that raises stays due (it
    runs again at the next turn, after the caller's backoff) and the jobs after it wait."""

    def __init__(self, jobs: Sequence[Periodic], clock: Callable[[], float] = time.monotonic):
        self.jobs = list(jobs)
        self.clock = clock

    async def run_due(self) -> None:
        for job in self.jobs:
            started = self.clock()
            if started >= job.due:
                await job.run()
                job.due = started + job.interval


class Supervisor:
    """One worker: its parts, built from the settings, and the loop that runs them."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        pipe: Pipe,
        metrics: Metrics,
        tracer: Tracer | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health or Health.for_settings(settings)
        self.name = name = worker_name(settings)
        self.leases = Leases(settings, redis=redis, name=name)
        router = Router(
            settings, pipe=pipe, metrics=metrics, tracer=tracer, epochs=self.leases.epochs
        )
        self.recovery = Recovery(settings, redis=redis, router=router, name=name)
        self.consumer = Consumer(settings, pipe=pipe, router=router, name=name)
        self.router = router
        reaper = Reaper(settings, redis=redis, pipe=pipe, name=name)
        gauges = Gauges(settings, redis=redis, metrics=metrics)
        consumer, leases = self.consumer, self.leases
        self.schedule = Schedule(
            [
                Periodic("leases", settings.lease_interval, self.refresh_leases),
                Periodic("reap", settings.reap_interval, reaper.reap),
                Periodic("trim", settings.trim_interval, lambda: consumer.trim(leases.owned)),
                Periodic("gauges", settings.gauge_interval, lambda: gauges.measure(leases.owned)),
            ]
        )
        # Partitions whose pending entries (left by a previous owner, or by us before a
        # Redis error) must be routed before anything new, to keep their order.
        self.recovering: set[int] = set()
        self.stopping = False

    def stop(self) -> None:
        """Stop after the current step (a read waits at most a lease interval)."""
        self.stopping = True

    async def run(self) -> None:
        """Turn until stopped, backing off while Redis fails; then give the leases back."""
        backoff = BACKOFF_FIRST
        health = self.health
        while not self.stopping:
            health.turn_started()
            try:
                await self.turn()
                health.turn_done()
                backoff = BACKOFF_FIRST
            except RedisError as exc:
                health.turn_failed(repr(exc))
                self.metrics.redis_errors.labels("worker").inc()
                log.warning("redis error, retrying in %.2fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                self.recovering |= self.leases.owned  # a read batch may be unacknowledged
                # A failover may have lost the markers of changes it kept (replication is
                # asynchronous and the markers come after the changes): relearn every target.
                self.router.targets.forget_all()
        try:
            await self.leases.release_all()
        except RedisError as exc:
            log.warning("could not release leases (they will expire): %r", exc)

    async def turn(self) -> None:
        """Due jobs, then recovery, then one read: a partition's pending entries go first.
        After a stall (the last lease refresh is no longer fresh) the leases are refreshed
        first, so a partition taken over meanwhile is not read again."""
        await self.schedule.run_due()
        if self.leases.owned and not self.leases.fresh():
            await self.refresh_leases()
        for n in sorted(self.recovering):
            await self.recovery.recover(n)
            self.recovering.discard(n)
        if self.leases.owned:
            await self.consumer.consume(sorted(self.leases.owned))
        else:
            await asyncio.sleep(self.settings.lease_interval)

    async def refresh_leases(self) -> None:
        """Renew and rebalance; a partition just acquired is recovered before it is read."""
        acquired, lost = await self.leases.refresh()
        self.recovering = (self.recovering | acquired) - lost
        if acquired or lost:
            log.info(
                "partitions: %s (acquired %s, released %s)",
                sorted(self.leases.owned),
                sorted(acquired),
                sorted(lost),
            )
