"""Route: a fan-out worker turns publish-stream entries into gateway deliveries.

Per batch of entries it makes two pipelined round trips on the worker's
:class:`~hubbub.redis.pipe.Pipe`: one to resolve every entry's target to the gateways that hold its
recipients (group -> gateways, user -> gateways, connection -> gateway, all kept as small
hashes in Redis), one to append each delivery to its gateway's inbox and ``XACK`` the batch.
The cost of a message is O(gateways it reaches), whatever the size of the group; a broadcast
is one append to the feed every gateway reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from opentelemetry.trace import Span, SpanKind, Tracer, set_span_in_context
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hubbub.metrics import Metrics
from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import Command
from hubbub.redis.stream import message_id
from hubbub.telemetry import (
    CONSUMER_GROUP,
    DESTINATION,
    MESSAGE_ID,
    OPERATION,
    SYSTEM,
    context_from,
    traceparent_of,
)
from hubbub.wire.envelopes import Fields, Kind, MessageEntry
from hubbub.wire.keys import KeySchema

log = logging.getLogger("hubbub.fanout.route")

Entry = tuple[bytes, Fields]


class Router:
    def __init__(
        self,
        redis: Redis,
        pipe: Pipe,
        schema: KeySchema,
        group: str,
        inbox_maxlen: int,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.tracer = tracer
        self.redis = redis
        self.pipe = pipe
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
        parsed: list[tuple[bytes, MessageEntry]] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending
                continue
            try:
                parsed.append((entry_id, MessageEntry.decode(fields)))
            except (KeyError, ValueError, UnicodeDecodeError):
                self.metrics.drops.labels("malformed").inc()
                log.error("dropping malformed publish entry %r", entry_id)

        pipe = self.pipe
        lookups: list[Command] = []
        for _, m in parsed:
            if m.kind is Kind.ALL:
                continue
            hk = self.schema.hub(m.hub)
            if m.kind is Kind.GROUP:
                lookups.append(("HKEYS", hk.group_gateways(m.target)))
            elif m.kind is Kind.USER:
                lookups.append(("HKEYS", hk.user_gateways(m.target)))
            else:
                lookups.append(("HGET", hk.connection(m.target), "gw"))
        answers = iter(await pipe.execute_many(lookups))

        metrics = self.metrics
        stream = self.schema.publish_partition(partition)
        spans: list[Span] = []
        commands: list[Command] = []
        inbox_cap = ("MAXLEN", "~", self.inbox_maxlen, "*")
        for entry_id, m in parsed:
            mid = message_id(partition, entry_id).encode()
            process = None
            if self.tracer is not None and m.traceparent:
                process = self._process_span(stream, entry_id, m, partition)
                spans.append(process)
            if m.kind is Kind.ALL:
                destinations = [self.schema.broadcast_feed]
                create = ()
            else:
                answer = next(answers)
                gateways = [answer] if isinstance(answer, bytes) else list(answer or [])
                destinations = [self.schema.inbox(gw.decode()) for gw in gateways]
                create = ("NOMKSTREAM",)  # a reaped gateway's inbox stays deleted
                if not gateways:
                    metrics.drops.labels("no_recipient").inc()
            if process is None:
                fields = m.fields(mid)
                commands += [("XADD", d, *create, *inbox_cap, *fields) for d in destinations]
            else:
                for d in destinations:
                    tp = self._producer_span(process, d, spans)
                    fields = replace(m, traceparent=tp).fields(mid)
                    commands.append(("XADD", d, *create, *inbox_cap, *fields))
            metrics.routed.labels(m.kind.label).inc(len(destinations))
        commands.append(("XACK", stream, self.group, *(entry_id for entry_id, _ in entries)))
        await pipe.execute_many(commands)
        for span in reversed(spans):
            span.end()
        metrics.stage.labels("route").observe(time.perf_counter() - started)

    def _process_span(self, stream: str, entry_id: bytes, m: MessageEntry, partition: int) -> Span:
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
                "hubbub.kind": m.kind.label,
            },
        )

    def _producer_span(self, process: Span, destination: str, spans: list[Span]) -> str:
        assert self.tracer is not None
        span = self.tracer.start_span(
            f"send {destination}",
            context=set_span_in_context(process),
            kind=SpanKind.PRODUCER,
            attributes={SYSTEM: "redis", OPERATION: "send", DESTINATION: destination},
        )
        spans.append(span)
        return traceparent_of(span) or ""
