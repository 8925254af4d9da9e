"""The way back, measured: a client's blocking ``invoke()`` round trip through the upstream
stream to a service and back, and its CPU cost per invocation in each process.

    .venv/bin/python -m bench.upstream                     # all paths, 200 invocations/s
    .venv/bin/python -m bench.upstream --rate 500 --seconds 20 --paths sdk

Every piece is its own OS process: ``redis-server``, one gateway, one fan-out worker, and
the service: for ``sdk`` a :class:`hubbub.upstream.Upstream` process whose ``echo`` handler
returns its argument; for ``http`` the worker's webhook dispatcher (``HUBBUB_UPSTREAM_URL``)
and a minimal ASGI receiver under uvicorn answering the framed Completion. The peer,
``socketio``: python-socketio's event with an acknowledgement (``bench/peer_socketio.py``,
one server process with its Redis manager), whose handler runs inside the server process, so
its figures are the cost of a round trip without any scale-out hop. The load is
``--clients`` raw WebSocket clients in this process, invoking open-loop at ``--rate`` in
total (invocation ``k`` is due at ``start + k / rate``), after 2 s of warm-up; the round trip
is from just before the Invocation is written to when its Completion is read. CPU is
user+system time from ``/proc`` over the measured phase, divided by the invocations answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from bench.procstat import cpu_seconds
from hubbub.dev.embedded import RedisProcess, free_port
from hubbub.dev.launcher import ChildProcess, LocalDeployment, start_process
from hubbub.tokens import mint_token

ACCESS_KEY = "bench-access-key-0123456789abcdef"
PROFILE = False  # --profile: gateway and worker under cProfile (<workdir>/<name>.prof)
RS = b"\x1e"


# ---------------------------------------------------------------- the services under test


def serve_sdk() -> None:
    from hubbub.settings import Settings
    from hubbub.upstream import Call, Upstream

    app = Upstream(Settings(), name="bench")

    @app.hub("chat").on("echo")
    async def echo(call: Call, value: Any) -> Any:
        return value

    app.run()


def serve_webhook(port: int) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        call = orjson.loads(body.rstrip(RS)) if body else {}
        answer = b""
        if call.get("invocationId"):
            answer = (
                orjson.dumps(
                    {
                        "type": 3,
                        "invocationId": call["invocationId"],
                        "result": call["arguments"][0],
                    }
                )
                + RS
            )
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- load


async def client(url: str, user: str) -> websockets.ClientConnection:
    token = mint_token(ACCESS_KEY, "http://bench/client", user_id=user)
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{url}/hubs/chat/negotiate?negotiateVersion=1",
            headers={"Authorization": f"Bearer {token}"},
        )
        r.raise_for_status()
        conn_token = r.json()["connectionToken"]
    ws_url = url.replace("http://", "ws://") + f"/hubs/chat?id={conn_token}&access_token={token}"
    ws = await websockets.connect(ws_url, max_size=None, ping_interval=None)
    await ws.send('{"protocol":"json","version":1}\x1e')
    await ws.recv()
    return ws


async def socketio_client(url: str) -> websockets.ClientConnection:
    """A raw Engine.IO v4 / Socket.IO v5 connection (the peer's own protocol)."""
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = await websockets.connect(ws_url, max_size=None, ping_interval=None)
    opened = await ws.recv()
    assert str(opened).startswith("0"), opened
    await ws.send("40")
    while not str(await ws.recv()).startswith("40"):
        pass
    return ws


async def load(
    sockets: list[websockets.ClientConnection], rate: float, seconds: float, peer: bool = False
) -> tuple[list[float], int]:
    """Invoke ``echo`` open-loop (the peer: emit ``echo`` with an ack); the round trips
    (seconds) and the calls that failed or got no answer."""
    if peer:
        return await load_peer(sockets, rate, seconds)
    sent: dict[tuple[int, str], float] = {}
    rtts: list[float] = []
    errors = 0
    total = int(rate * seconds)
    done = asyncio.Event()

    async def read(n: int, ws: websockets.ClientConnection) -> None:
        nonlocal errors
        async for frame in ws:
            data = frame.encode() if isinstance(frame, str) else frame
            for record in data.split(RS):
                if not record:
                    continue
                message = orjson.loads(record)
                if message.get("type") != 3:
                    continue
                started = sent.pop((n, message["invocationId"]), None)
                if started is None:
                    continue
                if "error" in message:
                    errors += 1
                else:
                    rtts.append(time.perf_counter() - started)
                if len(rtts) + errors >= total:
                    done.set()

    readers = [asyncio.create_task(read(n, ws)) for n, ws in enumerate(sockets)]
    start = time.perf_counter()
    for k in range(total):
        due = start + k / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n = k % len(sockets)
        call = str(k)
        sent[(n, call)] = time.perf_counter()
        await sockets[n].send(
            orjson.dumps({"type": 1, "invocationId": call, "target": "echo", "arguments": [k]})
            .decode() + "\x1e"
        )  # fmt: skip
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 30)
    for task in readers:
        task.cancel()
    return rtts, errors + len(sent)


