"""Where and how a process reaches Redis: one object feeds both clients.

:class:`RedisEndpoint` holds the URL, TLS (CA, client certificate and key, verification), the
credentials the URL carries, the timeouts and the retry policy. :meth:`RedisEndpoint.redis`
builds the redis-py client (a bounded pool, health checks, retries on transient errors) and
:class:`~hubbub.redis.pipe.Pipe` (the hot path's pipelined connection) takes the same object,
so the two cannot disagree about where Redis is or how to trust it.

Failure model, said once: redis-py retries a command ``retries`` times on a connection error
or timeout (with the asyncio ``Retry``: the synchronous one, given to the asyncio client,
returns the coroutine unawaited and so never retries). That is what makes a pooled connection
that died while idle (Redis restarted) cost nothing: the command is sent again on a new one.
What goes through redis-py is safe to send twice: membership scripts re-applied find their
work done, control entries are idempotent at the gateway. The ``Pipe`` never retries (an
``XADD`` to a publish partition sent twice is two messages), it fails the calls in flight and
reconnects on the next call, and its callers own the retry loop.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from hubbub.settings import Settings


@dataclass(frozen=True, slots=True)
class Address:
    """What the URL names: a TCP host and port (with or without TLS) or a Unix socket."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # unix://
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """One Redis server as every Hubbub process connects to it.

    ``url``: ``redis://[[user]:password@]host:port/db``, ``rediss://`` for TLS, or
    ``unix:///path?db=N``. ``name`` shows in ``CLIENT LIST`` (operators and fault tests tell
    processes apart by it).
    """

    url: str = "redis://127.0.0.1:6379/0"
    name: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    connect_timeout: float = 2.0
    timeout: float = 5.0  # a reply later than this (beyond a blocking command's own) fails
    retries: int = 2  # redis-py only; see the module docstring
    max_connections: int = 64  # redis-py's pool; more callers wait for a free connection

    @classmethod
    def from_settings(cls, settings: Settings, name: str | None = None) -> RedisEndpoint:
        return cls(
            url=settings.redis_url,
            name=name,
            tls_ca_file=settings.redis_tls_ca_file,
            tls_cert_file=settings.redis_tls_cert_file,
            tls_key_file=settings.redis_tls_key_file,
            tls_verify=settings.redis_tls_verify,
            connect_timeout=settings.redis_connect_timeout,
            timeout=settings.redis_timeout,
        )

    def address(self) -> Address:
        parsed: dict[str, Any] = dict(parse_url(self.url))
        return Address(
            host=str(parsed.get("host", "localhost")),
            port=int(parsed.get("port", 6379)),
            path=parsed.get("path"),
            tls=parsed.get("connection_class") is SSLConnection,
            username=parsed.get("username"),
            password=parsed.get("password"),
            db=int(parsed.get("db") or 0),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for a ``rediss://`` URL (``None`` otherwise)."""
        if not self.address().tls:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def redis(self) -> Redis:
        """A redis-py client: bounded pool, health checks, retries with backoff."""
        tls: dict[str, Any] = {}
        if self.address().tls:
            tls = {
                "ssl_ca_certs": self.tls_ca_file,
                "ssl_certfile": self.tls_cert_file,
                "ssl_keyfile": self.tls_key_file,
                "ssl_cert_reqs": "required" if self.tls_verify else "none",
                "ssl_check_hostname": self.tls_verify,
            }
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.timeout,
            client_name=self.name,
            decode_responses=False,
            health_check_interval=10,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=None,  # blocking reads (XREAD BLOCK) set their own
            socket_keepalive=True,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=self.retries),
            **tls,
        )
        return Redis.from_pool(pool)
