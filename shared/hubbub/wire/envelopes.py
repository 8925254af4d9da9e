"""What travels through Redis streams: message, control, result and upstream entries.

Both are flat Redis stream field maps with short byte keys, spelled once below. A
:class:`MessageEntry` is an accepted send: appended to the publish stream by the REST edge or
the SDK, copied by a worker into each recipient gateway's inbox (then with its message id) or
into the broadcast feed. A :class:`ControlEntry` asks one gateway to change its local index
(join, leave, close) and is written to its inbox by membership changes. The SignalR frame is
encoded once, at ingest, and travels as opaque bytes to every gateway, which writes the same
bytes to every socket.

The way back: an :class:`UpstreamEntry` is what a client did (an invocation, connected,
disconnected), appended by its gateway to the upstream stream that internal services consume
(:mod:`hubbub.upstream`). A :class:`ResultEntry` carries a client's answer to a server's
invocation (client results) from the gateway holding the client to the gateway whose REST
caller waits for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from redis.typing import EncodableT, FieldT

Fields = dict[bytes, bytes]  # an entry as read back from Redis

# Field names of both entry types.
KIND = b"k"  # Kind (messages) or Op (control entries): their values never overlap
HUB = b"h"
TARGET = b"t"  # message: group, user or connection id; control: group, or the gateway id
FRAME = b"f"
EXCLUDED = b"x"  # message: connection ids left out, comma-separated
TRACEPARENT = b"tp"
MESSAGE_ID = b"m"  # inbox and feed copies of a message: "<partition>:<entry id>"
CONNECTIONS = b"cs"  # control: the connection ids it applies to, comma-separated
REASON = b"r"  # control: the close reason
EPOCH = b"e"  # inbox and feed copies: the routing worker's lease epoch for the partition
CALL = b"ci"  # the invocation id a Completion answers, or a client-result invocation's id
REPLY_TO = b"rt"  # client results: the gateway id whose REST caller waits for the answer
# Upstream entries (and result entries: CONNECTION, CALL, FRAME).
CONNECTION = b"cn"
USER = b"u"
CLAIMS = b"cl"  # the client's token claims, a JSON object
GATEWAY = b"gw"  # the gateway holding the connection
ARGUMENTS = b"a"  # the invocation's arguments, a JSON array
ERROR = b"er"  # disconnected: the close error, if any
TARGET_KIND = b"tk"  # grown: the kind of the target (group or user)


class Kind(bytes, enum.Enum):
    """Recipients of a message."""

    ALL = b"a"
    GROUP = b"g"
    USER = b"u"
    CONNECTION = b"c"

    @property
    def label(self) -> str:
        """The kind as the REST batch body (``to``), metrics and spans name it."""
        return _LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> Kind:
        return _KINDS[label]


_LABELS = {kind: kind.name.lower() for kind in Kind}
_KINDS = {label: kind for kind, label in _LABELS.items()}


class Event(bytes, enum.Enum):
    """What an upstream entry reports."""

    INVOCATION = b"i"
    CONNECTED = b"c"
    DISCONNECTED = b"d"

    @property
    def category(self) -> str:
        """Azure's upstream category: ``connections`` or ``messages``."""
        return "messages" if self is Event.INVOCATION else "connections"


class Op(bytes, enum.Enum):
    """What a control entry asks a gateway to do."""

    JOIN = b"J"
    LEAVE = b"L"
    CLOSE = b"X"
    # A resumable connection re-attached on another gateway: drop it here, silently (no
    # unregister, no disconnected event, no Close message).
    RELEASE = b"V"
    # Written by a gateway to create its inbox; deliveries use NOMKSTREAM so that nothing
    # recreates the inbox of a gateway that was reaped.
    HELLO = b"H"


RESULT = b"R"  # the kind of a :class:`ResultEntry`
GROWN = b"N"  # the kind of a :class:`GrownEntry`


def _join_ids(ids: tuple[str, ...]) -> bytes:
    # Connection ids are [A-Za-z0-9_-], so a comma never occurs inside one.
    return ",".join(ids).encode()


def _split_ids(raw: bytes | None) -> tuple[str, ...]:
    return tuple(raw.decode().split(",")) if raw else ()


