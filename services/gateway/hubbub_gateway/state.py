"""What one gateway process holds, created in the app's lifespan (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from hubbub.keys import KeySchema
from hubbub.membership import Membership
from hubbub.settings import Settings
from hubbub.stream import PublishStream

from .deliver import LocalIndex


@dataclass
class GatewayState:
    settings: Settings
    redis: Redis
    schema: KeySchema
    membership: Membership
    publish: PublishStream
    index: LocalIndex = field(default_factory=LocalIndex)
    draining: bool = False
    redis_ok: bool = True
