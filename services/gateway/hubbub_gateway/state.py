"""What one gateway process holds, created in the app's lifespan (no module globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from hubbub.identity import JwksVerifier
from hubbub.metrics import Metrics
from hubbub.protocol import names
from hubbub.redis.directory import Directory
from hubbub.redis.membership import Membership
from hubbub.redis.stream import PublishStream
from hubbub.settings import Settings
from hubbub.telemetry import Telemetry
from hubbub.tokens import ClientTokenVerifier, ServiceTokenVerifier
from hubbub.wire.keys import KeySchema

from .deliver import LocalIndex
from .errors import ApiError, RefusalRing
from .health import Health

if TYPE_CHECKING:
    from .invoke import Invoker


@dataclass
class GatewayState:
    settings: Settings
    redis: Redis
    schema: KeySchema
    membership: Membership
    publish: PublishStream
    index: LocalIndex
    metrics: Metrics
    tokens: ServiceTokenVerifier
    client_tokens: ClientTokenVerifier
    health: Health
    invoker: Invoker
    directory: Directory  # the read-only listings (REST extensions, the admin console)
    telemetry: Telemetry | None = None
    identity: JwksVerifier | None = None  # HUBBUB_JWKS_URL set: identity-provider tokens
    draining: bool = False
    # Set when an unregister failed: the reconciler retries it without waiting its interval.
    reconcile_soon: asyncio.Event = field(default_factory=asyncio.Event)
    # The refusals this gateway logged lately, for the admin console (attached to the
    # refusal logger for the app's lifetime).
    refusals: RefusalRing = field(default_factory=RefusalRing)

    def hub(self, raw: str, application: str | None = None) -> str:
        """The canonical name of a hub this gateway serves: a valid name
        (:func:`hubbub.protocol.names.hub_name`, else ``InvalidName``) and, when
        ``HUBBUB_HUBS`` pins the hubs, one of them (else ``404 Error.Hub.NotFound``)."""
        name = names.hub_name(raw, application)
        pinned = self.settings.hubs
        if pinned and name not in pinned:
            raise ApiError(404, "Error.Hub.NotFound", f"hub {name!r} is not served here")
        return name

    def refuse_if_draining(self) -> None:
        """A draining gateway takes no new work (sends, negotiations, sockets): the caller
        gets ``503 Error.Draining`` and retries on another gateway."""
        if self.draining:
            raise ApiError(503, "Error.Draining", "this gateway is shutting down; retry elsewhere")

    def refuse_if_full(self) -> None:
        """At ``HUBBUB_MAX_CONNECTIONS`` WebSocket connections (open, or between upgrade and
        registration), new negotiations and upgrades get ``503 Error.Gateway.Full`` and the
        client retries elsewhere; health, metrics and REST are not affected."""
        index = self.index
        limit = self.settings.max_connections
        if len(index.connections) + len(index.reserved) >= limit:
            raise ApiError(  # logged as a refusal (rate-limited) where it is answered
                503, "Error.Gateway.Full", f"this gateway serves {limit} connections; retry later"
            )
