"""SignalR MessagePack hub protocol, sans-I/O: the same messages as :mod:`.signalr`, in binary.

Follows the MessagePack section of dotnet/aspnetcore ``src/SignalR/docs/specs/HubProtocol.md``
and its JS client (``MessagePackHubProtocol.ts``). Each record is a MessagePack array behind a
varint length prefix (7 bits a byte, least significant first, at most 5 bytes: 2 GB). Every
malformed input becomes :class:`~.signalr.ProtocolError`, never another exception, since the
bytes come from untrusted clients.
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from .signalr import (
    RS,
    Ack,
    CancelInvocation,
    Close,
    Completion,
    HubMessage,
    Invocation,
    MessageType,
    Ping,
    ProtocolError,
    Sequence,
    StreamInvocation,
    StreamItem,
)

MAX_PREFIX = 5  # bytes of a length prefix: 5 x 7 bits cover the 2 GB limit
MAX_LENGTH = (1 << 31) - 1

# Completion's ResultKind.
ERROR_RESULT = 1
VOID_RESULT = 2
NON_VOID_RESULT = 3

_NO_IDS = ()  # stream ids: packed as an empty array; a tuple, so nothing shared can change


def prefix(n: int) -> bytes:
    """The varint length prefix of an ``n``-byte record."""
    if n < 0x80:
        return _SHORT[n]
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SHORT = tuple(bytes((n,)) for n in range(0x80))
# Plain ints, not MessageType members, in what is packed: msgpack packs an exact int on its
# fast path and an int subclass on a slow one (from_json is on the delivery path).
_INVOCATION, _COMPLETION, _PING, _CLOSE = 1, 3, 6, 7


def _record(message: list[Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return prefix(len(body)) + body


# ---------------------------------------------------------------- encoding (server -> client)

PING_RECORD = _record([_PING])


def encode_invocation(
    target: str, arguments: list[Any] | tuple[Any, ...], invocation_id: str | None = None
) -> bytes:
    """An Invocation; with ``invocation_id`` the client answers with a Completion. Six items,
    stream ids empty, as ASP.NET Core writes it (signalrcore reads the sixth unconditionally)."""
    return _record([_INVOCATION, {}, invocation_id, target, list(arguments), _NO_IDS])


def encode_completion(invocation_id: str, result: Any = None, error: str | None = None) -> bytes:
    """A Completion: an error, a result, or void when both are None (as in the JSON codec)."""
    if error is not None:
        return _record([_COMPLETION, {}, invocation_id, ERROR_RESULT, error])
    if result is not None:
        return _record([_COMPLETION, {}, invocation_id, NON_VOID_RESULT, result])
    return _record([_COMPLETION, {}, invocation_id, VOID_RESULT])


def encode_close(error: str | None = None, allow_reconnect: bool = False) -> bytes:
    """A Close with all three items, as ASP.NET Core writes it."""
    return _record([_CLOSE, error, allow_reconnect])


def encode_ack(sequence_id: int) -> bytes:
    return _record([8, sequence_id])


def encode_sequence(sequence_id: int) -> bytes:
    return _record([9, sequence_id])


def from_json(record: bytes) -> bytes:
    """The MessagePack record for a JSON one the server wrote (with its trailing ``0x1e``).

    Publishers encode each message once, as JSON; a gateway transcodes it once for all its
    MessagePack recipients. Only what servers send is handled: Invocation, Completion, Ping,
    Close, Ack and Sequence; anything else raises :class:`ProtocolError`.
    """
    if record.endswith(RS):
        record = record[:-1]
    try:
        obj = orjson.loads(record)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"message is not valid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object")
    kind = obj.get("type")
    if type(kind) is not int:  # not a bool, nor 1.0
        raise ProtocolError("message is missing an integer 'type'")
    if kind == 1:
        target, call = obj.get("target"), obj.get("invocationId")
        args = obj.get("arguments", [])
        if not isinstance(target, str) or not isinstance(args, list):
            raise ProtocolError("an Invocation needs a string target and an arguments array")
        if call is not None and not isinstance(call, str):
            raise ProtocolError("property 'invocationId' must be a string")
        return _record([_INVOCATION, {}, call, target, args, _NO_IDS])
    if kind == 3:
        call, error = obj.get("invocationId"), obj.get("error")
        if not isinstance(call, str):
            raise ProtocolError("property 'invocationId' must be a string")
        if error is not None:
            if not isinstance(error, str):
                raise ProtocolError("property 'error' must be a string")
            return _record([_COMPLETION, {}, call, ERROR_RESULT, error])
        if "result" in obj:
            return _record([_COMPLETION, {}, call, NON_VOID_RESULT, obj["result"]])
        return _record([_COMPLETION, {}, call, VOID_RESULT])
    if kind == 6:
        return PING_RECORD
    if kind == 7:
        error, allow = obj.get("error"), obj.get("allowReconnect", False)
        if (error is not None and not isinstance(error, str)) or not isinstance(allow, bool):
            raise ProtocolError("a Close needs a string error and a boolean allowReconnect")
        return encode_close(error, allow)
    if kind in (8, 9):
        seq = obj.get("sequenceId")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ProtocolError("property 'sequenceId' must be an integer")
        return _record([kind, seq])
    raise ProtocolError(f"cannot transcode a message of type {kind!r}")


# ---------------------------------------------------------------- decoding (client -> server)


class VarintRecordBuffer:
    """Splits a byte stream into length-prefixed records, bounding what it will hold.

    A record longer than ``max_size`` is refused as soon as its prefix is read, so at most
    ``max_size + 5`` bytes are ever kept between calls; a prefix longer than 5 bytes, or one
    over 2 GB, is an error.
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int) -> None:
        self._buf = b""
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        records: list[bytes] = []
        pos, end, max_size = 0, len(data), self.max_size
        while pos < end:
            length = shift = 0
            i = pos
            while True:
                if i == end:  # the prefix continues in a later frame
                    self._buf = data[pos:]
                    return records
                byte = data[i]
                i += 1
                if i - pos == MAX_PREFIX and byte > 0x07:
                    raise ProtocolError("message length prefix is malformed (over 2 GB)")
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            if length > max_size:
                raise ProtocolError(f"message exceeds the maximum size of {max_size} bytes")
            if end - i < length:
                self._buf = data[pos:]
                return records
            records.append(data[i : i + length])
            pos = i + length
        return records


