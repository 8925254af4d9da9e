"""``hubbub-gateway``: run one gateway process."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI

from hubbub.logs import configure
from hubbub.runtime import tune_gc
from hubbub.settings import DEFAULT_ACCESS_KEY, Settings
from hubbub.startup import add_version, bind_port, load_settings, require_redis

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


PROG = "hubbub-gateway"
log = logging.getLogger("hubbub.gateway")


def parser() -> argparse.ArgumentParser:
    """Options are only --help and --version: a gateway reads its settings from HUBBUB_*
    variables, the same ones in every deployment (docs/operations.md)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run one Hubbub gateway: the SignalR endpoints for clients and the REST "
        "API, on HUBBUB_HOST:HUBBUB_PORT, with Redis at HUBBUB_REDIS_URL.",
        epilog="Configured by HUBBUB_* environment variables (shared/hubbub/settings.py, "
        "docs/operations.md). Exits 2, with one line, when Redis or the port is unusable.",
    )
    add_version(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    parser().parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings(PROG)
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
    # Before anything is logged as ready: the port is ours and Redis answers, or one line.
    sock = bind_port(PROG, settings.host, settings.port)
    require_redis(PROG, settings, f"hubbub-gateway-{settings.gateway_id}")
    if settings.access_key == DEFAULT_ACCESS_KEY and settings.warn_default_access_key:
        log.warning(
            "HUBBUB_ACCESS_KEY is the development default, which anyone can read in the "
            "README: set a secret key outside hubbub dev"
        )
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
    DrainingServer(config, app, settings).run(sockets=[sock])


if __name__ == "__main__":
    main()
