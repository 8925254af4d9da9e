"""Gauges: how far behind the partitions this worker owns are, for dashboards and alerts.

Lag is what no worker has read yet, pending what was read and not yet acknowledged. A worker
reports only the partitions it owns and drops the others' series, so each partition is
reported by one worker.
"""

from __future__ import annotations

from collections.abc import Collection

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubbub.metrics import Metrics
from hubbub.settings import Settings
from hubbub.wire.keys import KeySchema


class Gauges:
    def __init__(self, settings: Settings, *, redis: Redis, metrics: Metrics) -> None:
        self.redis = redis
        self.metrics = metrics
        self.group = settings.worker_group
        self.partitions = settings.publish_partitions
        self.schema = KeySchema(settings.key_prefix)

    async def measure(self, owned: Collection[int]) -> None:
        """Lag (not yet read) and pending (read, not acknowledged) of the partitions we own."""
        lag, pending = self.metrics.stream_lag, self.metrics.stream_pending
        for n in range(self.partitions):
            if n not in owned:
                for gauge in (lag, pending):
                    try:
                        gauge.remove(str(n))
                    except KeyError:
                        pass
                continue
            stream = self.schema.publish_partition(n)
            try:
                groups = await self.redis.xinfo_groups(stream)
            except ResponseError as exc:
                if "no such key" not in str(exc):
                    raise
                # No stream (yet): nothing published since Redis lost it; recovery makes it.
                lag.labels(str(n)).set(0)
                pending.labels(str(n)).set(0)
                continue
            for group in groups:
                name = group["name"]
                if (name.decode() if isinstance(name, bytes) else name) == self.group:
                    lag.labels(str(n)).set(group.get("lag") or 0)
                    pending.labels(str(n)).set(group["pending"])
                    break
            else:
                # A stream without our group (Redis came back empty, then a publish made the
                # stream): nothing of it was read yet, so all of it is lag.
                lag.labels(str(n)).set(await self.redis.xlen(stream))
                pending.labels(str(n)).set(0)