def _unpack(record: bytes) -> Any:
    n = len(record)
    try:
        return msgpack.unpackb(
            record,
            raw=False,
            use_list=True,
            strict_map_key=False,  # arguments may hold other keys; checked where it matters
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=n,
        )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"message is not valid MessagePack: {type(exc).__name__}") from None


def _headers(value: Any) -> dict[str, str]:
    if value is None:  # lenient: some clients write nil for no headers
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProtocolError("headers must be a map of strings to strings")
    return value


def _id(value: Any, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ProtocolError("the invocation id must be a string")
    return value


def _target(value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError("the target must be a string")
    return value


def _arguments(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError("the arguments must be an array")
    return value


def _stream_ids(items: list[Any], index: int) -> list[str]:
    value = items[index] if len(items) > index else None
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ProtocolError("the stream ids must be an array of strings")
    return value


def _need(items: list[Any], n: int, name: str) -> None:
    if len(items) < n:
        raise ProtocolError(f"a {name} message needs at least {n} items")


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"the {name} must be an integer")
    return value


def parse_message(record: bytes) -> HubMessage:
    """One record (without its length prefix) to a message; unknown types are an error.
    Items past those the type defines are ignored, as the spec allows."""
    items = _unpack(record)
    if not isinstance(items, list) or not items:
        raise ProtocolError("message must be a non-empty MessagePack array")
    kind = items[0]
    if not isinstance(kind, int) or isinstance(kind, bool):
        raise ProtocolError("message type must be an integer")
    if kind == MessageType.INVOCATION:
        _need(items, 5, "Invocation")
        headers = _headers(items[1])
        traceparent = headers.get("traceparent")
        return Invocation(
            target=_target(items[3]),
            arguments=_arguments(items[4]),
            invocation_id=_id(items[2], required=False),
            stream_ids=_stream_ids(items, 5),
            traceparent=traceparent[:128] if traceparent is not None else None,
        )
    if kind == MessageType.STREAM_INVOCATION:
        _need(items, 5, "StreamInvocation")
        _headers(items[1])
        _stream_ids(items, 5)
        return StreamInvocation(
            target=_target(items[3]),
            arguments=_arguments(items[4]),
            invocation_id=_id(items[2]) or "",
        )
    if kind == MessageType.STREAM_ITEM:
        _need(items, 4, "StreamItem")
        _headers(items[1])
        return StreamItem(_id(items[2]) or "", items[3])
    if kind == MessageType.COMPLETION:
        _need(items, 4, "Completion")
        _headers(items[1])
        call = _id(items[2]) or ""
        result_kind = _int(items[3], "result kind")
        if result_kind == VOID_RESULT:
            return Completion(call)
        _need(items, 5, "Completion")
        if result_kind == ERROR_RESULT:
            error = items[4]
            if not isinstance(error, str):
                raise ProtocolError("a Completion's error must be a string")
            return Completion(call, error=error)
        if result_kind == NON_VOID_RESULT:
            return Completion(call, result=items[4], has_result=True)
        raise ProtocolError(f"unknown result kind {result_kind}")
    if kind == MessageType.CANCEL_INVOCATION:
        _need(items, 3, "CancelInvocation")
        _headers(items[1])
        return CancelInvocation(_id(items[2]) or "")
    if kind == MessageType.PING:
        return Ping()
    if kind == MessageType.CLOSE:
        _need(items, 2, "Close")
        error = items[1]
        if error is not None and not isinstance(error, str):
            raise ProtocolError("a Close's error must be a string")
        allow = items[2] if len(items) > 2 else False
        if not isinstance(allow, bool):
            raise ProtocolError("a Close's allowReconnect must be a boolean")
        return Close(error, allow)
    if kind in (MessageType.ACK, MessageType.SEQUENCE):
        _need(items, 2, "Ack" if kind == MessageType.ACK else "Sequence")
        seq = _int(items[1], "sequence id")
        return Ack(seq) if kind == MessageType.ACK else Sequence(seq)
    raise ProtocolError(f"unknown message type {kind}")
