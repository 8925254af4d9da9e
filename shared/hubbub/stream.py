"""The publish stream: where an accepted REST request waits for a fan-out worker."""

from __future__ import annotations

from redis.asyncio import Redis

from .envelopes import Publish
from .keys import KeySchema


class PublishStream:
    """Appends accepted messages; the entry id is the message id returned to the caller."""

    def __init__(self, redis: Redis, schema: KeySchema, maxlen: int) -> None:
        self.redis = redis
        self.key = schema.publish_stream
        self.maxlen = maxlen

    async def append(self, message: Publish) -> str:
        entry_id = await self.redis.xadd(
            self.key, message.to_fields(), maxlen=self.maxlen, approximate=True
        )
        return _text(entry_id)

    async def append_many(self, messages: list[Publish]) -> list[str]:
        """One round trip for a batch; ids come back in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.xadd(self.key, message.to_fields(), maxlen=self.maxlen, approximate=True)
            ids: list[bytes] = await pipe.execute()
        return [_text(i) for i in ids]


async def last_entry_id(redis: Redis, key: str) -> bytes:
    """Id of the newest entry, or ``0-0``: where a reader that wants only new entries starts."""
    entries = await redis.xrevrange(key, count=1)
    if not entries:
        return b"0-0"
    entry_id = entries[0][0]
    return entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
