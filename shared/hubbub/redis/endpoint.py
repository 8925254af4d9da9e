"""Where and how a process reaches Redis: one object feeds both clients.

:class:`RedisEndpoint` holds the mode (one server, a Sentinel-managed primary, or a Redis
Cluster), the URL, TLS (CA, client certificate and key, verification), the
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

Modes. ``standalone``: the URL's server. ``sentinel``: the primary the Sentinels name, asked
again after every lost connection (both clients then follow a failover without a restart);
the URL gives only credentials, database and TLS. ``cluster``: the URL (and ``cluster_nodes``)
seed the discovery of a Redis Cluster; each command goes to the master of its key's slot,
``MOVED``/``ASK`` redirections are followed (a redirected command was not run, so sending it
again is safe) and the slot map is read again after a redirection or a lost node.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff

from hubbub.redis.slots import Node
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


Mode = Literal["standalone", "sentinel", "cluster"]


def parse_nodes(text: str) -> tuple[Node, ...]:
    """``"host:port,host:port"`` (``[v6]:port`` too) as ``((host, port), ...)``."""
    nodes: list[Node] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{item!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


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
    mode: Mode = "standalone"
    sentinels: tuple[Node, ...] = ()
    sentinel_master: str = "mymaster"
    sentinel_password: str | None = None
    cluster_nodes: tuple[Node, ...] = ()  # more seeds than the URL's node

    @classmethod
    def from_settings(cls, settings: Settings, name: str | None = None) -> RedisEndpoint:
        return cls(
            url=settings.redis_url,
            mode=settings.redis_mode,
            sentinels=parse_nodes(settings.redis_sentinels),
            sentinel_master=settings.redis_sentinel_master,
            sentinel_password=settings.redis_sentinel_password,
            cluster_nodes=parse_nodes(settings.redis_cluster_nodes),
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

    @property
    def sharded(self) -> bool:
        """Keys live on several servers: a command's keys must share a slot."""
        return self.mode == "cluster"

    def seeds(self) -> tuple[Node, ...]:
        """Where cluster discovery starts: the URL's node, then ``cluster_nodes``."""
        address = self.address()
        own = (address.host, address.port)
        return (own, *(node for node in self.cluster_nodes if node != own))

    def describe(self) -> str:
        """Where Redis is, for logs and errors, without credentials."""
        if self.mode == "sentinel":
            nodes = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {self.sentinel_master!r} via {nodes}"
        if self.mode == "cluster":
            return "cluster via " + ",".join(f"{h}:{p}" for h, p in self.seeds())
        return str(self.address())

    def redis(self) -> Redis:
        """A redis-py client: bounded pool, health checks, retries with backoff.

        In cluster mode a ``RedisCluster``: it is not a subclass of ``Redis``, but it has
        every command Hubbub runs through redis-py with the same signature (each of them
        touches one slot), which the cluster-mode suites check end to end."""
        if self.mode == "sentinel":
            return self._sentinel_client()
        if self.mode == "cluster":
            return cast(Redis, self._cluster_client())
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.timeout,
            client_name=self.name,
            decode_responses=False,
            health_check_interval=10,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=None,  # blocking reads (XREAD BLOCK) set their own
            retry=self._retry(),
            # TCP only: redis-py's Unix socket connection takes no keepalive option.
            **({} if self.address().path else {"socket_keepalive": True}),
            **self._tls_kwargs(),
        )
        return Redis.from_pool(pool)

    def _tls_kwargs(self) -> dict[str, Any]:
        """redis-py's TLS options for a ``rediss://`` URL (the scheme itself picks TLS)."""
        if not self.address().tls:
            return {}
        return {
            "ssl_ca_certs": self.tls_ca_file,
            "ssl_certfile": self.tls_cert_file,
            "ssl_keyfile": self.tls_key_file,
            "ssl_cert_reqs": "required" if self.tls_verify else "none",
            "ssl_check_hostname": self.tls_verify,
        }

    def _retry(self) -> Retry:
        return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=self.retries)

    def _sentinel_client(self) -> Redis:
        address = self.address()
        tls = self._tls_kwargs()
        if tls:
            tls["connection_class"] = SentinelManagedSSLConnection
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(self.sentinels),
            sentinel_kwargs={
                "socket_connect_timeout": self.connect_timeout,
                "socket_timeout": self.timeout,
                "password": self.sentinel_password,
            },
            username=address.username,
            password=address.password,
            db=address.db,
            client_name=self.name,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=10,
            retry=self._retry(),
            **tls,
        )
        client: Redis = sentinel.master_for(
            self.sentinel_master, redis_class=Redis, max_connections=self.max_connections
        )
        return client

    def _cluster_client(self) -> RedisCluster:
        address = self.address()
        return _WaitingCluster(
            self.max_connections,
            startup_nodes=[ClusterNode(host, port) for host, port in self.seeds()],
            username=address.username,
            password=address.password,
            client_name=self.name,
            max_connections=2 * self.max_connections,  # room for pipelines beside them
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.timeout,
            socket_keepalive=True,
            health_check_interval=10,
            retry=self._retry(),
            ssl=address.tls,
            **self._tls_kwargs(),
        )


class _WaitingCluster(RedisCluster):
    """A ``RedisCluster`` whose callers wait for a free connection, as the standalone pool's
    do (``BlockingConnectionPool``): redis-py's cluster pool raises ``MaxConnectionsError``
    instead, which a burst of disconnects (hundreds of unregister scripts at once) turned
    into failed calls. At most ``in_flight`` commands run at once; each node's pool holds
    more, so pipelines (which take connections directly) find room too."""

    def __init__(self, in_flight: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._in_flight = asyncio.Semaphore(in_flight)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._in_flight:
            return await super().execute_command(*args, **kwargs)
