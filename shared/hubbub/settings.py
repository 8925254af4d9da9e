"""All configuration in one class, read from ``HUBBUB_*`` environment variables."""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hubbub.urls import public_origin

# Defaults of limits that code outside a process's Settings also applies (build_message,
# Membership): one value, here.
DEFAULT_MAX_EXCLUDED = 1000
DEFAULT_MAX_GROUPS_PER_CONNECTION = 1000
DEFAULT_PUBLISH_PARTITIONS = 16
DEFAULT_PUBLISH_STREAM_MAXLEN = 1_000_000
# The access key a fresh checkout runs with: anyone who read the README can sign tokens with
# it, so a gateway started with it says so (hubbub dev says it in its banner instead).
DEFAULT_ACCESS_KEY = "hubbub-development-access-key-change-me"


def _new_gateway_id() -> str:
    return "gw-" + secrets.token_hex(6)


class Settings(BaseSettings):
    """Settings shared by every Hubbub process; each process reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="HUBBUB_", extra="ignore")

    # Redis (see hubbub.redis.endpoint): rediss:// for TLS, unix:///path for a socket.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None  # client certificate (mutual TLS)
    redis_tls_key_file: str | None = None
    redis_tls_verify: bool = True
    redis_connect_timeout: float = 2.0
    redis_timeout: float = 5.0
    # Which Redis (docs/operations.md): one server (the URL's), a Sentinel-managed primary
    # (followed through failovers) or a Redis Cluster (the URL names any node).
    redis_mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    # Sentinel mode: the Sentinels ("host:port,host:port") and the name of the primary they
    # watch. The URL then gives only the credentials, the database and TLS (rediss://).
    redis_sentinels: str = ""
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str | None = None  # when the Sentinels themselves ask for one
    # Cluster mode: more nodes to discover the cluster from ("host:port,..."), beside the URL's.
    redis_cluster_nodes: str = ""
    # After each accepted message is appended: WAIT until this many replicas have it, else
    # answer 503 (a failover then cannot lose an accepted message). 0: do not wait.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout: float = Field(default=1.0, gt=0)  # seconds
    key_prefix: str = "hubbub"

    # Gateway process.
    host: str = "127.0.0.1"
    port: int = 8080
    gateway_id: str = Field(default_factory=_new_gateway_id)
    access_key: str = DEFAULT_ACCESS_KEY
    # One WARNING line at start when access_key is DEFAULT_ACCESS_KEY (off under hubbub dev,
    # whose banner says it once for all its gateways).
    warn_default_access_key: bool = True
    access_key_secondary: str | None = None
    # Browser origins allowed to call the REST API and open WebSockets (JSON list): [] = none
    # (pages served from the gateway's own origin always work), ["*"] = any (hubbub dev).
    cors_origins: list[str] = []
    # The demo page at / and its token endpoints under /demo (hubbub_gateway.demo): for a
    # local deployment only (hubbub dev turns it on), since they mint tokens for any caller.
    # Off: / answers a small JSON index and /demo/* does not exist.
    demo_page: bool = False
    # The hubs this deployment serves (JSON list, matched case-insensitively); [] = any valid
    # name. Pinned, an unknown hub is a 404 on negotiate, connect and REST.
    hubs: list[str] = []
    # The base URLs this deployment is reached by (JSON list, e.g. ["https://hubbub.example.com"]):
    # a token's audience must name one of their origins (scheme, host and, if the audience
    # has one, port), whatever Host header the request came with. [] = any origin: the
    # signed path still binds (docs/security.md).
    public_urls: list[str] = []

    @field_validator("public_urls")
    @classmethod
    def _public_urls_are_base_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            public_origin(url)  # ValueError says which entry and why
        return value

    # SignalR client protocol.
    keepalive_interval: float = 15.0
    client_timeout: float = 30.0
    handshake_timeout: float = 15.0
    max_message_size: int = 32 * 1024
    send_buffer_max: int = 1024 * 1024
    drain_timeout: float = 10.0
    # Seconds a version 1 connection token (negotiate → upgrade) stays valid.
    connection_token_ttl: float = 300.0
    # Stateful reconnect (clients' withStatefulReconnect()): seconds a connection whose
    # transport dropped without a Close stays registered (id, user, groups) and keeps
    # numbering and storing its messages for a re-attach on any gateway; 0 turns it off
    # (negotiate does not offer it). What a client has not acknowledged is stored in Redis up
    # to reconnect_buffer_bytes per connection; past it, the connection cannot resume: it is
    # closed (Close with a reason, allowReconnect) or, detached, ended.
    reconnect_window: float = Field(default=30.0, ge=0)
    reconnect_buffer_bytes: int = Field(default=1024 * 1024, ge=1024)

    # Per-connection limits (what one client may cost everyone else).
    # Groups one connection may be in: joins beyond it are refused (Redis memory, and the
    # time of the one script that removes a connection from all its groups).
    max_groups_per_connection: int = Field(default=DEFAULT_MAX_GROUPS_PER_CONNECTION, ge=1)
    # Client invocations (Invocation, StreamInvocation) per second, a token bucket of
    # ``invocation_burst``; beyond it the connection is closed with a reason.
    max_invocations_per_second: float = Field(default=100.0, gt=0)
    invocation_burst: int = Field(default=1000, ge=1)
    # Connections one user may have at once (0: no limit); beyond it the handshake is refused.
    max_connections_per_user: int = Field(default=0, ge=0)

    # The HTTP edge, before authentication (hubbub_gateway/edge.py). A request head larger
    # than max_head_bytes is answered 431 and closed; a head (or a first byte) that has not
    # arrived within head_timeout seconds closes the connection; beyond max_pending_sockets
    # sockets without a complete first request, the oldest is closed. WebSocket connections
    # (open or handshaking) beyond max_connections are refused with 503 Error.Gateway.Full at
    # negotiate and upgrade. The last two are lowered at start-up to fit the open-file limit.
    max_head_bytes: int = Field(default=16 * 1024, ge=1024)
    head_timeout: float = Field(default=10.0, gt=0)
    max_pending_sockets: int = Field(default=1000, ge=1)
    max_connections: int = Field(default=10_000, ge=1)

    # REST API.
    max_body_size: int = 1024 * 1024
    token_default_minutes: int = 60
    # Connection ids one send may exclude (REST, batch items, Publisher).
    max_excluded: int = Field(default=DEFAULT_MAX_EXCLUDED, ge=0)
    # Seconds a send's Idempotency-Key is remembered: a retry within it appends nothing.
    idempotency_window: float = Field(default=300.0, gt=0)

    # Liveness of gateways: one silent for gateway_ttl is reaped (see gateway_lease).
    heartbeat_interval: float = Field(default=2.0, gt=0)
    gateway_ttl: float = Field(default=10.0, gt=0)
    # How often a gateway makes Redis's record of its connections match its live sockets
    # (ghosts of failed unregisters removed, connections Redis lost restored).
    reconcile_interval: float = Field(default=10.0, gt=0)

    # Streams.
    publish_stream_maxlen: int = DEFAULT_PUBLISH_STREAM_MAXLEN
    inbox_maxlen: int = 100_000
    # A gateway cut off from Redis for longer than this misses the broadcasts of that time.
    broadcast_retention_ms: int = 60_000
    read_batch: int = 512
    read_block_ms: int = 1000
    # How often a reader (a worker, a gateway's inbox) trims the streams it has consumed.
    trim_interval: float = 1.0

    # Publish stream partitions: fixed for the life of a deployment's data (changing it
    # reorders in-flight messages); more partitions than workers lets work spread.
    publish_partitions: int = DEFAULT_PUBLISH_PARTITIONS

    # The way back (client -> service, see hubbub.upstream). Upstream stream partitions, by
    # connection: fixed for the life of a deployment's data, like publish_partitions.
    upstream_partitions: int = Field(default=8, ge=1)
    upstream_stream_maxlen: int = Field(default=100_000, ge=1)  # per partition, approximate
    # Seconds a client's blocking invocation (and a REST client-result :invoke) waits for its
    # answer; then the caller gets an error (504 for :invoke).
    invocation_timeout: float = Field(default=30.0, gt=0)
    # Blocking invocations one connection may have waiting at once; more are refused.
    max_pending_invocations: int = Field(default=100, ge=1)
    # Connected / disconnected events to the upstream stream (one append each).
    upstream_connection_events: bool = True
    # JoinGroup / LeaveGroup are also appended upstream (after their built-in effect).
    upstream_group_invocations: bool = False
    # HTTP upstream (Azure-compatible webhooks), run by hubbub-fanout: one URL template for
    # every event ({hub}, {category}, {event}), or ordered rules (JSON list of objects with
    # urlTemplate and hubPattern / categoryPattern / eventPattern). Neither: no dispatcher.
    upstream_url: str | None = None
    upstream_rules: list[dict[str, str]] = []
    upstream_timeout: float = Field(default=20.0, gt=0)  # one webhook request
    upstream_group: str = "webhook"  # the dispatcher's consumer group

    # Fan-out worker.
    worker_group: str = "fanout"
    worker_name: str | None = None
    lease_ms: int = 5000
    lease_interval: float = 1.0
    reap_interval: float = 2.0
    # Targets (groups, users) whose gateways a worker remembers, so a send to a known target
    # needs no lookup; kept exact by GrownEntry markers in the publish stream (see
    # hubbub_fanout.targets). Off (0, every target looked up) by default: a send accepted just
    # before a resumable connection moves gateways can still be routed to the old one after
    # the new one read its inbox back (docs/guarantees.md §1). Set it on every process: the
    # gateways write the markers the workers need.
    route_cache_size: int = Field(default=0, ge=0)
    gauge_interval: float = 5.0  # how often the lag / pending gauges are measured
    metrics_port: int = 9102  # the worker's /metrics (gateways serve it on their own port)
    # The interface of the worker's /metrics, /livez, /readyz: every one by default (a
    # Kubernetes probe comes from outside the pod); hubbub dev uses 127.0.0.1.
    metrics_host: str = "0.0.0.0"

    # Identity-provider (OIDC) client tokens, RS256/ES256 verified against a JWKS (see
    # hubbub.identity and docs/security.md). Unset URL: only access-key tokens. With a URL, the
    # issuer and audience are required: without them any token of that IdP would be accepted.
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    user_claim: str = "sub"  # the claim holding the user id in an IdP token
    # An unknown kid refetches the JWKS at most this often (seconds), however many clients
    # present one; the keys are also refreshed every jwks_refresh_interval seconds.
    jwks_refresh_min_interval: float = Field(default=30.0, ge=0)
    jwks_refresh_interval: float = Field(default=300.0, gt=0)
    jwks_fetch_timeout: float = Field(default=5.0, gt=0)  # the whole fetch, body included

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # Refusals (4xx, refused upgrades and handshakes, limit closes) are logged one WARNING
    # line each, at most this many a second after a burst; the lines dropped are counted.
    refusal_log_per_second: float = Field(default=10.0, gt=0)
    refusal_log_burst: int = Field(default=100, ge=1)

    @field_validator("key_prefix")
    @classmethod
    def _prefix_has_no_hash_tag(cls, value: str) -> str:
        if not value or "{" in value or "}" in value:
            raise ValueError("key_prefix must be non-empty and must not contain '{' or '}'")
        return value

    @field_validator("hubs")
    @classmethod
    def _hubs_lowercase(cls, value: list[str]) -> list[str]:
        return [hub.lower() for hub in value]

    @field_validator("gateway_id")
    @classmethod
    def _gateway_id_is_simple(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError("gateway_id may only hold letters, digits, '-', '_' and '.'")
        return value

    @model_validator(mode="after")
    def _redis_mode_has_its_nodes(self) -> Settings:
        if self.redis_mode == "sentinel" and not self.redis_sentinels.strip():
            raise ValueError("HUBBUB_REDIS_MODE=sentinel needs HUBBUB_REDIS_SENTINELS")
        return self

    @model_validator(mode="after")
    def _heartbeat_fits_the_grace(self) -> Settings:
        if self.heartbeat_interval >= self.gateway_grace:
            raise ValueError(
                "HUBBUB_HEARTBEAT_INTERVAL must be below half of HUBBUB_GATEWAY_TTL "
                "(a live gateway must heartbeat within the reaper's grace)"
            )
        return self

    @model_validator(mode="after")
    def _jwks_needs_issuer_and_audience(self) -> Settings:
        if self.jwks_url and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("HUBBUB_JWKS_URL needs HUBBUB_JWT_ISSUER and HUBBUB_JWT_AUDIENCE")
        return self

    @property
    def gateway_lease(self) -> float:
        """How far ahead a heartbeat sets its gateway's deadline: half the TTL. The reaper
        waits out the other half on its own clock, so a deadline that a Redis failover sent
        back in time cannot get a live gateway reaped (``hubbub_fanout.reap``)."""
        return self.gateway_ttl / 2

    @property
    def gateway_grace(self) -> float:
        """How long a worker must itself see a gateway's deadline expired before reaping it."""
        return self.gateway_ttl - self.gateway_lease

    @property
    def access_keys(self) -> tuple[str, ...]:
        """Keys accepted for signatures; the first one signs."""
        if self.access_key_secondary:
            return (self.access_key, self.access_key_secondary)
        return (self.access_key,)
