"""The consumer loop every upstream service runs: leases, reads, per-connection order, answers.

A service is a consumer group on the upstream partitions (``HUBBUB_UPSTREAM_PARTITIONS``); its
processes share the partitions through leases (:mod:`hubbub.redis.leases`), exactly like the
fan-out workers share the publish partitions, so each partition is read by one consumer at a
time. Inside a consumer, entries of different connections are handled concurrently, entries of
one connection one after the other, in stream order: a connection's invocations reach the
handler in the order the client sent them (ASP.NET Core's default, one invocation of a client
at a time). A handler still running after ``HUBBUB_INVOCATION_TIMEOUT`` is cancelled: its
caller has had its timeout error, and the connection's next entries must not wait forever.

At-least-once: an entry is acknowledged after it was handled (and its answer appended). A
consumer that dies leaves its entries pending; whoever takes its partitions over handles
them first (``XAUTOCLAIM``), before anything new. An entry may thus be handled twice; the
gateway delivers one Completion per blocking invocation whatever the number of answers.

The answer to a blocking invocation is a Completion appended to the publish stream for the
calling connection (:class:`~hubbub.wire.envelopes.MessageEntry` with ``call``): a fan-out
worker takes it to the gateway like any send, in order with the sends the handler made to
that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.trace import SpanKind, Tracer
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from hubbub.metrics import Metrics
from hubbub.protocol.signalr import encode_completion
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.leases import LeaseFamily, Leases
from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import streams_reply
from hubbub.redis.stream import PublishStream
from hubbub.settings import Settings
from hubbub.telemetry import context_from, span
from hubbub.wire.envelopes import Event, Fields, Kind, MessageEntry, UpstreamEntry
from hubbub.wire.keys import KeySchema

log = logging.getLogger("hubbub.upstream")

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What a handler answers a blocking invocation: a result, or an error for the caller."""

    result: Any = None
    error: str | None = None


# Handles one entry; returns the answer to a blocking invocation (None: this service does not
# answer it, another may).
Handler = Callable[[UpstreamEntry], Awaitable[Answer | None]]


@dataclass(slots=True)
class _Item:
    stream: str
    entry_id: bytes
    entry: UpstreamEntry


