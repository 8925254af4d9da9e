"""``hubbub-fanout``: a fan-out worker process.

Reads the publish stream in a consumer group, routes each batch (:mod:`.route`), claims
entries left pending by dead workers, and reaps gateways whose heartbeat expired.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

import uvloop
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hubbub import redis as hubbub_redis
from hubbub.keys import KeySchema
from hubbub.logs import configure
from hubbub.membership import Membership
from hubbub.settings import Settings

from .route import Router

log = logging.getLogger("hubbub.fanout")


class Worker:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.schema = KeySchema(settings.key_prefix)
        self.name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.router = Router(redis, self.schema, settings.worker_group, settings.inbox_maxlen)
        self.membership = Membership(redis, self.schema)
        self.stopping = False

    async def run(self) -> None:
        backoff = 0.05
        # Our own pending entries first (a restart with the same name), then new ones.
        cursor = "0"
        next_claim = next_reap = 0.0
        ready = False
        while not self.stopping:
            try:
                if not ready:
                    await self.router.ensure_group()
                    ready = True
                now = time.monotonic()
                if now >= next_claim:
                    await self.claim()
                    next_claim = now + self.settings.claim_interval
                if now >= next_reap:
                    await self.reap()
                    next_reap = now + self.settings.reap_interval
                response = await self.redis.xreadgroup(
                    self.settings.worker_group,
                    self.name,
                    {self.schema.publish_stream: cursor},
                    count=self.settings.read_batch,
                    block=self.settings.read_block_ms if cursor == ">" else None,
                )
                entries = response[0][1] if response else []
                if cursor != ">" and not entries:
                    cursor = ">"
                await self.router.route(entries)
                backoff = 0.05
            except RedisError as exc:
                log.warning("redis error, retrying in %.2fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                cursor = "0"  # re-read what we hold but may not have delivered
                ready = False

    async def claim(self) -> None:
        """Take over entries another worker read but never acknowledged (it died)."""
        start = "0-0"
        for _ in range(100):
            start_id, entries, deleted = await self.redis.xautoclaim(
                self.schema.publish_stream,
                self.settings.worker_group,
                self.name,
                min_idle_time=self.settings.claim_idle_ms,
                start_id=start,
                count=self.settings.read_batch,
            )
            if entries:
                log.info("claimed %d pending entries", len(entries))
                await self.router.route(entries)
            if deleted:
                await self.redis.xack(
                    self.schema.publish_stream, self.settings.worker_group, *deleted
                )
            if start_id in (b"0-0", "0-0"):
                return
            start = start_id

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
    redis = hubbub_redis.connect(settings.redis_url)
    worker = Worker(settings, redis)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop() -> None:
        worker.stopping = True
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("fan-out worker %s started", worker.name)
    try:
        await worker.run()
    except asyncio.CancelledError:
        log.info("fan-out worker %s stopping", worker.name)
    finally:
        await redis.aclose()


def main() -> None:
    settings = Settings()
    configure(settings.log_level, "fanout")
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
