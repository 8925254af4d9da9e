"""``hubbub-gateway``: run one gateway process."""

from __future__ import annotations

import uvicorn
from hubbub.logs import configure
from hubbub.settings import Settings

from .app import create_app


def main() -> None:
    settings = Settings()
    configure(settings.log_level, f"gateway[{settings.gateway_id}]")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        # signalrcore never answers WebSocket pings: SignalR Ping records keep connections alive.
        ws_ping_interval=None,
        # Bigger than max_message_size so oversized messages get a SignalR close reason.
        ws_max_size=max(1024 * 1024, settings.max_message_size * 4),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
