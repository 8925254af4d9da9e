"""Gauges: how far behind the partitions this worker owns are, for dashboards and alerts.

Lag is what no worker has read yet, pending what was read and not yet acknowledged
(:func:`hubbub.redis.directory.partition_backlog`, which the admin console shows too). A worker
reports only the partitions it owns and drops the others' series, so each partition is
reported by one worker.
"""

from __future__ import annotations

from collections.abc import Collection

from redis.asyncio import Redis

from hubbub.metrics import Metrics
from hubbub.redis.directory import partition_backlog
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
            behind, waiting = await partition_backlog(self.redis, stream, self.group)
            lag.labels(str(n)).set(behind)
            pending.labels(str(n)).set(waiting)
