"""What one gateway process holds, created in the app's lifespan (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from hubbub.metrics import Metrics
from hubbub.redis.membership import Membership
from hubbub.redis.stream import PublishStream
from hubbub.settings import Settings
from hubbub.telemetry import Telemetry
from hubbub.tokens import ServiceTokenVerifier
from hubbub.wire.keys import KeySchema

from .deliver import LocalIndex
from .errors import ApiError


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
    telemetry: Telemetry | None = None
    draining: bool = False
    redis_ok: bool = True

    def refuse_if_draining(self) -> None:
        """A draining gateway takes no new work (sends, negotiations, sockets): the caller
        gets ``503 Error.Draining`` and retries on another gateway."""
        if self.draining:
            raise ApiError(503, "Error.Draining", "this gateway is shutting down; retry elsewhere")