class UpstreamConsumer:
    """One consumer of the consumer group ``group``: run it with :meth:`run`, stop it with
    :meth:`stop`.

    Fair to connections: ``concurrency`` bounds the *connections* with entries in hand (each
    has one handler running, the rest of its entries queued behind it), so one client whose
    handler is slow holds one slot, not all of them. A connection's queue holds at most
    ``HUBBUB_INVOCATION_BURST`` invocations (what a client may send at once); beyond it an
    invocation is shed (a blocking one answered with an error at once). All queues together
    hold at most ``16 * concurrency`` entries; reading waits below both bounds. A blocking
    invocation whose caller has already had its timeout error is not handled at all."""

    def __init__(
        self,
        settings: Settings,
        *,
        group: str,
        name: str,
        handler: Handler,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        concurrency: int = 256,
    ) -> None:
        endpoint = RedisEndpoint.from_settings(settings, f"hubbub-upstream-{group}")
        self.redis: Redis = endpoint.redis()
        # Reads block; answers and acknowledgements must not wait behind them.
        self.reads = Pipe(endpoint)
        self.writes = Pipe(endpoint)
        self.group = group
        self.name = name
        self.handler = handler
        self.metrics = metrics or Metrics()
        self.tracer = tracer
        self.concurrency = concurrency
        # A connection's entries are handled one by one: a handler gets as long as a client
        # waits for an answer (HUBBUB_INVOCATION_TIMEOUT), then it is cancelled.
        self.handler_timeout = settings.invocation_timeout
        self.batch = min(settings.read_batch, concurrency)
        self.lease_interval = settings.lease_interval
        self.block_ms = max(1, min(settings.read_block_ms, int(settings.lease_interval * 1000)))
        self.leases = Leases(
            settings, redis=self.redis, name=name, family=LeaseFamily.upstream(settings, group)
        )
        schema = KeySchema(settings.key_prefix)
        self.services = schema.upstream_services
        self.lease_s = settings.lease_ms / 1000
        self.streams = [schema.upstream_partition(n) for n in range(settings.upstream_partitions)]
        self.answers = PublishStream.from_settings(self.writes, settings)
        # Entries in hand, per connection, in stream order; a task drains each queue.
        self.queues: dict[str, deque[_Item]] = {}
        self.in_hand = 0  # entries read and not yet done with, all connections
        # Their ids: recovery after a Redis error claims our own pending entries again, and
        # those already in hand must not be handled twice.
        self.held: set[tuple[str, bytes]] = set()
        self.max_in_hand = 16 * concurrency
        self.per_connection = settings.invocation_burst
        self.room = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.recovering: set[int] = set()
        self.next_refresh = 0.0
        self.trim_interval = settings.trim_interval
        self.next_trim = 0.0

    def stop(self) -> None:
        self.stopping = True
        self.room.set()

    async def run(self) -> None:
        """Consume until stopped, backing off while Redis fails; then finish what is in hand
        and give the partitions back."""
        backoff = BACKOFF_FIRST
        try:
            while not self.stopping:
                try:
                    await self._turn()
                    backoff = BACKOFF_FIRST
                except RedisError as exc:
                    self.metrics.redis_errors.labels("upstream").inc()
                    log.warning("redis error, retrying in %.2fs: %r", backoff, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    self.recovering |= self.leases.owned
        finally:
            if self.tasks:  # what is in hand gets a moment to finish; the rest is redelivered
                _, unfinished = await asyncio.wait(set(self.tasks), timeout=10)
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
            with contextlib.suppress(RedisError):
                await self.leases.release_all()
            await self.redis.aclose()
            await self.reads.aclose()
            await self.writes.aclose()

    async def _turn(self) -> None:
        now = time.monotonic()
        if now >= self.next_refresh or (self.leases.owned and not self.leases.fresh()):
            self.next_refresh = now + self.lease_interval
            # Gateways send invocations upstream only while some service is live.
            await self.redis.zadd(self.services, {self.group: time.time() + self.lease_s})
            acquired, lost = await self.leases.refresh()
            self.recovering = (self.recovering | acquired) - lost
            if acquired or lost:
                log.info("upstream %s: partitions %s", self.group, sorted(self.leases.owned))
        for n in sorted(self.recovering):
            await self._recover(n)
            self.recovering.discard(n)
        if now >= self.next_trim:
            self.next_trim = now + self.trim_interval
            for n in sorted(self.leases.owned):
                await self._trim(self.streams[n])
        owned = sorted(self.leases.owned)
        room = min(self.concurrency - len(self.queues), self.max_in_hand - self.in_hand)
        if not owned or room <= 0:
            self.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), self.lease_interval)
            return
        response = await self.reads.read_streams(
            ("XREADGROUP", "GROUP", self.group, self.name, "COUNT", min(self.batch, room)),
            {self.streams[n].encode(): b">" for n in owned},
            self.block_ms,
        )
        for stream, entries in streams_reply(response):
            self._take(stream.decode(), entries)

    async def _recover(self, partition: int) -> None:
        """Take the partition's pending entries (a previous consumer's) in order, first."""
        stream = self.streams[partition]
        try:
            await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        start: bytes | str = "0-0"
        while True:
            start, entries, _deleted = await self.redis.xautoclaim(
                stream, self.group, self.name, min_idle_time=0, start_id=start, count=self.batch
            )
            if entries:
                log.info("upstream %s: %d pending entries of %s", self.group, len(entries), stream)
                self._take(stream, entries)
            if start in (b"0-0", "0-0"):
                break

    async def _trim(self, stream: str) -> None:
        """Drop the entries every service is done with: those before the oldest entry any
        consumer group still has pending or has not read yet. (A group whose service is gone
        for good holds the stream at its length cap, ``HUBBUB_UPSTREAM_STREAM_MAXLEN``.)"""
        floor: tuple[int, int] | None = None
        for group in await self.redis.xinfo_groups(stream):
            summary = await self.redis.xpending(stream, group["name"]) if group["pending"] else None
            if summary and summary["min"] is not None:  # (all acknowledged meanwhile: None)
                needed = _stream_id(summary["min"])
            else:
                ms, seq = _stream_id(group["last-delivered-id"])
                needed = (ms, seq + 1)
            floor = needed if floor is None else min(floor, needed)
        if floor is not None:
            await self.redis.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False)

    def _take(self, stream: str, entries: list[tuple[bytes, Fields]]) -> None:
        for entry_id, fields in entries:
            if not fields:  # trimmed away while pending
                continue
            try:
                entry = UpstreamEntry.decode(fields)
            except (KeyError, ValueError, UnicodeDecodeError):
                log.error("dropping malformed upstream entry %r", entry_id)
                self._spawn(self._ack(stream, entry_id))
                continue
            if (stream, entry_id) in self.held:
                continue  # in hand already (reclaimed by our own recovery)
            self.held.add((stream, entry_id))
            item = _Item(stream, entry_id, entry)
            queue = self.queues.get(entry.connection)
            if queue is not None:
                if len(queue) >= self.per_connection and entry.event is Event.INVOCATION:
                    self._spawn(self._shed(item))
                    continue
                self.in_hand += 1
                queue.append(item)
                continue
            self.in_hand += 1
            self.queues[entry.connection] = queue = deque((item,))
            self._spawn(self._drain(entry.connection, queue))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self, connection: str, queue: deque[_Item]) -> None:
        try:
            while queue:
                item = queue[0]
                await self._handle(item)
                self.held.discard((item.stream, item.entry_id))
                queue.popleft()
                self.in_hand -= 1
                self.room.set()
        finally:
            del self.queues[connection]
            self.room.set()  # a connection's slot is free

    async def _shed(self, item: _Item) -> None:
        """An invocation beyond its connection's queue: answered at once, not handled."""
        entry = item.entry
        log.warning(
            "upstream %s: connection %s has %d invocations waiting; one shed",
            self.group,
            entry.connection,
            self.per_connection,
        )
        self.metrics.upstream_handled.labels("invocation", "shed").observe(0)
        if entry.call:
            busy = Answer(error="The service is busy with this connection's earlier invocations.")
            await self._retrying(lambda: self._answer(entry, busy))
        await self._retrying(lambda: self._ack(item.stream, item.entry_id))
        self.held.discard((item.stream, item.entry_id))

    def _expired(self, item: _Item) -> bool:
        """A blocking call whose caller has had its timeout error (by the entry's age)."""
        if not item.entry.call:
            return False
        appended_ms = _stream_id(item.entry_id)[0]
        return time.time() * 1000 - appended_ms > self.handler_timeout * 1000

    async def _handle(self, item: _Item) -> None:
        entry = item.entry
        label = entry.event.name.lower()
        if self._expired(item):
            self.metrics.upstream_handled.labels(label, "expired").observe(0)
            await self._retrying(lambda: self._ack(item.stream, item.entry_id))
            return
        started = time.perf_counter()
        outcome = "ok"
        with span(
            self.tracer,
            f"handle {entry.target or entry.event.name.lower()}",
            kind=SpanKind.CONSUMER,
            context=context_from(entry.traceparent),
            attributes={
                "hubbub.hub": entry.hub,
                "hubbub.connection_id": entry.connection,
                "messaging.consumer.group.name": self.group,
            },
        ):
            try:
                answer = await asyncio.wait_for(self.handler(entry), self.handler_timeout)
            except TimeoutError:
                # The caller got its timeout error already; the connection's next entries
                # must not wait behind this one any longer.
                log.warning(
                    "upstream handler of %s %r cancelled after %g s",
                    entry.event.name,
                    entry.target,
                    self.handler_timeout,
                )
                answer, outcome = None, "timeout"
            except Exception:
                log.exception("upstream handler failed on %s %r", entry.event.name, entry.target)
                answer = Answer(error=f"An error occurred invoking '{entry.target}'.")
                outcome = "error"
            else:
                if answer is not None and answer.error is not None:
                    outcome = "error"
            if entry.call and answer is not None:
                await self._retrying(lambda: self._answer(entry, answer))
        await self._retrying(lambda: self._ack(item.stream, item.entry_id))
        self.metrics.upstream_handled.labels(label, outcome).observe(time.perf_counter() - started)

    async def _answer(self, entry: UpstreamEntry, answer: Answer) -> None:
        try:
            frame = encode_completion(entry.call, answer.result, answer.error)
        except TypeError:
            frame = encode_completion(
                entry.call, error=f"The result of '{entry.target}' is not JSON-serialisable."
            )
        await self.answers.append(
            MessageEntry(Kind.CONNECTION, entry.hub, entry.connection, frame, call=entry.call)
        )

    async def _ack(self, stream: str, entry_id: bytes) -> None:
        await self.writes.execute("XACK", stream, self.group, entry_id)

    async def _retrying(self, work: Callable[[], Awaitable[None]]) -> None:
        """Redis errors are retried with backoff until the consumer stops (an entry left
        unacknowledged is handled again by whoever takes the partition)."""
        backoff = BACKOFF_FIRST
        while True:
            try:
                return await work()
            except RedisError as exc:
                if self.stopping:
                    raise
                log.warning("redis error answering, retrying in %.2fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def arguments_of(entry: UpstreamEntry) -> list[Any]:
    """The invocation's arguments (a JSON array, as the gateway checked it)."""
    value = orjson.loads(entry.arguments)
    return value if isinstance(value, list) else []
