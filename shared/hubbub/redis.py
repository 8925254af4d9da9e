"""The one way Hubbub processes open Redis: bytes in and out, retries on transient errors,
and a bounded pool that makes bursts wait for a connection instead of failing."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def connect(url: str, name: str | None = None, max_connections: int = 64) -> Redis:
    """``name`` shows in ``CLIENT LIST``: operators (and fault tests) can tell who is who."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        client_name=name,
        decode_responses=False,
        health_check_interval=10,
        socket_connect_timeout=2,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
    )
    return Redis.from_pool(pool)
