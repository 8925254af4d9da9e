"""What travels through Redis: publish-stream entries and gateway deliveries.

Both are flat Redis stream field maps with short byte keys. The SignalR frame is encoded once,
at ingest, and travels as opaque bytes to every gateway, which writes the same bytes to every
socket. The publish entry's stream id is the message id used for de-duplication.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from redis.typing import EncodableT, FieldT

Fields = dict[bytes, bytes]  # as read back from Redis
OutFields = dict[FieldT, EncodableT]  # as redis-py's xadd takes them (dicts are invariant)


class Kind(bytes, enum.Enum):
    """Recipients of a message, or what a control entry asks a gateway to do."""

    ALL = b"a"
    GROUP = b"g"
    USER = b"u"
    CONNECTION = b"c"
    # Control entries, written straight to a gateway inbox by membership changes.
    JOIN = b"J"
    LEAVE = b"L"
    CLOSE = b"X"
    # Written by a gateway to create its inbox; deliveries use NOMKSTREAM so that nothing
    # recreates the inbox of a gateway that was reaped.
    HELLO = b"H"


MESSAGE_KINDS = frozenset({Kind.ALL, Kind.GROUP, Kind.USER, Kind.CONNECTION})


def _join_ids(ids: tuple[str, ...]) -> bytes:
    # Connection ids are [A-Za-z0-9_-], so a comma never occurs inside one.
    return ",".join(ids).encode()


def _as_map(args: list[bytes]) -> OutFields:
    return dict(zip(args[::2], args[1::2], strict=True))


def _split_ids(raw: bytes | None) -> tuple[str, ...]:
    return tuple(raw.decode().split(",")) if raw else ()


@dataclass(frozen=True, slots=True)
class Publish:
    """One accepted REST send, as appended to the publish stream."""

    kind: Kind
    hub: str
    target: str  # group, user or connection id; "" for ALL
    frame: bytes
    excluded: tuple[str, ...] = ()
    traceparent: str | None = None

    def field_args(self, message_id: bytes | None = None) -> list[bytes]:
        """The entry's fields flat, as ``XADD`` takes them; with the message id, the inbox
        entry a worker hands to a gateway."""
        args = [b"k", self.kind.value, b"h", self.hub.encode(), b"t", self.target.encode(),
                b"f", self.frame]  # fmt: skip
        if self.excluded:
            args += (b"x", _join_ids(self.excluded))
        if self.traceparent:
            args += (b"tp", self.traceparent.encode())
        if message_id is not None:
            args += (b"m", message_id)
        return args

    def to_fields(self) -> OutFields:
        return _as_map(self.field_args())

    @classmethod
    def from_fields(cls, fields: Fields) -> Publish:
        tp = fields.get(b"tp")
        return cls(
            kind=Kind(fields[b"k"]),
            hub=fields[b"h"].decode(),
            target=fields[b"t"].decode(),
            frame=fields[b"f"],
            excluded=_split_ids(fields.get(b"x")),
            traceparent=tp.decode() if tp else None,
        )

    def delivery(self, message_id: bytes) -> OutFields:
        """The inbox entry for this message: the same fields plus the message id."""
        return _as_map(self.field_args(message_id))


@dataclass(frozen=True, slots=True)
class Delivery:
    """An inbox or broadcast-feed entry as a gateway reads it."""

    kind: Kind
    hub: str
    target: str
    message_id: bytes = b""
    frame: bytes = b""
    connections: tuple[str, ...] = ()  # excluded ids for messages; subjects for control
    reason: str | None = None
    traceparent: str | None = None

    @classmethod
    def from_fields(cls, fields: Fields) -> Delivery:
        kind = Kind(fields[b"k"])
        tp = fields.get(b"tp")
        reason = fields.get(b"r")
        return cls(
            kind=kind,
            hub=fields[b"h"].decode(),
            target=fields.get(b"t", b"").decode(),
            message_id=fields.get(b"m", b""),
            frame=fields.get(b"f", b""),
            connections=_split_ids(fields.get(b"x") or fields.get(b"cs")),
            reason=reason.decode() if reason is not None else None,
            traceparent=tp.decode() if tp else None,
        )


def control(
    kind: Kind, hub: str, connections: tuple[str, ...], target: str = "", reason: str | None = None
) -> OutFields:
    """A control entry: JOIN/LEAVE ``connections`` to/from group ``target``, or CLOSE them."""
    fields: OutFields = {
        b"k": kind.value,
        b"h": hub.encode(),
        b"t": target.encode(),
        b"cs": _join_ids(connections),
    }
    if reason is not None:
        fields[b"r"] = reason.encode()
    return fields


def hello(gateway: str) -> OutFields:
    return {b"k": Kind.HELLO.value, b"h": b"", b"t": gateway.encode()}