async def load_peer(
    sockets: list[websockets.ClientConnection], rate: float, seconds: float
) -> tuple[list[float], int]:
    sent: dict[tuple[int, int], float] = {}
    rtts: list[float] = []
    total = int(rate * seconds)
    done = asyncio.Event()

    async def read(n: int, ws: websockets.ClientConnection) -> None:
        async for frame in ws:
            text = frame if isinstance(frame, str) else frame.decode()
            if text == "2":  # Engine.IO ping
                await ws.send("3")
                continue
            if not text.startswith("43"):
                continue
            ack = int(text[2 : text.index("[")])
            started = sent.pop((n, ack), None)
            if started is not None:
                rtts.append(time.perf_counter() - started)
                if len(rtts) >= total:
                    done.set()

    readers = [asyncio.create_task(read(n, ws)) for n, ws in enumerate(sockets)]
    start = time.perf_counter()
    for k in range(total):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n = k % len(sockets)
        sent[(n, k)] = time.perf_counter()
        await sockets[n].send(f'42{k}["echo",{k}]')
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 30)
    for task in readers:
        task.cancel()
    return rtts, len(sent)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    path: str, rate: float, seconds: float, clients: int, workdir: Path
) -> dict[str, Any]:
    if path == "socketio":
        return await measure_peer(rate, seconds, clients, workdir)
    (workdir / f"redis-{path}").mkdir()
    redis = RedisProcess(directory=str(workdir / f"redis-{path}"))
    redis.start()
    children: list[ChildProcess] = []
    env_extra: dict[str, str] = {"HUBBUB_LOG_LEVEL": "WARNING", "HUBBUB_METRICS_PORT": "0"}
    webhook_port = free_port()
    if path == "http":
        env_extra["HUBBUB_UPSTREAM_URL"] = f"http://127.0.0.1:{webhook_port}/upstream"
    deployment = LocalDeployment(
        redis.url, ACCESS_KEY, workdir=workdir, settings=env_extra, profile=PROFILE
    )
    try:
        gateway = await deployment.start_gateway()
        worker = deployment.start_worker()
        service_argv = [sys.executable, "-m", "bench.upstream"]
        if path == "sdk":
            service_argv.append("--serve-sdk")
        else:
            service_argv += ["--serve-webhook", str(webhook_port)]
        service = start_process(
            f"service-{path}",
            service_argv,
            env=deployment.environment(),
            log=workdir / f"service-{path}.log",
        )
        children.append(service)
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                health = (await http.get(f"{gateway.url}/api/health")).json()
                if health["upstreamServices"]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("no upstream service became live")
        sockets = [await client(gateway.url, f"user{n}") for n in range(clients)]
        await load(sockets, rate, 2)  # warm up (and the webhook's connection pool)
        pids = {"gateway": gateway.pid, "worker": worker.pid, "service": service.pid,
                "redis": redis.process.pid if redis.process else 0}  # fmt: skip
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        rtts, failed = await load(sockets, rate, seconds)
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for ws in sockets:
            await ws.close()
        answered = max(1, len(rtts))
        cpu = {name: (after[name] - before[name]) / answered * 1e6 for name in pids}
        return {
            "path": path,
            "rate": rate,
            "answered": len(rtts),
            "failed": failed,
            "p50_ms": statistics.median(rtts) * 1000 if rtts else None,
            "p99_ms": quantile(rtts, 0.99) * 1000 if rtts else None,
            "cpu_us": cpu,
        }
    finally:
        for child in children:
            child.stop()
        deployment.stop()
        redis.stop()


async def measure_peer(rate: float, seconds: float, clients: int, workdir: Path) -> dict[str, Any]:
    """python-socketio: an event with an ack, handled inside the server process (one server,
    with its Redis manager, as the peer runs in bench/run)."""
    (workdir / "redis-socketio").mkdir()
    redis = RedisProcess(directory=str(workdir / "redis-socketio"))
    redis.start()
    port = free_port()
    server = start_process(
        "socketio",
        [sys.executable, str(Path(__file__).parent / "peer_socketio.py"), "--port", str(port),
         "--redis-url", redis.url],
        env=dict(os.environ),
        log=workdir / "socketio.log",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{url}/bench/connected")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        sockets = [await socketio_client(url) for _ in range(clients)]
        await load(sockets, rate, 2, peer=True)
        pids = {"gateway": server.pid, "worker": 0, "service": 0,
                "redis": redis.process.pid if redis.process else 0}  # fmt: skip
        before = {name: cpu_seconds(pid) if pid else 0.0 for name, pid in pids.items()}
        rtts, failed = await load(sockets, rate, seconds, peer=True)
        after = {name: cpu_seconds(pid) if pid else 0.0 for name, pid in pids.items()}
        for ws in sockets:
            await ws.close()
        answered = max(1, len(rtts))
        return {
            "path": "socketio (peer)",
            "rate": rate,
            "answered": len(rtts),
            "failed": failed,
            "p50_ms": statistics.median(rtts) * 1000 if rtts else None,
            "p99_ms": quantile(rtts, 0.99) * 1000 if rtts else None,
            "cpu_us": {n: (after[n] - before[n]) / answered * 1e6 for n in pids},
        }
    finally:
        server.stop()
        redis.stop()


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| path | rate/s | answered | failed | p50 ms | p99 ms | gateway µs | worker µs | "
        "service µs | redis µs | total µs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cpu = r["cpu_us"]
        lines.append(
            f"| {r['path']} | {r['rate']:g} | {r['answered']} | {r['failed']} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {cpu['gateway']:.0f} | {cpu['worker']:.0f} | "
            f"{cpu['service']:.0f} | {cpu['redis']:.0f} | {sum(cpu.values()):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--paths", default="sdk,http,socketio")
    parser.add_argument("--profile", metavar="DIR", help="cProfile the services into DIR")
    parser.add_argument("--serve-sdk", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-webhook", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sdk:
        return serve_sdk()
    if args.serve_webhook:
        return serve_webhook(args.serve_webhook)
    global PROFILE
    PROFILE = bool(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.profile or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = [
            asyncio.run(measure(path, args.rate, args.seconds, args.clients, workdir))
            for path in args.paths.split(",")
        ]
    print(report(results))


if __name__ == "__main__":
    main()