@dataclass(frozen=True, slots=True)
class MessageEntry:
    """One accepted send: to the publish stream, and as copied to inboxes and the feed."""

    kind: Kind
    hub: str
    target: str  # group, user or connection id; "" for ALL
    frame: bytes
    excluded: tuple[str, ...] = ()
    traceparent: str | None = None
    message_id: bytes = b""  # set on inbox and feed copies only
    epoch: int = 0  # inbox and feed copies: the lease epoch it was routed under (0: none)
    # A Completion to a client's blocking invocation: its id (the gateway delivers only the
    # first answer, while the call is pending). With ``reply_to``: the id of an Invocation the
    # server sends and the client answers (client results), for that gateway.
    call: str = ""
    reply_to: str = ""

    def fields(self, message_id: bytes | None = None, epoch: int = 0) -> list[bytes]:
        """The entry's fields flat, as ``XADD`` takes them; with ``message_id`` (and the
        lease ``epoch``), the copy a worker hands to a gateway."""
        args = [KIND, self.kind.value, HUB, self.hub.encode(), TARGET, self.target.encode(),
                FRAME, self.frame]  # fmt: skip
        if self.excluded:
            args += (EXCLUDED, _join_ids(self.excluded))
        if self.traceparent:
            args += (TRACEPARENT, self.traceparent.encode())
        message_id = message_id or self.message_id
        if message_id:
            args += (MESSAGE_ID, message_id)
        epoch = epoch or self.epoch
        if epoch:
            args += (EPOCH, b"%d" % epoch)
        if self.call:
            args += (CALL, self.call.encode())
        if self.reply_to:
            args += (REPLY_TO, self.reply_to.encode())
        return args

    @classmethod
    def decode(cls, fields: Fields) -> MessageEntry:
        """Raises ``KeyError``/``ValueError``/``UnicodeDecodeError`` on a malformed entry."""
        tp = fields.get(TRACEPARENT)
        return cls(
            kind=Kind(fields[KIND]),
            hub=fields[HUB].decode(),
            target=fields[TARGET].decode(),
            frame=fields[FRAME],
            excluded=_split_ids(fields.get(EXCLUDED)),
            traceparent=tp.decode() if tp else None,
            message_id=fields.get(MESSAGE_ID, b""),
            epoch=int(fields.get(EPOCH, b"0")),
            call=fields.get(CALL, b"").decode(),
            reply_to=fields.get(REPLY_TO, b"").decode(),
        )


