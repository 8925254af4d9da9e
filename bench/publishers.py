"""Publisher processes: each sends its share of a phase's messages, on schedule, through one
publish path (Hubbub's REST API, Hubbub's publish stream, python-socketio's Redis manager, or
the Node peer's ``@socket.io/redis-emitter`` in a Node child process), and reports what it
published, when, and its own CPU (for the Node peer: the Node process's)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    ACCESS_KEY,
    HUB,
    NODE_PEER_DIR,
    TARGET_METHOD,
    USER_ROOM,
    ClientSpec,
    pipe_recv,
    run_loop,
)
from bench.workloads import WORKLOADS, Workload


class HubbubPublisher:
    """REST sends, round-robin over the gateways, on HTTP/1.1 keep-alive connections written by
    hand, each request carrying a JWT minted once per URL (``aud`` = the URL, valid 60 min): the
    gateway still verifies every one.

    Kept (over an HTTP client library) because of this measurement: W3 via REST, 200 clients,
    200 msg/s for 5 s, 2 publisher processes with 8 requests in flight each, the same JWT reuse
    in every variant, two runs each taking turns; publisher CPU per published message:

    - this class: 346-387 µs (0.07 cores at 200 msg/s), publish call p50 1.0-1.1 ms;
    - ``httpx.AsyncClient`` 0.28.1 (one per process, keep-alive pool): 1,785-1,982 µs
      (0.38 cores), p50 2.6-3.1 ms;
    - ``aiohttp.ClientSession`` 3.14.5: 854-1,119 µs (0.2 cores), p50 1.3-1.4 ms.

    The gateways and workers spent about 1,300 µs per message in those runs, so with httpx the
    publishers would take more of the 2-core machine than the system they load, and a REST ramp
    (hundreds of msg/s) would measure the publishers.
    ``hubbub.sdk.client.HubbubClient`` (httpx, and a JWT signed per request) measured ~2 ms per
    request before."""

    def __init__(self, config: dict[str, Any]) -> None:
        from urllib.parse import urlsplit

        import orjson

        self.dumps = orjson.dumps
        self.gateways = [
            (urlsplit(u).hostname or "", urlsplit(u).port or 80) for u in config["urls"]
        ]
        # Per gateway, idle connections with the time each was last used: uvicorn closes one
        # idle for 5 s (timeout_keep_alive), so one idle for over 2 s is closed here first.
        self.idle: list[list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = [
            [] for _ in self.gateways
        ]
        self.heads: dict[tuple[int, str, str], bytes] = {}

    def _head(self, g: int, kind: str, name: str) -> bytes:
        """The request line and headers but Content-Length, per gateway and recipient."""
        key = (g, kind, name)
        head = self.heads.get(key)
        if head is None:
            from urllib.parse import quote

            from hubbub.tokens import mint_token

            host, port = self.gateways[g]
            path = f"/api/hubs/{HUB}"
            if kind == "group":
                path += f"/groups/{quote(name, safe='')}"
            elif kind == "user":
                path += f"/users/{quote(name, safe='')}"
            elif kind != "all":
                raise ValueError(kind)
            path += "/:send"
            token = mint_token(ACCESS_KEY, f"http://{host}:{port}{path}", minutes=60)
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}"
                "\r\nContent-Type: application/json\r\nContent-Length: "
            ).encode()
            self.heads[key] = head
        return head

    async def publish(self, n: int, recipient: tuple[str, str], payload: dict[str, Any]) -> None:
        """Send one message through gateway ``n % gateways``; raises on any non-2xx."""
        g = n % len(self.gateways)
        body = self.dumps({"target": TARGET_METHOD, "arguments": [payload]})
        request = b"%s%d\r\n\r\n%s" % (self._head(g, *recipient), len(body), body)
        idle = self.idle[g]
        now = time.monotonic()
        while idle and now - idle[0][2] > 2.0:  # the oldest first
            idle.pop(0)[1].close()
        if idle:
            reader, writer, _ = idle.pop()
        else:
            reader, writer = await asyncio.open_connection(*self.gateways[g])
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
                elif name == b"transfer-encoding":
                    raise RuntimeError("chunked responses are not handled")
            answer = await reader.readexactly(length) if length else b""
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            idle.append((reader, writer, time.monotonic()))
        if status // 100 != 2:
            raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")

    async def aclose(self) -> None:
        for idle in self.idle:
            for _, writer, _ in idle:
                writer.close()
            idle.clear()


class HubbubDirectPublisher:
    """``--hubbub-publish direct``: ``hubbub.sdk.publisher.Publisher`` appends each message straight
    to the publish stream (one XADD; no HTTP request, no JWT), as an internal Python service
    would; the apples-to-apples counterpart of the peer's write-only ``AsyncRedisManager``."""

    def __init__(self, config: dict[str, Any]) -> None:
        from hubbub.sdk.publisher import Publisher
        from hubbub.settings import Settings

        # The cluster's settings (HUBBUB_REDIS_MODE, ...) as the gateways get them, by name.
        redis = {
            k.removeprefix("HUBBUB_").lower(): v for k, v in config.get("redis_env", {}).items()
        }
        settings = Settings.model_validate(
            {"redis_url": config["redis_url"], "key_prefix": config["key_prefix"], **redis}
        )
        self.publisher = Publisher.from_settings(settings, HUB)

    async def publish(self, n: int, recipient: tuple[str, str], payload: dict[str, Any]) -> None:
        kind, name = recipient
        if kind == "all":
            await self.publisher.send_to_all(TARGET_METHOD, [payload])
        elif kind == "group":
            await self.publisher.send_to_group(name, TARGET_METHOD, [payload])
        elif kind == "user":
            await self.publisher.send_to_user(name, TARGET_METHOD, [payload])
        else:
            raise ValueError(kind)

    async def aclose(self) -> None:
        await self.publisher.__aexit__()


