"""Route: a fan-out worker turns publish-stream entries into gateway deliveries.

Per batch of entries it makes two pipelined round trips: one to resolve every entry's target
to the gateways that hold its recipients (group -> gateways, user -> gateways, connection ->
gateway, all kept as small hashes in Redis), one to append each delivery to its gateway's
inbox and ``XACK`` the batch. The cost of a message is O(gateways it reaches), whatever the size
of the group; a broadcast is one append to the feed every gateway reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubbub.envelopes import Fields, Kind, Publish
from hubbub.keys import KeySchema
from hubbub.stream import message_id

log = logging.getLogger("hubbub.fanout.route")

Entry = tuple[bytes, Fields]


@dataclass
class RouteStats:
    messages: int = 0
    deliveries: int = 0
    unroutable: int = 0
    malformed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Router:
    def __init__(
        self,
        redis: Redis,
        schema: KeySchema,
        group: str,
        inbox_maxlen: int,
    ) -> None:
        self.redis = redis
        self.schema = schema
        self.group = group
        self.inbox_maxlen = inbox_maxlen
        self.stats = RouteStats()

    async def ensure_group(self, stream: str) -> None:
        """Create the consumer group from the stream's start, so nothing accepted is skipped."""
        try:
            await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def route(self, partition: int, entries: list[Entry]) -> None:
        """Deliver a batch, then acknowledge it. A crash in between means a redelivery,
        which gateways drop by message id."""
        if not entries:
            return
        parsed: list[tuple[bytes, Publish]] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending
                continue
            try:
                parsed.append((entry_id, Publish.from_fields(fields)))
            except (KeyError, ValueError, UnicodeDecodeError):
                self.stats.malformed += 1
                log.error("dropping malformed publish entry %r", entry_id)

        lookups = [m for _, m in parsed if m.kind is not Kind.ALL]
        resolved: list[object] = []
        if lookups:
            async with self.redis.pipeline(transaction=False) as pipe:
                for m in lookups:
                    hk = self.schema.hub(m.hub)
                    if m.kind is Kind.GROUP:
                        pipe.hkeys(hk.group_gateways(m.target))
                    elif m.kind is Kind.USER:
                        pipe.hkeys(hk.user_gateways(m.target))
                    else:
                        pipe.hget(hk.connection(m.target), "gw")
                resolved = await pipe.execute()

        stats = self.stats
        answers = iter(resolved)
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, m in parsed:
                stats.messages += 1
                delivery = m.delivery(message_id(partition, entry_id).encode())
                if m.kind is Kind.ALL:
                    pipe.xadd(
                        self.schema.broadcast_feed,
                        delivery,
                        maxlen=self.inbox_maxlen,
                        approximate=True,
                    )
                    stats.deliveries += 1
                    continue
                answer = next(answers)
                gateways = [answer] if isinstance(answer, bytes) else answer or []
                if not gateways:
                    stats.unroutable += 1
                for gw in gateways:  # type: ignore[union-attr]
                    pipe.xadd(
                        self.schema.inbox(gw.decode()),
                        delivery,
                        maxlen=self.inbox_maxlen,
                        approximate=True,
                        nomkstream=True,
                    )
                    stats.deliveries += 1
            stream = self.schema.publish_partition(partition)
            pipe.xack(stream, self.group, *(entry_id for entry_id, _ in entries))
            await pipe.execute()
