"""Hub protocol codecs: one object per wire format, so the gateway writes any server-to-client
record in a connection's negotiated protocol without knowing which it is.

The handshake is always JSON (:mod:`.signalr`); after it, :class:`.signalr.ServerProtocol`
reads with the codec named in the handshake and the gateway writes with it. Publishers encode
a message once, as JSON; :meth:`HubCodec.from_json` turns that record into this codec's, so a
gateway transcodes each delivery at most once per protocol, not once per socket.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from . import messagepack, signalr
from .signalr import HubMessage
from .wsframe import binary_frame, text_frame


class RecordReader(Protocol):
    """Splits received bytes into records (without their framing), bounding what it holds."""

    def feed(self, data: bytes) -> list[bytes]: ...


def _identity(record: bytes) -> bytes:
    return record


class HubCodec:
    """One hub protocol: encoders for what a server sends, the reader and parser for what a
    client sends. Records come with their framing (``0x1e`` or a length prefix); ``frame``
    wraps records into one WebSocket frame of the right kind (text or binary)."""

    __slots__ = (
        "_close",
        "_completion",
        "_from_json",
        "_invocation",
        "_parse",
        "_reader",
        "ack",
        "binary",
        "frame",
        "name",
        "ping",
        "ping_frame",
        "sequence",
        "version",
    )

    def __init__(
        self,
        *,
        name: str,
        version: int,
        binary: bool,
        ping: bytes,
        invocation: Callable[..., bytes],
        completion: Callable[..., bytes],
        close: Callable[..., bytes],
        ack: Callable[[int], bytes],
        sequence: Callable[[int], bytes],
        from_json: Callable[[bytes], bytes],
        reader: Callable[[int], RecordReader],
        parse: Callable[[bytes], HubMessage],
    ) -> None:
        self.name = name
        self.version = version
        self.binary = binary
        self.frame: Callable[[bytes], bytes] = binary_frame if binary else text_frame
        self.ping = ping
        self.ping_frame = self.frame(ping)
        self._invocation = invocation
        self._completion = completion
        self._close = close
        self.ack = ack
        self.sequence = sequence
        self._from_json = from_json
        self._reader = reader
        self._parse = parse

    def __repr__(self) -> str:
        return f"HubCodec({self.name!r})"

    def invocation(
        self,
        target: str,
        arguments: list[Any] | tuple[Any, ...],
        invocation_id: str | None = None,
    ) -> bytes:
        """An Invocation record; with ``invocation_id`` the client answers (client results)."""
        return self._invocation(target, arguments, invocation_id)

    def completion(self, invocation_id: str, result: Any = None, error: str | None = None) -> bytes:
        """A Completion record: ``error``, else ``result``, else void (both None)."""
        return self._completion(invocation_id, result, error)

    def close(self, error: str | None = None, allow_reconnect: bool = False) -> bytes:
        return self._close(error, allow_reconnect)

    def from_json(self, record: bytes) -> bytes:
        """This codec's record for a JSON record a server wrote (with its ``0x1e``); raises
        :class:`.signalr.ProtocolError` for one it cannot carry."""
        return self._from_json(record)

    def reader(self, max_size: int) -> RecordReader:
        """A record splitter refusing records over ``max_size`` bytes."""
        return self._reader(max_size)

    def parse(self, record: bytes) -> HubMessage:
        """One record (without framing) to a message; :class:`.signalr.ProtocolError` if bad."""
        return self._parse(record)


# Version 2 of both protocols adds Ack and Sequence (stateful reconnect); a client's handshake
# may ask for any version up to these.
JSON = HubCodec(
    name="json",
    version=2,
    binary=False,
    ping=signalr.PING_RECORD,
    invocation=signalr.encode_invocation,
    completion=signalr.encode_completion,
    close=signalr.encode_close,
    ack=signalr.encode_ack,
    sequence=signalr.encode_sequence,
    from_json=_identity,
    reader=signalr.RecordBuffer,
    parse=signalr.parse_message,
)

MESSAGEPACK = HubCodec(
    name="messagepack",
    version=2,
    binary=True,
    ping=messagepack.PING_RECORD,
    invocation=messagepack.encode_invocation,
    completion=messagepack.encode_completion,
    close=messagepack.encode_close,
    ack=messagepack.encode_ack,
    sequence=messagepack.encode_sequence,
    from_json=messagepack.from_json,
    reader=messagepack.VarintRecordBuffer,
    parse=messagepack.parse_message,
)

# By the protocol name a client's handshake asks for. Read-only: no state is shared by accident.
CODECS: Mapping[str, HubCodec] = MappingProxyType({c.name: c for c in (JSON, MESSAGEPACK)})
