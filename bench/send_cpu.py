"""One REST send through the gateway's whole ASGI app, in process: the steadiest cost figure.

    .venv/bin/python -m bench.send_cpu                      # CPU µs per send (noisy machines)
    N=1000 valgrind --tool=callgrind .venv/bin/python -m bench.send_cpu
    N=6000 valgrind --tool=callgrind .venv/bin/python -m bench.send_cpu
    # instructions per send = (Collected(6000) - Collected(1000)) / 4960 (the sends between)

The app (``create_app``, lifespan included) runs against a real ``redis-server`` started on a
free port; ``C`` concurrent callers (default 32, like ``bench.ingest``'s wrk connections) post
``POST /api/hubs/bench/:send`` with a service token. No HTTP parsing and no sockets to the
client: what is left is the gateway's own code (middleware, shortcut, checks, encoding, the
Pipe's append), which is where refactors change the cost. Instruction counts under callgrind
repeat exactly, whatever else the machine runs; wall-clock figures (``bench.ingest``) don't.
To compare with another revision, run the same commands in a checkout of it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from typing import Any

import uvloop

from hubbub.dev.embedded import RedisProcess
from hubbub.settings import Settings
from hubbub.tokens import mint_token
from hubbub_gateway.app import create_app

PATH = "/api/hubs/bench/:send"


async def measure(sends: int, concurrency: int) -> float:
    redis = RedisProcess()
    redis.start()
    try:
        settings = Settings(redis_url=redis.url, access_key="k" * 32, key_prefix="sendcpu")
        app = create_app(settings)
        token = mint_token(settings.access_key, f"http://127.0.0.1:8080{PATH}", minutes=60)
        body = json.dumps({"target": "newMessage", "arguments": ["hello", 1]}).encode()
        headers = [
            (b"host", b"127.0.0.1:8080"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": PATH, "raw_path": PATH.encode(),
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080),
        }  # fmt: skip
        lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await lifespan.put({"type": "lifespan.startup"})
        started = asyncio.Event()

        async def life_receive() -> dict[str, Any]:
            return await lifespan.get()

        async def life_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        life = asyncio.create_task(
            app(
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                life_receive,
                life_send,
            )
        )
        await started.wait()
        statuses: list[int] = []
        request = {"type": "http.request", "body": body, "more_body": False}

        async def receive() -> dict[str, Any]:
            return request

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def caller(n: int) -> None:
            for _ in range(n):
                await app(dict(scope), receive, send)

        await asyncio.gather(*(caller(2000 // concurrency) for _ in range(concurrency)))
        gc.collect()
        best = float("inf")
        for _ in range(5):
            each = sends // 5 // concurrency
            t0 = time.process_time()
            await asyncio.gather(*(caller(each) for _ in range(concurrency)))
            best = min(best, (time.process_time() - t0) / (each * concurrency) * 1e6)
        assert set(statuses) == {202}, f"answers other than 202: {set(statuses)}"
        await lifespan.put({"type": "lifespan.shutdown"})
        await life
        return best
    finally:
        redis.stop()


def main() -> None:
    sends, concurrency = int(os.environ.get("N", "20000")), int(os.environ.get("C", "32"))
    best = uvloop.run(measure(sends, concurrency))
    print(f"{PATH}: {best:.1f} µs CPU per send (best of 5 rounds, in process)")


if __name__ == "__main__":
    main()
