"""``hubbub-fanout``: a fan-out worker process.

Holds leases on publish partitions (:mod:`.leases`), reads them in a consumer group, routes
each batch (:mod:`.route`), and reaps gateways whose heartbeat expired.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

import uvloop
from prometheus_client import start_http_server
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hubbub.logs import configure
from hubbub.metrics import Metrics
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.membership import Membership
from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import Command, streams_reply
from hubbub.redis.stream import id_after
from hubbub.runtime import tune_gc
from hubbub.settings import Settings
from hubbub.telemetry import Telemetry, setup_tracing
from hubbub.wire.keys import KeySchema

from .leases import Leases
from .route import Router

log = logging.getLogger("hubbub.fanout")
TRIM_INTERVAL = 1.0
GAUGE_INTERVAL = 5.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        pipe: Pipe,
        metrics: Metrics | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.pipe = pipe
        self.metrics = metrics or Metrics()
        self.schema = KeySchema(settings.key_prefix)
        self.name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.router = Router(
            redis,
            pipe,
            self.schema,
            settings.worker_group,
            settings.inbox_maxlen,
            self.metrics,
            telemetry.tracer if telemetry else None,
        )
        self.leases = Leases(
            redis, self.schema, self.name, settings.publish_partitions, settings.lease_ms
        )
        self.membership = Membership(redis, self.schema)
        self.streams = {
            self.schema.publish_partition(n).encode(): n for n in range(settings.publish_partitions)
        }
        # Partitions whose pending entries (left by a previous owner, or by us before a
        # Redis error) must be routed before anything new, to keep their order.
        self.recovering: set[int] = set()
        # Last entry routed (and acknowledged) per partition stream, for trimming.
        self.routed: dict[bytes, bytes] = {}
        self.stopping = False

    async def run(self) -> None:
        settings = self.settings
        backoff = 0.05
        next_lease = next_reap = next_trim = next_gauge = 0.0
        block_ms = max(1, min(settings.read_block_ms, int(settings.lease_interval * 1000)))
        while not self.stopping:
            try:
                now = time.monotonic()
                if now >= next_lease:
                    acquired, lost = await self.leases.refresh()
                    for n in acquired:
                        await self.router.ensure_group(self.schema.publish_partition(n))
                    self.recovering = (self.recovering | acquired) - lost
                    if acquired or lost:
                        log.info(
                            "partitions: %s (acquired %s, released %s)",
                            sorted(self.leases.owned),
                            sorted(acquired),
                            sorted(lost),
                        )
                    next_lease = now + settings.lease_interval
                if now >= next_reap:
                    await self.reap()
                    next_reap = now + settings.reap_interval
                for n in sorted(self.recovering):
                    await self.recover(n)
                    self.recovering.discard(n)
                if not self.leases.owned:
                    await asyncio.sleep(settings.lease_interval)
                    continue
                owned = [self.schema.publish_partition(n) for n in sorted(self.leases.owned)]
                response = await self.pipe.execute(
                    "XREADGROUP", "GROUP", settings.worker_group, self.name,
                    "COUNT", settings.read_batch, "BLOCK", block_ms,
                    "STREAMS", *owned, *(">" for _ in owned),
                    block=block_ms / 1000,
                )  # fmt: skip
                for stream, entries in streams_reply(response):
                    await self.router.route(self.streams[stream], entries)
                    self.routed[stream] = entries[-1][0]
                if time.monotonic() >= next_trim:
                    await self.trim()
                    next_trim = time.monotonic() + TRIM_INTERVAL
                if time.monotonic() >= next_gauge:
                    await self.measure_lag()
                    next_gauge = time.monotonic() + GAUGE_INTERVAL
                backoff = 0.05
            except RedisError as exc:
                self.metrics.redis_errors.labels("worker").inc()
                log.warning("redis error, retrying in %.2fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self.recovering |= self.leases.owned
        try:
            await self.leases.release_all()
        except RedisError as exc:
            log.warning("could not release leases (they will expire): %r", exc)

    async def measure_lag(self) -> None:
        """Lag (not yet read) and pending (read, not acknowledged) of the partitions we own."""
        lag, pending = self.metrics.stream_lag, self.metrics.stream_pending
        for n in range(self.settings.publish_partitions):
            if n not in self.leases.owned:
                for gauge in (lag, pending):
                    try:
                        gauge.remove(str(n))
                    except KeyError:
                        pass
                continue
            for group in await self.redis.xinfo_groups(self.schema.publish_partition(n)):
                name = group["name"]
                if (
                    name.decode() if isinstance(name, bytes) else name
                ) == self.settings.worker_group:
                    lag.labels(str(n)).set(group.get("lag") or 0)
                    pending.labels(str(n)).set(group["pending"])

    async def trim(self) -> None:
        """Drop routed entries. We are the partition's only reader and route in order, so
        everything up to the last entry we routed is acknowledged and needed by nobody; the
        length cap (``publish_stream_maxlen``) only matters while no worker routes."""
        routed, self.routed = self.routed, {}
        trims: list[Command] = [
            ("XTRIM", stream, "MINID", id_after(last))
            for stream, last in routed.items()
            if self.streams[stream] in self.leases.owned
        ]
        # The broadcast feed is shared by all gateways: keep a retention window, not a cursor.
        oldest = int(time.time() * 1000) - self.settings.broadcast_retention_ms
        trims.append(("XTRIM", self.schema.broadcast_feed, "MINID", f"{oldest}-0"))
        await self.pipe.execute_many(trims)

    async def recover(self, partition: int) -> None:
        """Route, in order, every entry of the partition that was read but not acknowledged."""
        stream = self.schema.publish_partition(partition)
        start = "0-0"
        while True:
            start_id, entries, deleted = await self.redis.xautoclaim(
                stream,
                self.settings.worker_group,
                self.name,
                min_idle_time=0,
                start_id=start,
                count=self.settings.read_batch,
            )
            if entries:
                log.info("partition %d: routing %d pending entries", partition, len(entries))
                await self.router.route(partition, entries)
            if deleted:
                await self.redis.xack(stream, self.settings.worker_group, *deleted)
            if start_id in (b"0-0", "0-0"):
                break
            start = start_id
        await self._forget_idle_consumers(stream)

    async def _forget_idle_consumers(self, stream: str) -> None:
        """Workers come and go; their names would pile up in the group. Once their pending
        entries are ours, consumers idle for longer than a lease are dropped."""
        for consumer in await self.redis.xinfo_consumers(stream, self.settings.worker_group):
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if (
                name != self.name
                and consumer["pending"] == 0
                and consumer["idle"] > self.settings.lease_ms
            ):
                await self.redis.xgroup_delconsumer(stream, self.settings.worker_group, name)

    async def reap(self) -> None:
        """Remove the connections of gateways whose heartbeat has expired."""
        dead = await self.redis.zrangebyscore(self.schema.gateways, "-inf", time.time())
        for raw in dead:
            gateway = raw.decode()
            lock = self.schema.reaper_lock(gateway)
            if not await self.redis.set(lock, self.name, nx=True, ex=60):
                continue
            removed = await self.membership.reap_gateway(gateway)
            await self.redis.delete(lock)
            log.info("reaped gateway %s: %d connections removed", gateway, removed)


async def serve(settings: Settings) -> None:
    name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    settings = settings.model_copy(update={"worker_name": name})
    endpoint = RedisEndpoint.from_settings(settings, f"hubbub-fanout-{name}")
    redis = endpoint.redis()
    pipe = Pipe(endpoint)
    metrics = Metrics()
    if settings.metrics_port:
        try:
            start_http_server(settings.metrics_port, registry=metrics.registry)
        except OSError as exc:  # e.g. two workers on one machine: route anyway
            log.warning("no /metrics: port %d unavailable (%s)", settings.metrics_port, exc)
    telemetry = setup_tracing("hubbub-fanout")
    worker = Worker(settings, redis, pipe, metrics, telemetry)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        worker.stopping = True  # the loop ends after the current read (at most a lease interval)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("fan-out worker %s started", worker.name)
    try:
        await worker.run()
    finally:
        log.info("fan-out worker %s stopped", worker.name)
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
