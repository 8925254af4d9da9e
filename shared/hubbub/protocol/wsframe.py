"""WebSocket framing for server-to-client messages (RFC 6455 §5.2), sans-I/O.

Frames a server sends are not masked, so one encoded frame serves every socket: the gateway
frames each delivery once and writes the same bytes to all its recipients.
"""

from __future__ import annotations

import struct
from collections.abc import Callable


def _framer(first: int, kind: str) -> Callable[[bytes], bytes]:
    """A function building one final, unmasked, uncompressed frame of one kind (``first``:
    FIN and the opcode); a closure, so the hot path pays no extra call."""
    pack = struct.pack

    def frame(payload: bytes) -> bytes:
        n = len(payload)
        if n < 126:
            return bytes((first, n)) + payload
        if n < 1 << 16:
            return pack("!BBH", first, 126, n) + payload
        return pack("!BBQ", first, 127, n) + payload

    frame.__name__ = f"{kind}_frame"
    frame.__doc__ = f"One final, unmasked, uncompressed {kind} frame holding ``payload``."
    return frame


text_frame = _framer(0x81, "text")  # UTF-8: JSON hub records
binary_frame = _framer(0x82, "binary")  # MessagePack hub records