@dataclass(frozen=True, slots=True)
class ControlEntry:
    """A change to one gateway's local index: JOIN or LEAVE ``connections`` to or from group
    ``target`` ("" = every group), CLOSE them (with ``reason``), or HELLO (``target`` is the
    gateway id)."""

    op: Op
    hub: str
    connections: tuple[str, ...] = ()
    target: str = ""
    reason: str | None = None

    def fields(self) -> list[bytes]:
        args = [KIND, self.op.value, HUB, self.hub.encode(), TARGET, self.target.encode(),
                CONNECTIONS, _join_ids(self.connections)]  # fmt: skip
        if self.reason is not None:
            args += (REASON, self.reason.encode())
        return args

    def mapping(self) -> dict[FieldT, EncodableT]:
        """The fields as redis-py's ``xadd`` takes them."""
        flat = self.fields()
        return dict(zip(flat[::2], flat[1::2], strict=True))

    @classmethod
    def decode(cls, fields: Fields) -> ControlEntry:
        reason = fields.get(REASON)
        return cls(
            op=Op(fields[KIND]),
            hub=fields[HUB].decode(),
            connections=_split_ids(fields.get(CONNECTIONS)),
            target=fields.get(TARGET, b"").decode(),
            reason=reason.decode() if reason is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ResultEntry:
    """A client's answer to a server invocation (client results), for the gateway whose REST
    caller waits: ``payload`` is ``{"result": …}`` or ``{"error": "…"}`` as JSON."""

    hub: str
    connection: str
    call: str
    payload: bytes

    def fields(self) -> list[bytes]:
        return [KIND, RESULT, HUB, self.hub.encode(), CONNECTION, self.connection.encode(),
                CALL, self.call.encode(), FRAME, self.payload]  # fmt: skip

    @classmethod
    def decode(cls, fields: Fields) -> ResultEntry:
        return cls(
            hub=fields[HUB].decode(),
            connection=fields[CONNECTION].decode(),
            call=fields[CALL].decode(),
            payload=fields[FRAME],
        )


@dataclass(frozen=True, slots=True)
class UpstreamEntry:
    """What a client did, for the services that handle it (:mod:`hubbub.upstream`).

    ``arguments`` is the invocation's JSON array as the client sent it; ``claims`` the JSON
    object of its token's claims. ``call`` is the invocation id of a blocking invocation ("":
    non-blocking, or not an invocation). ``gateway`` holds the connection.
    """

    event: Event
    hub: str
    connection: str
    gateway: str
    user: str | None = None
    claims: bytes = b"{}"
    target: str = ""  # the method invoked
    arguments: bytes = b"[]"
    call: str = ""
    error: str | None = None  # disconnected: the close error
    traceparent: str | None = None

    def fields(self) -> list[bytes]:
        args = [KIND, self.event.value, HUB, self.hub.encode(),
                CONNECTION, self.connection.encode(), GATEWAY, self.gateway.encode(),
                CLAIMS, self.claims]  # fmt: skip
        if self.user is not None:
            args += (USER, self.user.encode())
        if self.event is Event.INVOCATION:
            args += (TARGET, self.target.encode(), ARGUMENTS, self.arguments)
        if self.call:
            args += (CALL, self.call.encode())
        if self.error is not None:
            args += (ERROR, self.error.encode())
        if self.traceparent:
            args += (TRACEPARENT, self.traceparent.encode())
        return args

    @classmethod
    def decode(cls, fields: Fields) -> UpstreamEntry:
        """Raises ``KeyError``/``ValueError``/``UnicodeDecodeError`` on a malformed entry."""
        user, error, tp = fields.get(USER), fields.get(ERROR), fields.get(TRACEPARENT)
        return cls(
            event=Event(fields[KIND]),
            hub=fields[HUB].decode(),
            connection=fields[CONNECTION].decode(),
            gateway=fields[GATEWAY].decode(),
            user=user.decode() if user is not None else None,
            claims=fields.get(CLAIMS, b"{}"),
            target=fields.get(TARGET, b"").decode(),
            arguments=fields.get(ARGUMENTS, b"[]"),
            call=fields.get(CALL, b"").decode(),
            error=error.decode() if error is not None else None,
            traceparent=tp.decode() if tp else None,
        )


@dataclass(frozen=True, slots=True)
class GrownEntry:
    """Publish stream: the gateways holding the recipients of ``target`` (a group or a user of
    ``hub``) may have grown, so a worker forgets what it remembered of them. Written after the
    change, to the partition that target's sends go to: every send accepted after the change
    is read after it (``hubbub_fanout.targets``)."""

    kind: Kind
    hub: str
    target: str

    def fields(self) -> list[bytes]:
        return [KIND, GROWN, HUB, self.hub.encode(), TARGET, self.target.encode(),
                TARGET_KIND, self.kind.value]  # fmt: skip

    def mapping(self) -> dict[FieldT, EncodableT]:
        """The fields as redis-py's ``xadd`` takes them."""
        flat = self.fields()
        return dict(zip(flat[::2], flat[1::2], strict=True))

    @classmethod
    def decode(cls, fields: Fields) -> GrownEntry:
        return cls(Kind(fields[TARGET_KIND]), fields[HUB].decode(), fields[TARGET].decode())


Entry = MessageEntry | ControlEntry | ResultEntry
_MESSAGE_KINDS = frozenset(kind.value for kind in Kind)


def decode_entry(fields: Fields) -> Entry:
    """An inbox or broadcast-feed entry, as a gateway reads it."""
    kind = fields.get(KIND)
    if kind in _MESSAGE_KINDS:
        return MessageEntry.decode(fields)
    if kind == RESULT:
        return ResultEntry.decode(fields)
    return ControlEntry.decode(fields)


def hello(gateway: str) -> ControlEntry:
    """The entry a gateway creates its inbox with."""
    return ControlEntry(Op.HELLO, "", target=gateway)
