"""Route: a fan-out worker turns publish-stream entries into gateway deliveries.

Per batch of entries it makes at most two pipelined round trips on the worker's
:class:`~hubbub.redis.pipe.Pipe`: one to resolve the targets it does not know yet to the
gateways that hold their recipients (group -> gateways, user -> gateways, connection ->
gateway, all kept as small hashes in Redis; each target once per batch; with
``HUBBUB_ROUTE_CACHE_SIZE`` set, groups and users it has looked up are remembered, see
:mod:`.targets`), one to append each delivery to its gateway's inbox and ``XACK`` the batch.
In Redis Cluster the inboxes and the partition live on different masters, so the ``XACK`` waits
for the appends' replies (and, with ``HUBBUB_REDIS_WAIT_REPLICAS``, for their replicas): an
entry is never acknowledged on one master while its deliveries are lost on another.
The cost of a message is O(gateways it reaches), whatever the size of the group; a broadcast
is one append to the feed every gateway reads.

A traced entry (it carries a ``traceparent`` and this worker has a tracer) gets a consumer span,
and one producer span per delivery whose context the delivery carries on; they end after the
round trip, so they time it. An untraced entry builds none of that: its fields are shared by
all its deliveries.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace

from opentelemetry.trace import Span, SpanKind, Tracer, set_span_in_context

from hubbub.metrics import Metrics
from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import Command, Prefix
from hubbub.redis.stream import GroupWait, message_id
from hubbub.settings import Settings
from hubbub.telemetry import (
    CONSUMER_GROUP,
    DESTINATION,
    MESSAGE_ID,
    OPERATION,
    SYSTEM,
    context_from,
    span,
    traceparent_of,
)
from hubbub.wire.envelopes import GROWN, KIND, Fields, GrownEntry, Kind, MessageEntry
from hubbub.wire.keys import CONNECTION_GATEWAY, KeySchema

from .targets import Gateways, Target, Targets

log = logging.getLogger("hubbub.fanout.route")

Entry = tuple[bytes, Fields]

# Gateways come and go; the packed XADD of each one's inbox is kept until this many are known.
_INBOXES_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Destination:
    """A stream deliveries are appended to, with the head of its ``XADD`` packed once."""

    key: str
    xadd: Prefix


class Router:
    """Routes batches of a partition's entries; reads nothing but the gateway lookups."""

    def __init__(
        self,
        settings: Settings,
        *,
        pipe: Pipe,
        metrics: Metrics,
        tracer: Tracer | None = None,
        epochs: dict[int, int] | None = None,
    ) -> None:
        self.pipe = pipe
        # The lease epoch of each owned partition (:class:`.leases.Leases` keeps it), stamped
        # on every delivery so gateways can refuse a stale owner's.
        self.epochs = epochs if epochs is not None else {}
        self.metrics = metrics
        self.tracer = tracer
        self.group = settings.worker_group
        self.schema = schema = KeySchema(settings.key_prefix)
        self.streams = [schema.publish_partition(n) for n in range(settings.publish_partitions)]
        self._xack = [Prefix("XACK", stream, self.group) for stream in self.streams]
        self._cap = ("MAXLEN", "~", settings.inbox_maxlen, "*")
        feed = schema.broadcast_feed
        self._to_feed = [Destination(feed, Prefix("XADD", feed, *self._cap))]
        self._inboxes: dict[bytes, Destination] = {}
        self.targets = Targets(settings.route_cache_size)
        # Cluster mode: acknowledge only after the deliveries are in (and replicated).
        self.sharded = pipe.sharded
        replicas = settings.redis_wait_replicas if pipe.sharded else 0
        self._replicas = (
            GroupWait(pipe, replicas, settings.redis_wait_timeout) if replicas else None
        )

    async def route(self, partition: int, entries: list[Entry]) -> None:
        """Deliver a batch, then acknowledge it. A crash in between means a redelivery,
        which gateways drop by message id."""
        if not entries:
            return
        started = time.perf_counter()
        epoch = self.epochs.get(partition, 0)
        known = self.targets.of(partition, epoch)
        messages = self._parse(entries, known)
        gateways = await self._resolve(messages, known)
        stream = self.streams[partition]
        routed = self.metrics.routed
        commands: list[tuple[str, bytes]] = []
        with ExitStack() as spans:  # a traced batch's spans end once its deliveries are in
            for entry_id, m in messages:
                mid = message_id(partition, entry_id).encode()
                fields = m.fields(mid, epoch)
                process = self._process_span(spans, stream, mid, m)
                if m.kind is Kind.ALL:
                    destinations = self._to_feed
                else:
                    destinations = self._inboxes_of(gateways[_target(m)])
                for d in destinations:
                    send = self._send_span(spans, process, d.key)
                    via = fields if send is None else _via(send, m, mid, epoch)
                    commands.append((d.key, d.xadd.pack(via)))
                routed.labels(m.kind.label).inc(len(destinations))
            xack = (stream, self._xack[partition].pack([entry_id for entry_id, _ in entries]))
            if self.sharded:
                await self._deliver(commands)
                await self.pipe.execute_keyed([xack])
            else:  # one server: the XACK cannot apply (or replicate) before the appends
                commands.append(xack)
                await self.pipe.execute_keyed(commands)
        self.metrics.stage.labels("route").observe(time.perf_counter() - started)

    async def _deliver(self, commands: list[tuple[str, bytes]]) -> None:
        """The appends, and (when asked) their replicas' confirmation (a failure raises, and
        the batch is routed again)."""
        if self._replicas is None:
            await self.pipe.execute_keyed(commands)
        else:
            await self._replicas.submit(commands)

    def _parse(
        self, entries: list[Entry], known: dict[Target, Gateways]
    ) -> list[tuple[bytes, MessageEntry]]:
        """The batch's messages; its markers make ``known`` forget their targets first (so
        the lookups, made after the batch was read, see every change they mark)."""
        parsed: list[tuple[bytes, MessageEntry]] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending
                continue
            try:
                if fields.get(KIND) == GROWN:
                    grown = GrownEntry.decode(fields)
                    self.targets.forget(known, (grown.hub, grown.kind, grown.target))
                else:
                    parsed.append((entry_id, MessageEntry.decode(fields)))
            except (KeyError, ValueError, UnicodeDecodeError):
                self.metrics.drops.labels("malformed").inc()
                log.error("dropping malformed publish entry %r", entry_id)
        return parsed

    async def _resolve(
        self, messages: list[tuple[bytes, MessageEntry]], known: dict[Target, Gateways]
    ) -> dict[Target, Gateways]:
        """The gateways of every target in the batch: remembered, or looked up (each target
        once, all in one round trip); groups and users looked up are remembered."""
        found: dict[Target, Gateways] = {}
        missing: list[Target] = []
        for _, m in messages:
            if m.kind is Kind.ALL:
                continue
            target = _target(m)
            if target in found:
                continue
            gateways = known.get(target)
            if gateways is None:
                missing.append(target)
                found[target] = ()
            else:
                found[target] = gateways
        if missing:
            self.metrics.lookups.inc(len(missing))
            replies = await self.pipe.execute_many([self._lookup(t) for t in missing])
            for target, reply in zip(missing, replies, strict=True):
                gateways = (reply,) if isinstance(reply, bytes) else tuple(reply or ())
                found[target] = gateways
                if target[1] is not Kind.CONNECTION:
                    self.targets.remember(known, target, gateways)
        return found

    def _lookup(self, target: Target) -> Command:
        hub, kind, name = target
        hk = self.schema.hub(hub)
        if kind is Kind.GROUP:
            return ("HKEYS", hk.group_gateways(name))
        if kind is Kind.USER:
            return ("HKEYS", hk.user_gateways(name))
        return ("HGET", hk.connection(name), CONNECTION_GATEWAY)

    def _inboxes_of(self, gateways: Gateways) -> list[Destination]:
        if not gateways:
            self.metrics.drops.labels("no_recipient").inc()
        return [self._inbox(gateway) for gateway in gateways]

    def _inbox(self, gateway: bytes) -> Destination:
        inbox = self._inboxes.get(gateway)
        if inbox is None:
            if len(self._inboxes) >= _INBOXES_KEPT:
                self._inboxes.clear()
            key = self.schema.inbox(gateway.decode())
            # NOMKSTREAM: a reaped gateway's inbox stays deleted.
            inbox = Destination(key, Prefix("XADD", key, "NOMKSTREAM", *self._cap))
            self._inboxes[gateway] = inbox
        return inbox

    def _process_span(
        self, spans: ExitStack, stream: str, mid: bytes, m: MessageEntry
    ) -> Span | None:
        """The consumer span of a traced entry, child of the publisher's; ``None`` (and nothing
        built) when the entry or the worker is untraced."""
        if self.tracer is None or not m.traceparent:
            return None
        return spans.enter_context(
            span(
                self.tracer,
                f"process {stream}",
                kind=SpanKind.CONSUMER,
                context=context_from(m.traceparent),
                attributes={
                    SYSTEM: "redis",
                    OPERATION: "process",
                    DESTINATION: stream,
                    CONSUMER_GROUP: self.group,
                    MESSAGE_ID: mid.decode(),
                    "hubbub.kind": m.kind.label,
                },
            )
        )

    def _send_span(self, spans: ExitStack, process: Span | None, destination: str) -> Span | None:
        """The producer span of one delivery of a traced entry; ``None`` when untraced."""
        if process is None:
            return None
        return spans.enter_context(
            span(
                self.tracer,
                f"send {destination}",
                kind=SpanKind.PRODUCER,
                context=set_span_in_context(process),
                attributes={SYSTEM: "redis", OPERATION: "send", DESTINATION: destination},
            )
        )


def _target(m: MessageEntry) -> Target:
    return (m.hub, m.kind, m.target)


def _via(send: Span, m: MessageEntry, mid: bytes, epoch: int) -> list[bytes]:
    """A traced delivery's fields: the gateway's span continues from the producer span."""
    return replace(m, traceparent=traceparent_of(send) or "").fields(mid, epoch)