class SocketIOPublisher:
    """A write-only ``AsyncRedisManager``, as python-socketio documents for external emitters."""

    def __init__(self, config: dict[str, Any]) -> None:
        import socketio

        self.manager = socketio.AsyncRedisManager(config["redis_url"], write_only=True)

    async def publish(self, n: int, recipient: tuple[str, str], payload: dict[str, Any]) -> None:
        kind, name = recipient
        if kind == "all":
            room = None
        elif kind == "group":
            room = name
        elif kind == "user":
            room = USER_ROOM + name
        else:
            raise ValueError(kind)
        await self.manager.emit(TARGET_METHOD, payload, namespace="/", room=room)

    async def aclose(self) -> None:
        redis = getattr(self.manager, "redis", None)
        if redis is not None:
            await redis.aclose()


class NodePublisher:
    """The Node peer's publisher: ``@socket.io/redis-emitter`` in a Node child process
    (``bench/peer_node/publisher.js``), as a Node service would publish to Socket.IO servers.

    Publishing from Node measures the emitter itself, not a Python imitation of it. This
    process draws the recipients (the same workload and seed as the other publishers) and hands
    the child its whole share of a phase before the phase starts; the child runs the same
    schedule (message ``k`` due at ``start + k / rate``), stamps ``t`` with the wall clock just
    before each emit, and reports its own CPU over the share, so the publisher CPU is the
    emitter's and this process only waits meanwhile (publisher.js says the line protocol)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.redis_url: str = config["redis_url"]
        self.child: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        from bench.targets import node_binary

        self.child = await asyncio.create_subprocess_exec(
            node_binary(),
            str(NODE_PEER_DIR / "publisher.js"),
            "--redis-url",
            self.redis_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,  # a share's answer holds every publish call's time
        )
        if json.loads(await self._readline(60)) != {"ready": True}:
            raise RuntimeError("publisher.js did not start")

    async def _readline(self, within: float) -> bytes:
        assert self.child is not None and self.child.stdout is not None
        line = await asyncio.wait_for(self.child.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"publisher.js exited ({await self.child.wait()})")
        return line

    async def publish_share(
        self,
        workload: Workload,
        *,
        rate: float,
        seconds: float,
        seq_base: int,
        start_at: float,
        index: int,
        procs: int,
        pad: int,
    ) -> dict[str, Any]:
        """:func:`publish_share`'s counterpart, with the same answer."""
        assert self.child is not None and self.child.stdin is not None
        total = max(1, int(rate * seconds))
        messages: list[list[Any]] = []
        expected: dict[int, int] = {}
        for k in range(index, total, procs):
            (kind, name), check, n = workload.next()
            room = {"all": None, "group": name, "user": USER_ROOM + name}[kind]
            key, value = next(iter(check.items()), (None, None))
            messages.append([k, room, seq_base + k, key, value])
            expected[k] = n
        body = {"cmd": "publish", "start_at": start_at, "rate": rate, "pad": pad,
                "messages": messages}  # fmt: skip
        self.child.stdin.write(json.dumps(body).encode() + b"\n")
        await self.child.stdin.drain()
        answer: dict[str, Any] = json.loads(await self._readline(seconds * 4 + 120))
        failed = set(answer.pop("failed_ks"))
        answer["expected"] = sum(n for k, n in expected.items() if k not in failed)
        answer["request_latencies"] = array.array("d", answer["request_latencies"]).tobytes()
        return answer

    async def aclose(self) -> None:
        if self.child is None or self.child.returncode is not None:
            return
        assert self.child.stdin is not None
        with contextlib.suppress(Exception):
            self.child.stdin.write(b'{"cmd": "stop"}\n')
            self.child.stdin.close()
        try:
            await asyncio.wait_for(self.child.wait(), 5)
        except TimeoutError:
            self.child.kill()
            await self.child.wait()


