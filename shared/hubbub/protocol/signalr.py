"""SignalR JSON hub protocol, sans-I/O: bytes in, messages out, and back.

Follows dotnet/aspnetcore ``src/SignalR/docs/specs/HubProtocol.md``. Nothing here touches a
socket, so it can be unit-tested and fuzzed directly; the gateway feeds it what the WebSocket
receives and writes what it returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

RS = b"\x1e"


class MessageType(enum.IntEnum):
    INVOCATION = 1
    STREAM_ITEM = 2
    COMPLETION = 3
    STREAM_INVOCATION = 4
    CANCEL_INVOCATION = 5
    PING = 6
    CLOSE = 7
    ACK = 8
    SEQUENCE = 9


class ProtocolError(ValueError):
    """The peer broke the protocol; the message is fit to send back as a Close ``error``."""


@dataclass(frozen=True, slots=True)
class Invocation:
    target: str
    arguments: list[Any]
    invocation_id: str | None = None
    stream_ids: list[str] = field(default_factory=list)
    # The client's trace, from the message's ``headers`` (``traceparent``), if it sent one.
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class StreamInvocation:
    target: str
    arguments: list[Any]
    invocation_id: str


@dataclass(frozen=True, slots=True)
class StreamItem:
    invocation_id: str
    item: Any


@dataclass(frozen=True, slots=True)
class Completion:
    invocation_id: str
    result: Any = None
    error: str | None = None
    has_result: bool = False


@dataclass(frozen=True, slots=True)
class CancelInvocation:
    invocation_id: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    error: str | None = None
    allow_reconnect: bool = False


@dataclass(frozen=True, slots=True)
class Ack:
    sequence_id: int


@dataclass(frozen=True, slots=True)
class Sequence:
    sequence_id: int


HubMessage = (
    Invocation
    | StreamInvocation
    | StreamItem
    | Completion
    | CancelInvocation
    | Ping
    | Close
    | Ack
    | Sequence
)


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    protocol: str
    version: int


# ---------------------------------------------------------------- encoding (server -> client)

PING_RECORD = b'{"type":6}' + RS
HANDSHAKE_OK = b"{}" + RS


def encode_invocation(
    target: str, arguments: list[Any] | tuple[Any, ...], invocation_id: str | None = None
) -> bytes:
    """An Invocation record, ready to write to any socket: non-blocking without
    ``invocation_id``; with one, the client answers with a Completion (client results)."""
    if invocation_id is None:
        return orjson.dumps({"type": 1, "target": target, "arguments": arguments}) + RS
    msg = {"type": 1, "invocationId": invocation_id, "target": target, "arguments": arguments}
    return orjson.dumps(msg) + RS


def encode_completion(invocation_id: str, result: Any = None, error: str | None = None) -> bytes:
    msg: dict[str, Any] = {"type": 3, "invocationId": invocation_id}
    if error is not None:
        msg["error"] = error
    elif result is not None:
        msg["result"] = result
    return orjson.dumps(msg) + RS


def encode_close(error: str | None = None, allow_reconnect: bool = False) -> bytes:
    msg: dict[str, Any] = {"type": 7}
    if error is not None:
        msg["error"] = error
    if allow_reconnect:
        msg["allowReconnect"] = True
    return orjson.dumps(msg) + RS


def encode_ack(sequence_id: int) -> bytes:
    """Stateful reconnect: the client's messages up to ``sequence_id`` were received."""
    return b'{"type":8,"sequenceId":%d}' % sequence_id + RS


def encode_sequence(sequence_id: int) -> bytes:
    """Stateful reconnect, after a re-attach: the next counted message has ``sequence_id``."""
    return b'{"type":9,"sequenceId":%d}' % sequence_id + RS


def counted(message: object) -> bool:
    """Whether stateful reconnect numbers ``message`` (the spec: Invocation, StreamItem,
    Completion, StreamInvocation, CancelInvocation; not Ping, Close, Ack or Sequence)."""
    return isinstance(
        message, (Invocation, StreamItem, Completion, StreamInvocation, CancelInvocation)
    )


def encode_handshake_error(error: str) -> bytes:
    return orjson.dumps({"error": error}) + RS


# ---------------------------------------------------------------- decoding (client -> server)


