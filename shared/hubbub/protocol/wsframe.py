"""WebSocket framing for server-to-client messages (RFC 6455 §5.2), sans-I/O.

Frames a server sends are not masked, so one encoded frame serves every socket: the gateway
frames each delivery once and writes the same bytes to all its recipients.
"""

from __future__ import annotations

import struct

_TEXT_FIN = 0x81


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked, uncompressed text frame holding ``payload`` (UTF-8)."""
    n = len(payload)
    if n < 126:
        return bytes((_TEXT_FIN, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", _TEXT_FIN, 126, n) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, n) + payload


_BINARY_FIN = 0x82


def binary_frame(payload: bytes) -> bytes:
    """One final, unmasked, uncompressed binary frame holding ``payload`` (MessagePack)."""
    n = len(payload)
    if n < 126:
        return bytes((_BINARY_FIN, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", _BINARY_FIN, 126, n) + payload
    return struct.pack("!BBQ", _BINARY_FIN, 127, n) + payload