AnyPublisher = HubbubPublisher | HubbubDirectPublisher | SocketIOPublisher
PUBLISHERS: dict[str, Callable[[dict[str, Any]], AnyPublisher | NodePublisher]] = {
    "hubbub-rest": HubbubPublisher,
    "hubbub-direct": HubbubDirectPublisher,
    "socketio": SocketIOPublisher,
    "node": NodePublisher,
}
PUBLISH_PATHS = {  # how each publisher process reaches its system, for the report
    "hubbub-rest": "REST API",
    "hubbub-direct": "direct to stream",
    "socketio": "AsyncRedisManager",
    "node": "redis-emitter",
}


@dataclass
class PublishResult:
    published: int = 0
    failed: int = 0
    expected: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    request_latencies: list[float] = field(default_factory=list)
    started: float = 0.0  # time.time() of the first publish
    duration: float = 0.0
    max_lag: float = 0.0  # how far behind schedule the publishers got
    cpu_seconds: list[float] = field(default_factory=list)


async def publish_share(
    publisher: AnyPublisher,
    workload: Workload,
    *,
    rate: float,
    seconds: float,
    seq_base: int,
    start_at: float,
    index: int,
    procs: int,
    concurrency: int,
    pad: int,
) -> dict[str, Any]:
    """This process's share of one phase: messages ``k = index, index + procs, ...`` of
    ``rate * seconds``, message ``k`` due at ``start_at + k / rate`` (wall clock, shared by the
    publisher processes), at most ``concurrency`` in flight."""
    total = max(1, int(rate * seconds))
    limit = asyncio.Semaphore(concurrency)
    padding = "x" * pad
    result: dict[str, Any] = {"published": 0, "failed": 0, "expected": 0, "errors": {},
                              "max_lag": 0.0, "started": 0.0}  # fmt: skip
    request_latencies = array.array("d")

    async def one(k: int) -> None:
        try:
            recipient, check, expected = workload.next()
            payload: dict[str, Any] = {"s": seq_base + k, **check, "p": padding}
            sent = time.time()
            payload["t"] = sent
            try:
                await publisher.publish(k, recipient, payload)
            except Exception as exc:
                result["failed"] += 1
                key = repr(exc)[:160]
                result["errors"][key] = result["errors"].get(key, 0) + 1
                return
            request_latencies.append(time.time() - sent)
            result["published"] += 1
            result["expected"] += expected
        finally:
            limit.release()

    cpu_start = time.process_time()
    tasks: list[asyncio.Task[None]] = []
    for k in range(index, total, procs):
        due = start_at + k / rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await limit.acquire()
        if not tasks:
            result["started"] = time.time()
        result["max_lag"] = max(result["max_lag"], time.time() - due)
        tasks.append(asyncio.create_task(one(k)))
    await asyncio.gather(*tasks)
    result["ended"] = time.time()
    result["request_latencies"] = request_latencies.tobytes()
    result["cpu_seconds"] = time.process_time() - cpu_start
    return result


