"""The peer the benchmark compares Hubbub with: one python-socketio server process.

    python bench/peer_socketio.py --port 9000 --redis-url redis://127.0.0.1:6379/0

``socketio.AsyncServer`` with an ``AsyncRedisManager`` (so that messages emitted by a
write-only manager, or by another server process, reach this one's clients), served as an
``ASGIApp`` by uvicorn with uvloop and httptools, the way python-socketio documents it. The
benchmark runs two of these, each on its own port, like Hubbub's two gateways.

On connect a client joins, server side, the rooms its query string names: ``group=<g>`` joins
room ``<g>`` and ``user=<u>`` joins room ``user:<u>`` (a per-user room, so "send to user" is an
emit to one room). The ``echo`` event answers its argument as the acknowledgement.
``GET /bench/connected`` answers how many clients this process still holds
(for the benchmark's leak check); every other path is Socket.IO's.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import parse_qs

import socketio
import uvicorn

USER_ROOM = "user:"


def build_app(redis_url: str) -> Any:
    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=manager,
        cors_allowed_origins="*",
        logger=False,
        engineio_logger=False,
    )

    @sio.event  # type: ignore[untyped-decorator]  # python-socketio ships no type hints
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        for group in query.get("group", []):
            await sio.enter_room(sid, group)
        for user in query.get("user", []):
            await sio.enter_room(sid, USER_ROOM + user)

    @sio.event  # type: ignore[untyped-decorator]
    async def echo(sid: str, value: Any) -> Any:
        """An event with an acknowledgement: the peer of a SignalR ``invoke()``
        (bench/upstream.py)."""
        return value

    async def bench_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``GET /bench/connected``: clients connected to this process (namespace "/")."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http" or scope["path"] != "/bench/connected":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        connected = sum(1 for _ in sio.manager.get_participants("/", None))
        body = json.dumps({"connected": connected}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return socketio.ASGIApp(sio, other_asgi_app=bench_app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument(
        "--ws",
        default="auto",
        help="uvicorn WebSocket implementation (auto: websockets-sansio, as Hubbub's gateway uses)",
    )
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.redis_url),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws=args.ws,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
