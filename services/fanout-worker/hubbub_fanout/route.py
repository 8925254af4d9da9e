"""Route: a fan-out worker turns publish-stream entries into gateway deliveries.

Per batch of entries it makes two pipelined round trips: one to resolve every entry's target
to the gateways that hold its recipients (group -> gateways, user -> gateways, connection ->
gateway, all kept as small hashes in Redis), one to append each delivery to its gateway's
inbox and ``XACK`` the batch. The cost of a message is O(gateways it reaches), whatever the size
of the group; a broadcast is one append to the feed every gateway reads.
"""

from __future__ import annotations

import logging
import time

from opentelemetry.trace import Span, SpanKind, Tracer, set_span_in_context
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubbub.envelopes import Fields, Kind, Publish
from hubbub.keys import KeySchema
from hubbub.metrics import Metrics
from hubbub.stream import message_id
from hubbub.telemetry import (
    CONSUMER_GROUP,
    DESTINATION,
    MESSAGE_ID,
    OPERATION,
    SYSTEM,
    context_from,
    traceparent_of,
)

log = logging.getLogger("hubbub.fanout.route")

Entry = tuple[bytes, Fields]


class Router:
    def __init__(
        self,
        redis: Redis,
        schema: KeySchema,
        group: str,
        inbox_maxlen: int,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.tracer = tracer
        self.redis = redis
        self.schema = schema
        self.group = group
        self.inbox_maxlen = inbox_maxlen

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
        started = time.perf_counter()
        parsed: list[tuple[bytes, Publish]] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending
                continue
            try:
                parsed.append((entry_id, Publish.from_fields(fields)))
            except (KeyError, ValueError, UnicodeDecodeError):
                self.metrics.drops.labels("malformed").inc()
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

        metrics = self.metrics
        answers = iter(resolved)
        stream = self.schema.publish_partition(partition)
        spans: list[Span] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, m in parsed:
                delivery = m.delivery(message_id(partition, entry_id).encode())
                process = None
                if self.tracer is not None and m.traceparent:
                    process = self._process_span(stream, entry_id, m, partition)
                    spans.append(process)
                if m.kind is Kind.ALL:
                    gateways: list[bytes] = []
                    destinations = [self.schema.broadcast_feed]
                else:
                    answer = next(answers)
                    gateways = [answer] if isinstance(answer, bytes) else list(answer or [])
                    destinations = [self.schema.inbox(gw.decode()) for gw in gateways]
                    if not gateways:
                        metrics.drops.labels("no_recipient").inc()
                for destination in destinations:
                    if process is not None:
                        delivery = dict(delivery)
                        delivery[b"tp"] = self._producer_span(process, destination, spans)
                    pipe.xadd(
                        destination,
                        delivery,
                        maxlen=self.inbox_maxlen,
                        approximate=True,
                        nomkstream=m.kind is not Kind.ALL,
                    )
                metrics.routed.labels(m.kind.name.lower()).inc(len(destinations))
            pipe.xack(stream, self.group, *(entry_id for entry_id, _ in entries))
            await pipe.execute()
        for span in reversed(spans):
            span.end()
        metrics.stage.labels("route").observe(time.perf_counter() - started)

    def _process_span(self, stream: str, entry_id: bytes, m: Publish, partition: int) -> Span:
        assert self.tracer is not None
        return self.tracer.start_span(
            f"process {stream}",
            context=context_from(m.traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                SYSTEM: "redis",
                OPERATION: "process",
                DESTINATION: stream,
                CONSUMER_GROUP: self.group,
                MESSAGE_ID: message_id(partition, entry_id),
                "hubbub.kind": m.kind.name.lower(),
            },
        )

    def _producer_span(self, process: Span, destination: str, spans: list[Span]) -> bytes:
        assert self.tracer is not None
        span = self.tracer.start_span(
            f"send {destination}",
            context=set_span_in_context(process),
            kind=SpanKind.PRODUCER,
            attributes={SYSTEM: "redis", OPERATION: "send", DESTINATION: destination},
        )
        spans.append(span)
        return (traceparent_of(span) or "").encode()