def publisher_process_main(
    conn: multiprocessing.connection.Connection, config: dict[str, Any]
) -> None:
    """Entry point of one publisher process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator handles Ctrl-C
    run_loop(_publisher_process(conn, config))


async def _publisher_process(
    conn: multiprocessing.connection.Connection, config: dict[str, Any]
) -> None:
    loop = asyncio.get_running_loop()
    publisher = PUBLISHERS[config["kind"]](config)
    specs: list[ClientSpec] = []
    connected: dict[int, str] = {}
    try:
        if isinstance(publisher, NodePublisher):
            await publisher.start()
        conn.send("ready")
        while True:
            command, body = await loop.run_in_executor(None, conn.recv)
            if command == "setup":
                specs = [ClientSpec(**s) for s in body["specs"]]
                connected = body["connected"]
            elif command == "publish":
                workload = WORKLOADS[body["workload"]](specs, connected, body["seed"])
                share = {"rate": body["rate"], "seconds": body["seconds"],
                         "seq_base": body["seq_base"], "start_at": body["start_at"],
                         "index": config["index"], "procs": config["procs"],
                         "pad": body["pad"]}  # fmt: skip
                if isinstance(publisher, NodePublisher):
                    conn.send(await publisher.publish_share(workload, **share))
                else:
                    conn.send(
                        await publish_share(
                            publisher, workload, concurrency=config["concurrency"], **share
                        )
                    )
            elif command == "stop":
                break
    finally:
        with contextlib.suppress(Exception):
            await publisher.aclose()


class PublisherPool:
    """The publisher processes and the pipe to each."""

    def __init__(self, procs: int) -> None:
        self.n = procs
        self.kind = ""  # the publishers' config kind, e.g. hubbub-direct
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[multiprocessing.connection.Connection] = []

    def start(self, config: dict[str, Any], concurrency: int) -> None:
        self.kind = config["kind"]
        context = multiprocessing.get_context("spawn")
        for p in range(self.n):
            parent, child = context.Pipe()
            cfg = dict(config, index=p, procs=self.n, concurrency=concurrency)
            process = context.Process(
                target=publisher_process_main, args=(child, cfg), name=f"publisher{p}", daemon=True
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)

    async def ready(self) -> None:
        for answer in await asyncio.gather(*(pipe_recv(p, 60) for p in self.pipes)):
            if answer != "ready":
                raise RuntimeError(f"publisher did not start: {answer!r}")

    def setup(self, specs: list[ClientSpec], connected: dict[int, str]) -> None:
        body = {"specs": [s.__dict__ for s in specs], "connected": connected}
        for pipe in self.pipes:
            pipe.send(("setup", body))

    def send_publish(self, body: dict[str, Any]) -> None:
        for pipe in self.pipes:
            pipe.send(("publish", body))

    async def results(self, within: float) -> PublishResult:
        answers = await asyncio.gather(*(pipe_recv(p, within) for p in self.pipes))
        merged = PublishResult()
        for a in answers:
            merged.published += a["published"]
            merged.failed += a["failed"]
            merged.expected += a["expected"]
            for key, n in a["errors"].items():
                merged.errors[key] = merged.errors.get(key, 0) + n
            samples = array.array("d")
            samples.frombytes(a["request_latencies"])
            merged.request_latencies.extend(samples)
            merged.max_lag = max(merged.max_lag, a["max_lag"])
            merged.cpu_seconds.append(a["cpu_seconds"])
        starts = [a["started"] for a in answers if a["started"]]
        merged.started = min(starts) if starts else time.time()
        merged.duration = max(a["ended"] for a in answers) - merged.started
        return merged

    def terminate(self) -> None:
        """Idempotent; also the Ctrl-C path."""
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("stop", None))
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
