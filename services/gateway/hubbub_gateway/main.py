"""``hubbub-gateway``: run one gateway process."""

from __future__ import annotations

import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from hubbub.logs import configure
from hubbub.runtime import tune_gc
from hubbub.settings import Settings

from .app import create_app, drain
from .edge import EdgeLimits, raise_fd_limit
from .transport import HubbubWebSocketProtocol


class DrainingServer(uvicorn.Server):
    """On SIGTERM, send clients a SignalR Close(allowReconnect) *before* uvicorn closes their
    sockets (it would otherwise close them with a bare 1012 and no SignalR reason)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings) -> None:
        super().__init__(config)
        self.hubbub_app = app
        self.settings = settings

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A drain on SIGTERM is the normal way out, so the process exits 0. uvicorn's own
        # handler also records the signal to raise it again once the server has stopped
        # (then the exit status says "killed by SIGTERM"); setting the public should_exit
        # flag ourselves starts the same graceful shutdown without that record. SIGINT
        # (Ctrl-C, twice to force) keeps uvicorn's behaviour.
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.hubbub_app.state, "hubbub", None)
        if state is not None:
            await drain(state, self.settings.drain_timeout)
        await super().shutdown(sockets)


def main() -> None:
    settings = Settings()
    configure(
        settings.log_level,
        f"gateway[{settings.gateway_id}]" if settings.log_format == "text" else "gateway",
        settings.log_format,
        {"gateway_id": settings.gateway_id},
        refusals_per_second=settings.refusal_log_per_second,
        refusal_burst=settings.refusal_log_burst,
    )
    # The edge's bounds, fitted under the open-file limit (raised to the hard limit first);
    # the app refuses WebSocket connections beyond the fitted max_connections.
    limits = EdgeLimits.fit(settings, raise_fd_limit())
    settings = settings.model_copy(update={"max_connections": limits.max_connections})
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # uvicorn's httptools protocol inside the edge's bounds on heads and idle sockets.
        http=limits.protocol(),
        # Our own WebSocket protocol (public websockets sans-I/O API), see transport.py.
        ws=HubbubWebSocketProtocol,
        # Frames are pre-encoded once for all recipients; compression would undo that (the
        # protocol never negotiates it; this says so to uvicorn too).
        ws_per_message_deflate=False,
        # signalrcore never answers WebSocket pings: SignalR Ping records keep connections
        # alive (the protocol sends no WebSocket Pings; it answers the client's).
        ws_ping_interval=None,
        # Bigger than max_message_size so oversized messages get a SignalR close reason;
        # beyond it the protocol closes with 1009.
        ws_max_size=max(1024 * 1024, settings.max_message_size * 4),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
    )
    tune_gc()  # after start-up imports: they live for good
    DrainingServer(config, app, settings).run()


if __name__ == "__main__":
    main()