class RecordBuffer:
    """Splits a byte stream into ``0x1e``-terminated records, bounding what it will hold.

    Real clients send whole records per WebSocket frame, several per frame at most; a record
    split across frames is still accepted. A record longer than ``max_size`` is an error.
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int) -> None:
        self._buf = b""
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        parts = data.split(RS)
        tail = parts.pop()
        for part in parts:
            if len(part) > self.max_size:
                raise ProtocolError(f"message exceeds the maximum size of {self.max_size} bytes")
        if len(tail) > self.max_size:
            raise ProtocolError(f"message exceeds the maximum size of {self.max_size} bytes")
        self._buf = tail
        return parts


def _loads(record: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(record)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"message is not valid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"missing required property '{key}'")
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"property '{key}' must be a string")
    return value


def _arguments(obj: dict[str, Any]) -> list[Any]:
    args = obj.get("arguments", [])
    if not isinstance(args, list):
        raise ProtocolError("property 'arguments' must be an array")
    return args


def parse_handshake(record: bytes) -> HandshakeRequest:
    obj = _loads(record)
    protocol = obj.get("protocol")
    version = obj.get("version")
    if not isinstance(protocol, str) or not protocol:
        raise ProtocolError("handshake is missing 'protocol'")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("handshake is missing an integer 'version'")
    return HandshakeRequest(protocol, version)


def parse_message(record: bytes) -> HubMessage:
    """One record (without its separator) to a message; unknown types are an error."""
    obj = _loads(record)
    kind = obj.get("type")
    if not isinstance(kind, int) or isinstance(kind, bool):
        raise ProtocolError("message is missing an integer 'type'")
    if kind == MessageType.INVOCATION:
        stream_ids = obj.get("streamIds")
        if stream_ids is None:
            stream_ids = []
        elif not isinstance(stream_ids, list) or not all(isinstance(s, str) for s in stream_ids):
            raise ProtocolError("property 'streamIds' must be an array of strings")
        headers = obj.get("headers")
        traceparent = headers.get("traceparent") if isinstance(headers, dict) else None
        return Invocation(
            target=_str(obj, "target") or "",
            arguments=_arguments(obj),
            invocation_id=_str(obj, "invocationId", required=False),
            stream_ids=stream_ids,
            traceparent=traceparent[:128] if isinstance(traceparent, str) else None,
        )
    if kind == MessageType.STREAM_INVOCATION:
        return StreamInvocation(
            target=_str(obj, "target") or "",
            arguments=_arguments(obj),
            invocation_id=_str(obj, "invocationId") or "",
        )
    if kind == MessageType.STREAM_ITEM:
        return StreamItem(_str(obj, "invocationId") or "", obj.get("item"))
    if kind == MessageType.COMPLETION:
        error = _str(obj, "error", required=False)
        if error is not None and "result" in obj:
            raise ProtocolError("a completion carries a result or an error, not both")
        return Completion(
            _str(obj, "invocationId") or "",
            result=obj.get("result"),
            error=error,
            has_result="result" in obj,
        )
    if kind == MessageType.CANCEL_INVOCATION:
        return CancelInvocation(_str(obj, "invocationId") or "")
    if kind == MessageType.PING:
        return Ping()
    if kind == MessageType.CLOSE:
        allow = obj.get("allowReconnect", False)
        if not isinstance(allow, bool):
            raise ProtocolError("property 'allowReconnect' must be a boolean")
        return Close(_str(obj, "error", required=False), allow)
    if kind in (MessageType.ACK, MessageType.SEQUENCE):
        seq = obj.get("sequenceId")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ProtocolError("property 'sequenceId' must be an integer")
        return Ack(seq) if kind == MessageType.ACK else Sequence(seq)
    raise ProtocolError(f"unknown message type {kind}")


# ---------------------------------------------------------------- connection state machine


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HandshakeAccepted:
    request: HandshakeRequest


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    error: str


Event = HandshakeAccepted | HandshakeRejected | HubMessage


class ServerProtocol:
    """Server side of one SignalR connection: feed it received data, act on the events.

    ``receive`` raises :class:`ProtocolError` for anything the connection cannot survive
    (garbage, oversized records, data after close); the caller closes with that message.
    A rejected handshake comes back as an event so the caller can answer it before closing.
    """

    __slots__ = ("_head", "_records", "codec", "max_message_size", "phase", "protocol")

    def __init__(self, max_message_size: int) -> None:
        from .codec import JSON, RecordReader  # codec builds on this module

        self.max_message_size = max_message_size
        self._head = b""  # the handshake so far, until its 0x1e
        self._records: RecordReader = RecordBuffer(max_message_size)
        self.phase = Phase.HANDSHAKE
        self.protocol: str | None = None
        # The negotiated codec (JSON until the handshake says otherwise): it reads what the
        # client sends after the handshake, and the gateway writes to the client with it.
        self.codec = JSON

    @classmethod
    def resumed(cls, max_message_size: int, protocol: str) -> ServerProtocol:
        """A re-attached connection (stateful reconnect): open already, no handshake."""
        from .codec import CODECS

        opened = cls(max_message_size)
        opened.phase = Phase.OPEN
        opened.protocol = protocol
        opened.codec = CODECS[protocol]
        opened._records = opened.codec.reader(max_message_size)
        return opened

    def receive(self, data: bytes) -> list[Event]:
        if self.phase is Phase.CLOSED:
            raise ProtocolError("data received after the connection closed")
        events: list[Event] = []
        if self.phase is Phase.HANDSHAKE:
            # The handshake is JSON whatever the protocol; what follows its 0x1e (even in the
            # same frame) is in the negotiated protocol, so it is split off by hand here.
            if self._head:
                data = self._head + data
                self._head = b""
            end = data.find(RS)
            limit = self.max_message_size
            if end < 0 or end > limit:
                if len(data) > limit:
                    raise ProtocolError(f"message exceeds the maximum size of {limit} bytes")
                self._head = data
                return events
            answer = self._handshake(data[:end])
            events.append(answer)
            if isinstance(answer, HandshakeRejected):
                return events
            data = data[end + 1 :]
            if not data:
                return events
        codec = self.codec
        for record in self._records.feed(data):
            msg = codec.parse(record)
            if isinstance(msg, Close):
                self.phase = Phase.CLOSED
                events.append(msg)
                return events
            events.append(msg)
        return events

    def _handshake(self, record: bytes) -> Event:
        try:
            request = parse_handshake(record)
        except ProtocolError as exc:
            self.phase = Phase.CLOSED
            return HandshakeRejected(f"Invalid handshake: {exc}")
        from .codec import CODECS

        codec = CODECS.get(request.protocol)
        if codec is None:
            self.phase = Phase.CLOSED
            return HandshakeRejected(f"The protocol '{request.protocol}' is not supported.")
        # Like ASP.NET Core: any version up to ours (signalrcore sends its negotiate version, 0).
        if not 0 <= request.version <= codec.version:
            self.phase = Phase.CLOSED
            return HandshakeRejected(
                f"The server does not support version {request.version} of the "
                f"'{request.protocol}' protocol."
            )
        self.phase = Phase.OPEN
        self.protocol = request.protocol
        self.codec = codec
        self._records = self.codec.reader(self.max_message_size)
        return HandshakeAccepted(request)
