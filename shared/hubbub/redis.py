"""The one way Hubbub processes open Redis: bytes in and out, retries on transient errors."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def connect(url: str, name: str | None = None) -> Redis:
    """``name`` shows in ``CLIENT LIST``: operators (and fault tests) can tell who is who."""
    return Redis.from_url(
        url,
        client_name=name,
        decode_responses=False,
        health_check_interval=10,
        socket_connect_timeout=2,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
    )
