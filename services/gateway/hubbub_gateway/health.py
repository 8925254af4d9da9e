"""Health: what ``/api/health`` (readiness) says, from facts the gateway's loops record.

Ready means this gateway can do its job: Redis answers (its inbox reader completed a read in
the last :attr:`Health.ready_within` seconds, and the last heartbeat succeeded) and it is not
draining. A blocking read returns at least every ``read_block_ms``, so a frozen or unreachable
Redis turns readiness to 503 within about 2 s. Workers are reported but do not gate
readiness: without them sends are still accepted (and delivered once a worker routes them),
so taking gateways out of service would only add an outage; a gateway that sees no live
worker for :attr:`Health.workers_grace` seconds says so in one WARNING line instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hubbub.settings import Settings

log = logging.getLogger("hubbub.gateway")


class Health:
    def __init__(
        self,
        ready_within: float,
        workers_grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ready_within = ready_within
        self.workers_grace = workers_grace
        self.clock = clock
        self.last_read: float | None = None
        self.heartbeat_ok = True
        self.error: str | None = None
        self.workers: int | None = None  # live workers at the last heartbeat (None: unknown)
        self.upstream_services = 0  # live upstream services (consumer groups), the same
        self.workers_gone_since: float | None = None
        self._warned_no_workers = False
        self._was_ready: bool | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Health:
        """Ready within 2 s, or two blocking reads if those are longer; workers may be
        missing for a gateway TTL (a rolling restart of workers) before it is worth a line."""
        return cls(
            ready_within=max(2.0, 2 * settings.read_block_ms / 1000),
            workers_grace=max(settings.gateway_ttl, 2 * settings.lease_ms / 1000),
        )

    # ------------------------------------------------------------ what the loops record

    def read_done(self) -> None:
        self.last_read = self.clock()

    def redis_failed(self, error: str) -> None:
        self.error = error

    def heartbeat(self, ok: bool, workers: int | None = None) -> None:
        self.heartbeat_ok = ok
        if not ok or workers is None:
            return
        self.workers = workers
        now = self.clock()
        if workers:
            if self._warned_no_workers:
                log.info("%d fan-out workers live again", workers)
            self.workers_gone_since = None
            self._warned_no_workers = False
        elif self.workers_gone_since is None:
            self.workers_gone_since = now
        elif not self._warned_no_workers and now - self.workers_gone_since >= self.workers_grace:
            self._warned_no_workers = True
            log.warning(
                "no fan-out worker has been live for %.0f s: sends are accepted but nothing "
                "is delivered until a worker runs",
                now - self.workers_gone_since,
            )

    # ------------------------------------------------------------ what readiness answers

    def report(self, draining: bool) -> tuple[bool, dict[str, object]]:
        now = self.clock()
        read = self.last_read
        since = None if read is None else round(now - read, 3)
        redis_ok = self.heartbeat_ok and since is not None and since <= self.ready_within
        ready = redis_ok and not draining
        redis: dict[str, object] = {"ok": redis_ok, "seconds_since_read": since}
        if not redis_ok and self.error:
            redis["error"] = self.error
        body: dict[str, object] = {
            "status": "ready" if ready else "not ready",
            "draining": draining,
            "redis": redis,
            "workers": {"live": self.workers, "ok": bool(self.workers)},
            "upstreamServices": self.upstream_services,
        }
        if self._was_ready is not None and ready != self._was_ready:
            if ready:
                log.info("ready again")
            elif not draining:
                log.warning("not ready: Redis not answering (%s)", self.error or "no reply")
        self._was_ready = ready
        return ready, body
