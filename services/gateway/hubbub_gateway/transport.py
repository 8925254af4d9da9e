"""The gateway's WebSocket server protocol: uvicorn's sans-I/O ``websockets`` protocol, which
also hands the application its own instance, so that pre-framed messages can be written
straight to the transport (no ASGI ``send`` per socket) and a client that never reads can be
cut off (``abort``) instead of blocking its close forever.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "hubbub.socket"


class HubbubWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # absent when the upgrade itself was refused
            scope["extensions"][EXTENSION] = self
