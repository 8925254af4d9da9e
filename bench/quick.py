"""Hubbub benchmark, optionally side by side with python-socketio in the same run.

    bench/run                                     # everything, both systems, into bench/RESULTS.md
    .venv/bin/python bench/quick.py --compare --all [--idle 3000] [--results bench/RESULTS.md]
    .venv/bin/python bench/quick.py --workload broadcast --rate 50 --seconds 10   # Hubbub only

What runs (every piece a separate OS process), for each system; both systems are up at once,
and each phase runs on one system then on the other (alternating which goes first), so that
the machine's other load weighs on both alike:

- **hubbub**: one ``redis-server`` (:class:`hubbub.dev.embedded.RedisProcess`), two gateways
  (``python -m hubbub_gateway.main``) and two fan-out workers. ``--hubbub-publish`` says how
  messages are published: ``direct`` (the default with ``--compare``) appends them straight to
  the publish stream with ``hubbub.sdk.publisher.Publisher``, the counterpart of the peer's
  write-only ``AsyncRedisManager``; ``rest`` (the default otherwise) sends them through the REST
  API, spread over both gateways. With ``--all`` and ``direct``, one extra short phase,
  **W3 via REST**,
  repeats W3 for Hubbub alone through the REST API, so the REST ingest cost stays visible.
- **socketio** (the peer): its own ``redis-server`` (the same binary), two uvicorn processes
  serving ``socketio.ASGIApp(socketio.AsyncServer(client_manager=AsyncRedisManager))``
  (``bench/peer_socketio.py``); messages are injected by a write-only
  ``AsyncRedisManager(url, write_only=True)`` emitting to all, to a room, or to a per-user room.
- ``--client-procs`` load-client processes, each holding its share of raw WebSocket connections
  (the ``websockets`` library, no polling), spread evenly over both server processes. For Hubbub
  they speak SignalR JSON; for python-socketio raw Engine.IO v4 / Socket.IO v5 (``0{...}`` →
  ``40``, pings ``2`` → ``3``, messages ``42["newMessage",payload]``).
- ``--publisher-procs`` publisher processes, which share each publish schedule (message ``k``
  of a phase is due at ``start + k / rate`` and sent by process ``k % procs``), each with a few
  requests in flight, so that one process is not the bottleneck.

Workloads, each a *phase* on the same connections (200 by default): **W1** ``broadcast`` (to
every client), **W2** ``groups`` (to one group of 10; Hubbub joins them through the REST API,
python-socketio server side on connect from the query string), **W3** ``users`` (to one user,
i.e. a per-user room). **Ramp** (``--ramp``): for W1, the highest publish rate with zero loss and
p99 < 100 ms, found by doubling then bisecting over short steps; then W1 again at 10 % of
Hubbub's sustainable rate, for the latency target. **W4** ``--idle N``: a fresh start of each
system, N idle connections, and the servers' RSS growth per connection.

Every message carries its publish time (``time.time()``, taken just before the publish call) and
a sequence number; each client takes ``receive time - publish time`` for *every* message it gets,
and checks it got no duplicate and nothing meant for someone else. Messages of an earlier phase
that arrive late are counted apart (and the next phase starts only once they stopped coming).

**Server CPU per delivery** = user+system CPU (``/proc/<pid>/stat``) of every server-side process
(Hubbub: gateways, workers, redis-server; python-socketio: the uvicorn processes and
redis-server), from the first publish until every expected delivery arrived (or the drain
timeout), divided by the deliveries received. The load clients' and publishers' CPU is reported
too: when a client process is near 1.0 CPU-s per second, it (not the server) is the bottleneck and
the latency figures mostly measure it. So is the CPU the rest of the machine used meanwhile: on a
shared machine other jobs skew every figure, which is why the two systems run in the same
invocation and the report gives the ratio Hubbub/peer for every figure.

Other figures: the latency of each message's *first* recipient (the pipeline without the fan-out
burst), the servers' idle CPU with the clients connected, connections still registered after
their clients closed (leaks), warnings and errors in the server logs (kept in a temp dir when
there are any).
"""

from __future__ import annotations

import abc
import argparse
import array
import asyncio
import contextlib
import importlib.metadata
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

T = TypeVar("T")
HUB = "chat"
TARGET_METHOD = "newMessage"
RS = b"\x1e"
GROUP_SIZE = 10
CLIENT_PING_INTERVAL = 10.0  # the gateway closes clients it has not heard from for 30 s
ACCESS_KEY = "bench-access-key-0123456789abcdef0123456789"
USER_ROOM = "user:"  # python-socketio: the per-user room (bench/peer_socketio.py joins it)
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ====================================================================== server-side CPU, memory


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return 0.0
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS), in bytes; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle/iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# ====================================================================== targets


@dataclass
class ServerProc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {timeout}s: killing it")
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn(workdir: Path, name: str, argv: list[str], env: dict[str, str], port: int | None,
          profile: bool = False) -> ServerProc:  # fmt: skip
    logfile = workdir / f"{name}.log"
    if profile:  # argv is [python, -m, module, ...] or [python, script, ...]
        argv = [argv[0], "-m", "cProfile", "-o", str(logfile.with_suffix(".prof")), *argv[1:]]
    with logfile.open("ab") as handle:
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C reaches only the orchestrator, which stops them in order.
            start_new_session=True,
        )
    return ServerProc(name, process, logfile, port)


async def wait_http_ok(proc: ServerProc, path: str, within: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + within
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{proc.url}{path}", timeout=1)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{proc.name} not ready after {within}s")


class Target(abc.ABC):
    """What the benchmark needs of a system: start/stop its server side, name the server PIDs
    (for CPU) and the gateway PIDs (for memory), say where clients connect and how publisher
    processes reach it, put clients in groups, and count connections left after close."""

    name = ""
    label = ""
    protocol = ""  # the load clients' protocol: "signalr" or "socketio"

    def __init__(self, workdir: Path, gateways: int = 2, workers: int = 2,
                 profile: bool = False) -> None:  # fmt: skip
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.n_gateways = gateways
        self.n_workers = workers
        self.redis: Any = None
        self.gateways: list[ServerProc] = []
        self.workers: list[ServerProc] = []

    def _start_redis(self) -> None:
        from hubbub.dev.embedded import RedisProcess

        self.redis = RedisProcess(directory=str(self.workdir / "redis"))
        os.makedirs(self.redis.directory, exist_ok=True)
        self.redis.start()

    @abc.abstractmethod
    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.stop_processes()

    def stop_processes(self) -> None:
        """Synchronous, idempotent: also used from the Ctrl-C / atexit path."""
        procs = self.gateways + self.workers
        for proc in procs:  # SIGTERM all first, so they drain in parallel
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()
        if self.redis is not None:
            self.redis.stop()

    def server_pids(self) -> dict[str, int]:
        pids = {p.name: p.process.pid for p in self.gateways + self.workers}
        if self.redis is not None and self.redis.process is not None:
            pids["redis"] = self.redis.process.pid
        return pids

    def gateway_pids(self) -> dict[str, int]:
        return {p.name: p.process.pid for p in self.gateways}

    def client_endpoints(self) -> list[str]:
        return [gw.url for gw in self.gateways]

    def log_files(self) -> list[Path]:
        files = [p.log for p in self.gateways + self.workers]
        if self.redis is not None:
            files.append(Path(self.redis.directory) / "server.log")
        return files

    @abc.abstractmethod
    def publisher_config(self, mode: str | None = None) -> dict[str, Any]: ...

    async def prepare_groups(  # an optional hook: only Hubbub joins groups by REST
        self, specs: list[ClientSpec], connected: dict[int, str]
    ) -> None:
        return None

    async def stale(self, connection_ids: list[str], grace: float = 3.0) -> int | None:
        return None


class HubbubTarget(Target):
    """Redis + N gateways + M fan-out workers, as real processes."""

    name = "hubbub"
    label = "Hubbub"
    protocol = "signalr"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rest: list[Any] = []  # one HubbubClient per gateway
        self.publish_mode = "rest"  # or "direct" (--hubbub-publish)

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HUBBUB_REDIS_URL=self.redis.url,
            HUBBUB_ACCESS_KEY=ACCESS_KEY,
            HUBBUB_LOG_LEVEL="WARNING",
            HUBBUB_METRICS_PORT="0",  # workers: no /metrics listener (two would share a port)
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    async def start(self) -> None:
        from hubbub.dev.embedded import free_port
        from hubbub.sdk.client import HubbubClient

        self._start_redis()
        for n in range(1, self.n_gateways + 1):
            port = free_port()
            env = self._env(HUBBUB_PORT=str(port), HUBBUB_GATEWAY_ID=f"bench-gw{n}")
            argv = [sys.executable, "-m", "hubbub_gateway.main"]
            self.gateways.append(spawn(self.workdir, f"gw{n}", argv, env, port, self.profile))
        for n in range(1, self.n_workers + 1):
            env = self._env(HUBBUB_WORKER_NAME=f"bench-worker{n}")
            argv = [sys.executable, "-m", "hubbub_fanout.main"]
            self.workers.append(spawn(self.workdir, f"worker{n}", argv, env, None, self.profile))
        await asyncio.gather(*(wait_http_ok(gw, "/api/health") for gw in self.gateways))
        await asyncio.sleep(0.5)
        for proc in self.workers:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log.read_text(errors='replace')}")
        self.rest = [HubbubClient(gw.url, ACCESS_KEY, HUB, timeout=30.0) for gw in self.gateways]

    async def stop(self) -> None:
        for client in self.rest:
            with contextlib.suppress(Exception):
                await client.aclose()
        self.rest = []
        self.stop_processes()

    def publisher_config(self, mode: str | None = None) -> dict[str, Any]:
        mode = mode or self.publish_mode
        if mode == "direct":  # the gateways run with the default key prefix (hubbub)
            return {"kind": "hubbub-direct", "redis_url": self.redis.url, "key_prefix": "hubbub"}
        return {"kind": "hubbub-rest", "urls": self.client_endpoints()}

    async def prepare_groups(self, specs: list[ClientSpec], connected: dict[int, str]) -> None:
        """Every connected client joins its group (REST), before the first phase."""
        limit = asyncio.Semaphore(32)

        async def join(n: int, spec: ClientSpec) -> None:
            async with limit:
                await self.rest[n % len(self.rest)].add_connection_to_group(
                    spec.group, connected[spec.index]
                )

        members = [s for s in specs if s.group and s.index in connected]
        await asyncio.gather(*(join(n, s) for n, s in enumerate(members)))

    async def stale(self, connection_ids: list[str], grace: float = 3.0) -> int | None:
        """Connections the server still lists after their clients closed them (leaks)."""
        remaining = connection_ids
        deadline = time.monotonic() + grace
        limit = asyncio.Semaphore(32)

        async def registered(n: int, connection_id: str) -> bool:
            async with limit:
                found: bool = await self.rest[n % len(self.rest)].connection_exists(connection_id)
                return found

        while remaining:
            found = await asyncio.gather(*(registered(n, c) for n, c in enumerate(remaining)))
            remaining = [c for c, f in zip(remaining, found, strict=True) if f]
            if not remaining or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        return len(remaining)


class SocketIOTarget(Target):
    """The peer: its own Redis + N uvicorn processes running python-socketio (no workers)."""

    name = "socketio"
    label = "python-socketio"
    protocol = "socketio"

    async def start(self) -> None:
        from hubbub.dev.embedded import free_port

        self._start_redis()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for n in range(1, self.n_gateways + 1):
            port = free_port()
            argv = [sys.executable, str(BENCH_DIR / "peer_socketio.py"), "--port", str(port),
                    "--redis-url", self.redis.url]  # fmt: skip
            self.gateways.append(spawn(self.workdir, f"sio{n}", argv, env, port, self.profile))
        await asyncio.gather(*(wait_http_ok(gw, "/bench/connected") for gw in self.gateways))
        await asyncio.sleep(0.5)  # let each subscribe to the Redis channel

    def publisher_config(self, mode: str | None = None) -> dict[str, Any]:
        return {"kind": "socketio", "redis_url": self.redis.url}

    async def stale(self, connection_ids: list[str], grace: float = 3.0) -> int | None:
        """Clients the server processes still hold after they closed (``/bench/connected``)."""
        import httpx

        deadline = time.monotonic() + grace
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                answers = await asyncio.gather(
                    *(http.get(f"{gw.url}/bench/connected") for gw in self.gateways)
                )
                left = sum(int(a.json()["connected"]) for a in answers)
                if not left or time.monotonic() > deadline:
                    return left
                await asyncio.sleep(0.5)


TARGETS: dict[str, type[Target]] = {"hubbub": HubbubTarget, "socketio": SocketIOTarget}


# ====================================================================== publishers


class HubbubPublisher:
    """REST sends, round-robin over the gateways, on HTTP/1.1 keep-alive connections written by
    hand, each request carrying a JWT minted once per URL (``aud`` = the URL, valid 60 min): the
    gateway still verifies every one. ``hubbub.sdk.client.HubbubClient`` (httpx, a JWT signed per
    request) costs the publisher ~2 ms of CPU per request, which on a 2-core machine takes CPU
    from the system under test; this costs a fraction of that."""

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

        settings = Settings(redis_url=config["redis_url"], key_prefix=config["key_prefix"])
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


AnyPublisher = HubbubPublisher | HubbubDirectPublisher | SocketIOPublisher
PUBLISHERS: dict[str, Callable[[dict[str, Any]], AnyPublisher]] = {
    "hubbub-rest": HubbubPublisher,
    "hubbub-direct": HubbubDirectPublisher,
    "socketio": SocketIOPublisher,
}
PUBLISH_PATHS = {  # how each publisher process reaches its system, for the report
    "hubbub-rest": "REST API",
    "hubbub-direct": "direct to stream",
    "socketio": "AsyncRedisManager",
}


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
    tasks = []
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
    conn.send("ready")
    try:
        while True:
            command, body = await loop.run_in_executor(None, conn.recv)
            if command == "setup":
                specs = [ClientSpec(**s) for s in body["specs"]]
                connected = body["connected"]
            elif command == "publish":
                workload = WORKLOADS[body["workload"]](specs, connected, body["seed"])
                conn.send(
                    await publish_share(
                        publisher,
                        workload,
                        rate=body["rate"],
                        seconds=body["seconds"],
                        seq_base=body["seq_base"],
                        start_at=body["start_at"],
                        index=config["index"],
                        procs=config["procs"],
                        concurrency=config["concurrency"],
                        pad=body["pad"],
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


async def pipe_recv(pipe: multiprocessing.connection.Connection, within: float) -> Any:
    loop = asyncio.get_running_loop()

    def wait() -> Any:
        if not pipe.poll(within):
            raise TimeoutError("child process did not answer")
        return pipe.recv()

    return await loop.run_in_executor(None, wait)


# ====================================================================== load clients


@dataclass
class ClientStats:
    """What one load-client process saw in the current phase; shipped to the orchestrator."""

    received: int = 0
    duplicates: int = 0
    misdelivered: int = 0
    other_records: int = 0
    closed_by_server: int = 0
    close_reasons: dict[str, int] = field(default_factory=dict)
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    last_receive: float = 0.0
    first_latency: dict[int, float] = field(default_factory=dict)  # seq -> earliest latency
    late: int = 0  # messages of an earlier phase
    frames: int = 0  # every message ever received (all phases): tells when traffic stopped
    seq_base: int = 0  # the current phase's first sequence number
    generation: int = 0  # bumped per phase: receivers then forget the sequences they saw
    stopping: bool = False  # our own closes at the end are not the server's doing
    negotiate_retries: dict[str, int] = field(default_factory=dict)  # SignalR: why, how often

    def record_close(self, reason: str) -> None:
        self.closed_by_server += 1
        self.close_reasons[reason] = self.close_reasons.get(reason, 0) + 1

    def new_phase(self, seq_base: int) -> None:
        self.received = self.duplicates = self.misdelivered = self.other_records = 0
        self.closed_by_server = self.late = 0
        self.close_reasons = {}
        self.latencies = array.array("d")
        self.last_receive = 0.0
        self.first_latency = {}
        self.seq_base = seq_base
        self.generation += 1


@dataclass
class ClientSpec:
    index: int
    base_url: str
    user: str
    group: str


class Receiver(abc.ABC):
    """One load client's counting of the messages it gets (protocol-independent part).

    Latency is sampled on every message (receive time - the publish time it carries); a repeated
    sequence number is a duplicate, a message for another group or user a misdelivery.
    """

    __slots__ = ("closed", "generation", "group", "handshake", "loads", "seen", "send", "stats",
                 "user")  # fmt: skip

    def __init__(self, spec: ClientSpec, stats: ClientStats, handshake: asyncio.Future[Any]):
        import orjson

        self.loads = orjson.loads
        self.stats = stats
        self.group, self.user = spec.group, spec.user
        self.handshake = handshake
        self.seen: set[int] = set()
        self.generation = stats.generation
        self.closed = False
        self.send: Callable[[str], None] = lambda text: None  # set by the opener

    def deliver(self, payload: dict[str, Any], now: float) -> None:
        stats = self.stats
        stats.frames += 1
        if self.generation != stats.generation:
            self.seen.clear()
            self.generation = stats.generation
        seq = payload["s"]
        if seq < stats.seq_base:
            stats.late += 1
            return
        if seq in self.seen:
            stats.duplicates += 1
            return
        self.seen.add(seq)
        stats.received += 1
        latency = now - payload["t"]
        stats.latencies.append(latency)
        if latency < stats.first_latency.get(seq, 1e9):
            stats.first_latency[seq] = latency
        stats.last_receive = now
        group, user = payload.get("g"), payload.get("u")
        if (group is not None and group != self.group) or (user is not None and user != self.user):
            stats.misdelivered += 1

    @abc.abstractmethod
    def feed(self, data: bytes, now: float) -> bool:
        """One WebSocket message; False once the server closed the session."""

    def lost(self, reason: str) -> None:
        """The socket ended (for whatever reason)."""
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(reason))
        elif not self.closed and not self.stats.stopping:
            self.stats.record_close(reason)
        self.closed = True


class SignalRReceiver(Receiver):
    """SignalR JSON: the handshake answer ``{}``, then records; Pings (type 6) are ignored; a
    Close (type 7) is recorded with its error."""

    __slots__ = ()

    def feed(self, data: bytes, now: float) -> bool:
        records = data.split(RS)
        if not self.handshake.done():
            if records[0] != b"{}":
                self.handshake.set_exception(RuntimeError(f"handshake refused: {data[:200]!r}"))
                return False
            self.handshake.set_result(None)
            records = records[1:]
        stats, loads = self.stats, self.loads
        for record in records:
            if not record:
                continue
            message = loads(record)
            kind = message.get("type")
            if kind == 1:
                self.deliver(message["arguments"][0], now)
            elif kind == 6:
                continue
            elif kind == 7:
                self.closed = True
                stats.record_close(str(message.get("error") or "Close record without error"))
                return False
            else:
                stats.other_records += 1
        return True


class SocketIOReceiver(Receiver):
    """Engine.IO v4 / Socket.IO v5 over a WebSocket: ``0{...}`` (open) → send ``40``; ``40{sid}``
    completes the handshake (its result is the Socket.IO sid); ``2`` (ping) → send ``3``;
    ``42["newMessage",payload]`` is a message; ``41`` / ``1`` / ``44`` end the session."""

    __slots__ = ()

    def feed(self, data: bytes, now: float) -> bool:
        if not data:
            return True
        head = data[0]
        stats = self.stats
        if head == 0x34:  # "4": an Engine.IO message, i.e. a Socket.IO packet
            kind = data[1:2]
            if kind == b"2":  # EVENT (namespace "/", no ack id)
                event = self.loads(data[2:])
                if event[0] == TARGET_METHOD:
                    self.deliver(event[1], now)
                else:
                    stats.other_records += 1
            elif kind == b"0":  # CONNECT ack
                if not self.handshake.done():
                    self.handshake.set_result(self.loads(data[2:])["sid"])
            elif kind in (b"1", b"4"):  # DISCONNECT, CONNECT_ERROR
                reason = f"socket.io packet {data[:200]!r}"
                if not self.handshake.done():
                    self.handshake.set_exception(RuntimeError(reason))
                elif not self.closed:
                    stats.record_close(reason)
                self.closed = True
                return False
            else:
                stats.other_records += 1
        elif head == 0x32:  # "2": Engine.IO ping
            self.send("3")
        elif head == 0x30:  # "0": Engine.IO open
            self.send("40")
        elif head == 0x31:  # "1": Engine.IO close
            if self.handshake.done() and not self.closed:
                stats.record_close("engine.io close packet")
            self.closed = True
            return False
        else:
            stats.other_records += 1
        return True


class WebsocketsClient:
    """``--client-impl websockets``: the websockets library's asyncio client, a reader task per
    connection. Simple and obviously right; costs a task wake-up, a future and a message
    assembler per frame."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.extensions = ""
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None
        self.pending: set[asyncio.Task[None]] = set()

    async def open(self, url: str, compression: bool) -> None:
        import websockets

        self.ws = await websockets.connect(
            url,
            max_size=None,
            ping_interval=None,
            compression="deflate" if compression else None,
            open_timeout=60,
        )
        self.extensions = self.ws.response.headers.get("Sec-WebSocket-Extensions", "")
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        import websockets

        recv, feed = self.ws.recv, self.receiver.feed
        try:
            while True:
                if not feed(await recv(decode=False), time.time()):
                    return
        except websockets.ConnectionClosed as exc:
            self.receiver.lost(f"socket closed: {exc}")

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    def send_now(self, text: str) -> None:
        task = asyncio.get_running_loop().create_task(self.send(text))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()


class SansIOClient(asyncio.Protocol):
    """``--client-impl sansio`` (default): the same library's sans-I/O ``ClientProtocol`` (its
    handshake, frame parser, control frames and permessage-deflate) driven straight from an
    asyncio transport callback: no task, future or assembler per frame. About half the client
    CPU per delivery, so the load clients stop being the bottleneck sooner."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.extensions = ""
        self.protocol: Any = None
        self.transport: Any = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.fragments: list[bytes] = []
        self.reading = True

    async def open(self, url: str, compression: bool) -> None:
        from websockets.client import ClientProtocol
        from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        self.protocol = ClientProtocol(
            uri,
            extensions=[ClientPerMessageDeflateFactory()] if compression else None,
            max_size=None,
        )
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, uri.host, uri.port)
        await asyncio.wait_for(asyncio.shield(self.opened), 60)

    # asyncio.Protocol

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self.transport = transport
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode

        protocol = self.protocol
        protocol.receive_data(data)
        now = time.time()
        events = protocol.events_received()
        self._flush()  # pongs, close replies
        for event in events:
            if not isinstance(event, Frame):  # the handshake response
                if protocol.handshake_exc is not None:
                    self.opened.set_exception(protocol.handshake_exc)
                else:
                    self.extensions = event.headers.get("Sec-WebSocket-Extensions", "")
                    self.opened.set_result(None)
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                if not event.fin:
                    self.fragments.append(bytes(event.data))
                    continue
                payload = bytes(event.data)
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments = []
                if self.reading and not self.receiver.feed(payload, now):
                    self.reading = False

    def connection_lost(self, exc: Exception | None) -> None:
        protocol = self.protocol
        protocol.receive_eof()
        reason = f"socket closed: {protocol.close_code} {protocol.close_reason or ''}".strip()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        self.receiver.lost(reason)
        if not self.done.done():
            self.done.set_result(None)

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    # what the load client calls

    def send_now(self, text: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.protocol.send_text(text.encode())
        self._flush()

    async def send(self, text: str) -> None:
        self.send_now(text)

    async def close(self) -> None:
        if self.transport is None or self.done.done():
            return
        with contextlib.suppress(Exception):
            self.protocol.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.done), 5)
        except TimeoutError:
            self.transport.abort()


AnyClient = WebsocketsClient | SansIOClient
CLIENT_IMPLS: dict[str, Callable[[Receiver], AnyClient]] = {
    "websockets": WebsocketsClient,
    "sansio": SansIOClient,
}
HANDSHAKE = '{"protocol":"json","version":1}\x1e'
PING = '{"type":6}\x1e'


async def open_signalr_client(
    spec: ClientSpec, http: Any, stats: ClientStats, impl: str, compression: bool
) -> tuple[str, AnyClient]:
    """Negotiate, open the WebSocket, complete the SignalR handshake; then the receiver counts
    everything that arrives. Returns the connection id and the client."""
    import httpx

    from hubbub.tokens import mint_token

    token = mint_token(ACCESS_KEY, "bench", user_id=spec.user)
    for attempt in range(3):  # a pooled keep-alive connection may close as it is reused
        try:
            response = await http.post(
                f"{spec.base_url}/hubs/{HUB}/negotiate?negotiateVersion=1",
                headers={"Authorization": f"Bearer {token}"},
            )
            break
        except httpx.TransportError as exc:
            stats.negotiate_retries[repr(exc)[:80]] = (
                stats.negotiate_retries.get(repr(exc)[:80], 0) + 1
            )
            if attempt == 2:
                raise
    response.raise_for_status()
    body = response.json()
    ws_url = spec.base_url.replace("http://", "ws://", 1)
    url = f"{ws_url}/hubs/{HUB}?id={body['connectionToken']}&access_token={token}"
    receiver = SignalRReceiver(spec, stats, asyncio.get_running_loop().create_future())
    client = CLIENT_IMPLS[impl](receiver)
    receiver.send = client.send_now
    await client.open(url, compression)
    try:
        await client.send(HANDSHAKE)
        await asyncio.wait_for(asyncio.shield(receiver.handshake), 30)
    except BaseException:
        await client.close()
        raise
    return body["connectionId"], client


async def open_socketio_client(
    spec: ClientSpec, http: Any, stats: ClientStats, impl: str, compression: bool
) -> tuple[str, AnyClient]:
    """Open ``/socket.io/?EIO=4&transport=websocket`` (no polling first) with the rooms to join
    in the query; the receiver answers ``0{...}`` with ``40`` and the handshake completes on
    ``40{"sid": ...}``. Returns the Socket.IO sid and the client."""
    query = {"EIO": "4", "transport": "websocket", "user": spec.user}
    if spec.group:
        query["group"] = spec.group
    url = f"{spec.base_url.replace('http://', 'ws://', 1)}/socket.io/?{urlencode(query)}"
    receiver = SocketIOReceiver(spec, stats, asyncio.get_running_loop().create_future())
    client = CLIENT_IMPLS[impl](receiver)
    receiver.send = client.send_now
    await client.open(url, compression)
    try:
        sid: str = await asyncio.wait_for(asyncio.shield(receiver.handshake), 30)
    except BaseException:
        await client.close()
        raise
    return sid, client


OPENERS = {"signalr": open_signalr_client, "socketio": open_socketio_client}


def client_process_main(
    conn: multiprocessing.connection.Connection, config: dict[str, Any]
) -> None:
    """Entry point of one load-client process (spawned: no inherited event loop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator handles Ctrl-C
    run_loop(_client_process(conn, config))


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed (as the servers use), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _client_process(
    conn: multiprocessing.connection.Connection, config: dict[str, Any]
) -> None:
    import httpx

    loop = asyncio.get_running_loop()
    stats = ClientStats()
    specs = [ClientSpec(**s) for s in config["specs"]]
    clients: dict[int, AnyClient] = {}
    ids: dict[int, str] = {}
    errors: list[str] = []
    limit = asyncio.Semaphore(config["connect_concurrency"])
    opener = OPENERS[config["protocol"]]

    async def open_one(spec: ClientSpec, http: httpx.AsyncClient) -> None:
        async with limit:
            try:
                ids[spec.index], clients[spec.index] = await opener(
                    spec, http, stats, config["client_impl"], config["compression"]
                )
            except Exception as exc:
                errors.append(f"client {spec.index}: {exc!r}")

    async def pinger() -> None:  # SignalR: the client keeps its connection alive
        while True:
            await asyncio.sleep(CLIENT_PING_INTERVAL)
            for client in list(clients.values()):
                with contextlib.suppress(Exception):
                    await client.send(PING)

    # Pings from the first connection on: opening thousands takes longer than the 30 s after
    # which the gateway closes a silent client (W4 once measured 10,000 connections of which
    # 2,000 had been closed so).
    ping_task = loop.create_task(pinger()) if config["protocol"] == "signalr" else None
    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=config["connect_concurrency"])
    ) as http:
        await asyncio.gather(*(open_one(s, http) for s in specs))
    first = next(iter(clients.values()), None)
    conn.send(
        {
            "ready": ids,
            "errors": errors,
            "retries": stats.negotiate_retries,
            "extensions": first.extensions if first else "",
        }
    )

    cpu_start, wall_start = time.process_time(), time.monotonic()
    while True:
        command, arg = await loop.run_in_executor(None, conn.recv)
        if command == "phase":
            stats.new_phase(arg)
            cpu_start, wall_start = time.process_time(), time.monotonic()
        elif command == "count":
            conn.send((stats.received + stats.duplicates, stats.frames))
        elif command == "collect":
            conn.send(
                {
                    "received": stats.received,
                    "duplicates": stats.duplicates,
                    "misdelivered": stats.misdelivered,
                    "other_records": stats.other_records,
                    "closed_by_server": stats.closed_by_server,
                    "close_reasons": stats.close_reasons,
                    "late": stats.late,
                    "latencies": stats.latencies.tobytes(),
                    "last_receive": stats.last_receive,
                    "first_latency": stats.first_latency,
                    "cpu_seconds": time.process_time() - cpu_start,
                    "wall_seconds": time.monotonic() - wall_start,
                    "connections": len(clients),
                }
            )
        elif command == "stop":
            break
    stats.stopping = True
    if ping_task is not None:
        ping_task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True), 30
        )
    conn.send("closed")


class ClientPool:
    """The load-client processes and the pipe to each."""

    def __init__(self, procs: int) -> None:
        self.n = procs
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[multiprocessing.connection.Connection] = []

    async def start(
        self,
        specs: list[ClientSpec],
        protocol: str,
        impl: str,
        compression: bool,
        within: float,
        concurrency: int = 32,
    ) -> list[dict[str, Any]]:
        context = multiprocessing.get_context("spawn")
        share = -(-len(specs) // self.n)
        for p in range(self.n):
            # Contiguous shares: each process holds clients of every gateway (they alternate).
            mine = [s.__dict__ for s in specs[p * share : (p + 1) * share]]
            parent, child = context.Pipe()
            config = {
                "specs": mine,
                "protocol": protocol,
                "client_impl": impl,
                "compression": compression,
                "connect_concurrency": concurrency,
            }
            process = context.Process(
                target=client_process_main, args=(child, config), name=f"client{p}", daemon=True
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)
        return list(await asyncio.gather(*(pipe_recv(p, within) for p in self.pipes)))

    def broadcast(self, command: str, arg: Any = None) -> None:
        for pipe in self.pipes:
            pipe.send((command, arg))

    async def count(self) -> tuple[int, int]:
        """(messages of the current phase received, every message ever received)."""
        self.broadcast("count")
        answers = await asyncio.gather(*(pipe_recv(p, 10) for p in self.pipes))
        return sum(a[0] for a in answers), sum(a[1] for a in answers)

    async def collect(self) -> list[dict[str, Any]]:
        self.broadcast("collect")
        return list(await asyncio.gather(*(pipe_recv(p, 60) for p in self.pipes)))

    async def quiesce(self, quiet: float = 0.3, within: float = 20.0) -> float:
        """Wait until no message arrived for ``quiet`` seconds; returns the time it took."""
        start = time.monotonic()
        _, before = await self.count()
        while time.monotonic() - start < within:
            await asyncio.sleep(quiet)
            _, now = await self.count()
            if now == before:
                break
            before = now
        return time.monotonic() - start

    async def close(self) -> None:
        """The normal way out: each client closes its sockets, says so, and exits."""
        self.broadcast("stop")
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                await pipe_recv(pipe, 45)  # "closed"
        for process in self.processes:
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5)
        self.terminate()

    def terminate(self) -> None:
        """Idempotent; also the Ctrl-C path: whatever still runs is terminated."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


# ====================================================================== workloads


class Workload(abc.ABC):
    """Who each message goes to, and how many deliveries that should make."""

    name = ""
    label = ""

    def __init__(self, specs: list[ClientSpec], connected: dict[int, str], seed: int) -> None:
        self.specs = specs
        self.connected = connected  # client index -> connection id (only those that connected)
        self.rng = random.Random(seed)

    @abc.abstractmethod
    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        """(recipient, fields the payload carries for checking, expected deliveries)."""


class Broadcast(Workload):
    name = "broadcast"
    label = "W1 broadcast"

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        return ("all", ""), {}, len(self.connected)


class Groups(Workload):
    name = "groups"
    label = f"W2 groups of {GROUP_SIZE}"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.members: dict[str, list[int]] = {}
        for spec in self.specs:
            if spec.index in self.connected:
                self.members.setdefault(spec.group, []).append(spec.index)
        self.groups = sorted(self.members)

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        group = self.rng.choice(self.groups)
        return ("group", group), {"g": group}, len(self.members[group])


class Users(Workload):
    name = "users"
    label = "W3 targeted (one user)"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.users: dict[str, int] = {}
        for spec in self.specs:
            if spec.index in self.connected:
                self.users[spec.user] = self.users.get(spec.user, 0) + 1
        self.names = sorted(self.users)

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        user = self.rng.choice(self.names)
        return ("user", user), {"u": user}, self.users[user]


WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (Broadcast, Groups, Users)}


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


# ====================================================================== sessions and phases


@dataclass
class Session:
    """One system up, its load clients connected, its publisher processes ready."""

    target: Target
    clients: ClientPool
    publishers: PublisherPool
    args: argparse.Namespace
    connected: dict[int, str]
    seq_next: int = 0
    phase_no: int = 0
    out: dict[str, Any] = field(default_factory=dict)  # what the report says of this system
    rest_publishers: PublisherPool | None = None  # Hubbub, direct: for the W3 via REST phase


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def fmt_ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def sample_frame_bytes(protocol: str, pad: int) -> int:
    payload = {"s": 12345, "g": "g12", "p": "x" * pad, "t": time.time()}
    if protocol == "signalr":
        body = {"type": 1, "target": TARGET_METHOD, "arguments": [payload]}
        return len(json.dumps(body, separators=(",", ":"))) + 1
    return len("42" + json.dumps([TARGET_METHOD, payload], separators=(",", ":")))


async def run_phase(
    session: Session,
    workload: str,
    rate: float,
    seconds: float,
    drain_timeout: float,
    publishers: PublisherPool | None = None,
) -> dict[str, Any]:
    """Publish ``workload`` at ``rate``/s for ``seconds`` (with the session's publishers unless
    told), wait for every delivery (at most ``drain_timeout`` after the last publish), measure;
    then wait until traffic stopped."""
    args, target, pool = session.args, session.target, session.clients
    publishers = publishers or session.publishers
    seq_base = session.seq_next
    session.seq_next += max(1, int(rate * seconds))
    session.phase_no += 1
    pool.broadcast("phase", seq_base)
    pids = target.server_pids()
    start_at = time.time() + 0.3
    publishers.send_publish(
        {
            "workload": workload,
            "rate": rate,
            "seconds": seconds,
            "seq_base": seq_base,
            "start_at": start_at,
            "seed": args.seed * 1000 + session.phase_no,
            "pad": args.pad,
        }
    )
    await asyncio.sleep(max(0.0, start_at - time.time() - 0.02))
    cpu_before = cpu_snapshot(pids)
    machine_before, self_before = machine_busy_seconds(), time.process_time()
    window_start = time.monotonic()
    pub = await publishers.results(seconds * 4 + 120)
    publish_end = time.monotonic()
    got = 0
    while True:
        got, _ = await pool.count()
        if got >= pub.expected or time.monotonic() - publish_end > drain_timeout:
            break
        await asyncio.sleep(0.05)
    drain_end = time.monotonic()
    cpu_after = cpu_snapshot(pids)
    machine_busy = machine_busy_seconds() - machine_before
    self_cpu = time.process_time() - self_before
    results = await pool.collect()
    quiesce = await pool.quiesce()
    if quiesce > 2:
        log(f"  traffic of that phase went on for {quiesce:.1f} s after it was measured")

    latencies: list[float] = []
    for res in results:
        samples = array.array("d")
        samples.frombytes(res["latencies"])
        latencies.extend(samples)
    latencies.sort()
    first: dict[int, float] = {}
    for res in results:
        for seq, latency in res["first_latency"].items():
            if latency < first.get(seq, 1e9):
                first[seq] = latency
    first_latencies = sorted(first.values())
    request_ms = sorted(x * 1000 for x in pub.request_latencies)
    received = sum(r["received"] for r in results)
    server_cpu = {k: cpu_after[k] - cpu_before[k] for k in pids}
    server_total = sum(server_cpu.values())
    window = drain_end - window_start
    last_receive = max((r["last_receive"] for r in results), default=0.0)
    active = max(1e-9, (last_receive - pub.started) if received else window)
    close_reasons: dict[str, int] = {}
    for res in results:
        for reason, n in res["close_reasons"].items():
            close_reasons[reason] = close_reasons.get(reason, 0) + n
    client_cpu = [r["cpu_seconds"] for r in results]
    report = {
        "target": target.name,
        "workload": workload,
        "publish_path": publishers.kind,
        "clients": len(session.connected),
        "rate": rate,
        "seconds": seconds,
        "frame_bytes": sample_frame_bytes(target.protocol, args.pad),
        "published": pub.published,
        "publish_failed": pub.failed,
        "publish_errors": pub.errors,
        "publish_seconds": pub.duration,
        "publish_rate": pub.published / pub.duration if pub.duration > 0 else 0.0,
        "publish_max_lag_s": pub.max_lag,
        "publish_request_ms": {
            "p50": percentile(request_ms, 50),
            "p99": percentile(request_ms, 99),
        },
        "expected": pub.expected,
        "received": received,
        "lost": max(0, pub.expected - received),
        "lost_pct": 100.0 * max(0, pub.expected - received) / pub.expected if pub.expected else 0.0,
        "duplicates": sum(r["duplicates"] for r in results),
        "misdelivered": sum(r["misdelivered"] for r in results),
        "other_records": sum(r["other_records"] for r in results),
        "late_from_earlier_phases": sum(r["late"] for r in results),
        "closed_by_server": sum(r["closed_by_server"] for r in results),
        "close_reasons": close_reasons,
        "deliveries_per_s": received / active,
        "latency_ms": {
            "p50": fmt_ms(percentile(latencies, 50)),
            "p95": fmt_ms(percentile(latencies, 95)),
            "p99": fmt_ms(percentile(latencies, 99)),
            "max": fmt_ms(latencies[-1] if latencies else None),
            "samples": len(latencies),
        },
        # Per message, the earliest recipient: the pipeline's own latency, without the time a
        # fan-out burst spends reaching (and being read by) the last of many sockets.
        "first_latency_ms": {
            "p50": fmt_ms(percentile(first_latencies, 50)),
            "p99": fmt_ms(percentile(first_latencies, 99)),
        },
        "drain_seconds": drain_end - publish_end,
        "drain_timed_out": got < pub.expected,
        "quiesce_seconds": quiesce,
        "window_seconds": window,
        "server_cpu_seconds": server_total,
        "server_cpu_cores": server_total / window,
        "server_cpu_by_process": server_cpu,
        "server_cpu_us_per_delivery": server_total / received * 1e6 if received else None,
        "server_cpu_us_per_message": server_total / pub.published * 1e6 if pub.published else None,
        "client_cpu_seconds": client_cpu,
        "client_cpu_max_utilisation": max(
            (r["cpu_seconds"] / r["wall_seconds"] for r in results if r["wall_seconds"]),
            default=0.0,
        ),
        "publisher_cpu_seconds": pub.cpu_seconds,
        "orchestrator_cpu_seconds": self_cpu,
        # Everything else the machine ran meanwhile (other jobs skew every figure above).
        # Publisher CPU counts from their first publish, a fraction of a second after the
        # window opened: close enough.
        "other_cpu_cores": max(
            0.0,
            machine_busy - server_total - sum(client_cpu) - sum(pub.cpu_seconds) - self_cpu,
        )
        / window,
        "machine_cores": os.cpu_count(),
    }
    lat = report["latency_ms"]
    log(
        f"  {target.name} {workload} @ {rate:g}/s: {received}/{pub.expected} delivered, "
        f"{report['deliveries_per_s']:.0f}/s, p50 {fmt(lat['p50'], '.1f')} "
        f"p99 {fmt(lat['p99'], '.1f')} ms, server "
        f"{fmt(report['server_cpu_us_per_delivery'], '.1f')} µs/delivery, "
        f"clients {report['client_cpu_max_utilisation']:.2f} CPU-s/s, "
        f"other load {report['other_cpu_cores']:.2f} cores"
    )
    return report


def ramp_verdict(r: dict[str, Any], p99_limit_ms: float) -> str | None:
    """None when the step was clean; else why not."""
    p99 = r["latency_ms"]["p99"]
    if r["published"] == 0:
        return "nothing published"
    if r["publish_failed"]:
        return f"{r['publish_failed']} publishes failed ({next(iter(r['publish_errors']))})"
    if r["lost"]:
        return f"{r['lost']} lost ({r['lost_pct']:.2f} %)"
    if p99 is None or p99 >= p99_limit_ms:
        return f"p99 {fmt(p99, '.0f')} ms"
    if r["duplicates"] or r["misdelivered"] or r["closed_by_server"]:
        return "duplicates, misdeliveries or closes"
    if r["publish_rate"] < 0.95 * r["rate"] or r["publish_max_lag_s"] > 0.25:
        return f"publishers fell behind ({r['publish_rate']:.0f}/s of {r['rate']:g}/s)"
    return None


class Ramp:
    """W1 ramp for one system: double the rate until a step fails (loss, or p99 over the limit),
    then bisect (geometric mean) until the last clean and first failed rates are within
    --ramp-precision, or the steps run out."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rate = args.ramp_start
        self.good: float | None = None
        self.bad: float | None = None
        self.good_result: dict[str, Any] | None = None
        self.steps: list[dict[str, Any]] = []
        self.done = False
        self.retried = False  # the current rate failed once under load and runs again

    def record(self, name: str, r: dict[str, Any]) -> None:
        args, rate = self.args, self.rate
        why = ramp_verdict(r, args.ramp_p99_ms)
        self.steps.append({"rate": rate, "ok": why is None, "why": why, "result": r})
        log(f"  ramp step {name} {rate:g}/s: {'clean' if why is None else 'FAILED: ' + why}")
        # A step that failed while other work used the machine runs once more (both runs are
        # reported); the rate counts as failed only if that one fails too.
        if why is not None and not self.retried and r["other_cpu_cores"] >= args.ramp_retry_load:
            self.retried = True
            log(f"  ramp step {name} {rate:g}/s: other load {r['other_cpu_cores']:.2f}: once more")
            return
        self.retried = False
        if why is None:
            if self.good is None or rate > self.good:
                self.good, self.good_result = rate, r
        else:
            self.bad = rate if self.bad is None else min(self.bad, rate)
        if self.bad is None:
            self.rate = rate * 2
        elif self.good is None:
            self.rate = rate / 2
            self.done = self.rate < 1
        elif self.bad / self.good <= 1 + args.ramp_precision:
            self.done = True
        else:
            self.rate = round(math.sqrt(self.good * self.bad), 1)
        if len(self.steps) >= args.ramp_max_steps:
            self.done = True

    def summary(self) -> dict[str, Any]:
        good, bad = self.good, self.bad
        return {
            "sustainable_rate": good,
            "first_failed_rate": bad,
            "deliveries_per_s": self.good_result["deliveries_per_s"] if self.good_result else 0.0,
            "at_sustainable": self.good_result,
            "steps": self.steps,
            "converged": good is not None
            and bad is not None
            and bad / good <= 1 + self.args.ramp_precision,
        }


async def open_session(
    name: str, args: argparse.Namespace, workdir: Path, cleanup: list[Callable[[], None]]
) -> Session:
    """Start one system, connect its load clients, put them in groups, start its publishers."""
    target = TARGETS[name](
        workdir / name, gateways=args.gateways, workers=args.workers, profile=args.profile
    )
    cleanup.append(target.stop_processes)
    pool = ClientPool(args.client_procs)
    cleanup.append(pool.terminate)
    publishers = PublisherPool(args.publisher_procs)
    cleanup.append(publishers.terminate)
    if isinstance(target, HubbubTarget):
        target.publish_mode = args.hubbub_publish
    rest_publishers = None
    if name == "hubbub" and args.rest_phase:
        rest_publishers = PublisherPool(args.publisher_procs)
        cleanup.append(rest_publishers.terminate)
    log(f"starting {target.label} (logs in {target.workdir})")
    await target.start()
    out: dict[str, Any] = {"target": name, "label": target.label, "phases": {}}
    publishers.start(target.publisher_config(), args.publishers)
    out["publish_path"] = publishers.kind
    if rest_publishers is not None:
        rest_publishers.start(target.publisher_config("rest"), args.publishers)
    endpoints = target.client_endpoints()
    specs = [
        ClientSpec(i, endpoints[i % len(endpoints)], f"u{i}", f"g{i // GROUP_SIZE}")
        for i in range(args.clients)
    ]
    log(f"connecting {args.clients} {target.protocol} clients from {args.client_procs} procs")
    t0 = time.monotonic()
    ready = await pool.start(
        specs, target.protocol, args.client_impl, args.compression == "deflate", 300
    )
    connected: dict[int, str] = {}
    connect_errors: list[str] = []
    for answer in ready:
        connected.update(answer["ready"])
        connect_errors += answer["errors"]
    log(
        f"{len(connected)} connected in {time.monotonic() - t0:.1f} s"
        f"{f', {len(connect_errors)} failed' if connect_errors else ''}"
    )
    if not connected:
        raise RuntimeError(f"no client connected: {connect_errors[:3]}")
    out["clients_connected"] = len(connected)
    out["connect_errors"] = connect_errors
    out["negotiate_retries"] = merge_counts(a.get("retries", {}) for a in ready)
    out["ws_extensions"] = ready[0]["extensions"] if ready else ""
    await target.prepare_groups(specs, connected)
    await publishers.ready()
    publishers.setup(specs, connected)
    if rest_publishers is not None:
        await rest_publishers.ready()
        rest_publishers.setup(specs, connected)
    session = Session(target, pool, publishers, args, connected, out=out,
                      rest_publishers=rest_publishers)  # fmt: skip
    if args.settle:
        await asyncio.sleep(args.settle)
    pids = target.server_pids()
    if args.idle_seconds > 0:  # what the server side burns with the clients connected, idle
        idle_before, idle_start = cpu_snapshot(pids), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        idle_after = cpu_snapshot(pids)
        out["server_idle_cores"] = sum(idle_after[k] - idle_before[k] for k in pids) / (
            time.monotonic() - idle_start
        )
    return session


async def close_session(session: Session) -> dict[str, Any]:
    """Close the clients (then count what the server still lists), stop the system."""
    target, out = session.target, session.out
    try:
        await session.clients.close()
        out["stale_registrations"] = await target.stale(list(session.connected.values()))
    finally:
        session.clients.terminate()
        session.publishers.terminate()
        if session.rest_publishers is not None:
            session.rest_publishers.terminate()
        log(f"stopping {target.label}")
        await target.stop()
    out["log_issues"] = scan_logs(target.log_files())
    out["logs"] = str(target.workdir)
    return out


def in_turn(names: list[str], turn: int) -> list[str]:
    """Alternate which system goes first (A B, B A, ...), so a trend in the machine's other load
    weighs on both alike."""
    return names if turn % 2 == 0 else names[::-1]


async def run_sessions(
    args: argparse.Namespace, workdir: Path, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    """Every system up at once, each phase run on one system after the other (alternating
    which goes first), so both see the same machine; then each is stopped."""
    sessions: dict[str, Session] = {}
    names = args.targets
    try:
        for name in names:
            sessions[name] = await open_session(name, args, workdir, cleanup)
        turn = 0
        for workload in args.workloads:
            rate = args.rates[workload]
            for name in in_turn(names, turn):
                log(f"{name}: {workload} at {rate:g}/s for {args.seconds:g} s")
                sessions[name].out["phases"][workload] = await run_phase(
                    sessions[name], workload, rate, args.seconds, args.drain_timeout
                )
            turn += 1
        hub = sessions.get("hubbub")
        if hub is not None and hub.rest_publishers is not None:
            rate = args.rates["users"]
            log(f"hubbub: users at {rate:g}/s for {args.rest_seconds:g} s, via the REST API")
            hub.out["phases"]["users_rest"] = await run_phase(
                hub, "users", rate, args.rest_seconds, args.drain_timeout, hub.rest_publishers
            )
        if args.ramp:
            ramps = {name: Ramp(args) for name in names}
            log(f"ramp: W1 from {args.ramp_start:g}/s, {args.ramp_seconds:g} s steps, in turn")
            deadline = time.monotonic() + args.ramp_budget * len(names)
            while not all(r.done for r in ramps.values()):
                for name in in_turn(names, turn):
                    ramp = ramps[name]
                    if ramp.done:
                        continue
                    r = await run_phase(
                        sessions[name], "broadcast", ramp.rate, args.ramp_seconds, args.ramp_drain
                    )
                    ramp.record(name, r)
                turn += 1
                if time.monotonic() > deadline:
                    log("ramp: out of time budget")
                    break
            for name, ramp in ramps.items():
                sessions[name].out["ramp"] = ramp.summary()
            # The latency check: W1 at 10 % of Hubbub's sustainable rate (of its own without
            # Hubbub), for every system.
            base = ramps["hubbub"].good if "hubbub" in ramps else ramps[names[0]].good
            if base:
                rate10 = max(1.0, round(base * args.latency_fraction, 1))
                for name in in_turn(names, turn):
                    log(f"{name}: broadcast at {rate10:g}/s (10 % of Hubbub's sustainable rate)")
                    sessions[name].out["phases"]["latency"] = await run_phase(
                        sessions[name], "broadcast", rate10, args.seconds, args.drain_timeout
                    )
    finally:
        outs = {}
        for name, session in sessions.items():
            outs[name] = await close_session(session)
    return outs


async def run_idle(
    name: str, args: argparse.Namespace, workdir: Path, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    """W4: a fresh start, ``--idle`` idle connections over the gateways; RSS growth of each."""
    target = TARGETS[name](
        workdir / f"{name}-idle", gateways=args.gateways, workers=args.workers, profile=False
    )
    cleanup.append(target.stop_processes)
    procs = max(args.client_procs, -(-args.idle // 5000))
    pool = ClientPool(procs)
    cleanup.append(pool.terminate)
    log(f"idle ({target.label}): starting, then {args.idle} connections from {procs} procs")
    await target.start()
    out: dict[str, Any] = {"target": name, "label": target.label, "connections": args.idle}
    try:
        await asyncio.sleep(args.idle_settle)
        gateways = target.gateway_pids()
        pids = target.server_pids()
        rss_before = {k: rss_bytes(p) for k, p in pids.items()}
        endpoints = target.client_endpoints()
        specs = [
            ClientSpec(i, endpoints[i % len(endpoints)], f"u{i}", "") for i in range(args.idle)
        ]
        t0 = time.monotonic()
        ready = await pool.start(specs, target.protocol, args.client_impl, False, 600, 64)
        out["connect_seconds"] = time.monotonic() - t0
        connected = sum(len(a["ready"]) for a in ready)
        errors = [e for a in ready for e in a["errors"]]
        out["connected"] = connected
        out["connect_errors"] = errors[:5]
        out["connect_failed"] = len(errors)
        out["negotiate_retries"] = merge_counts(a.get("retries", {}) for a in ready)
        log(f"  {connected} connected in {out['connect_seconds']:.1f} s ({len(errors)} failed)")
        await asyncio.sleep(args.idle_settle)
        rss_after = {k: rss_bytes(p) for k, p in pids.items()}
        # Connections the server closed before the measurement (none, unless something is
        # wrong) do not count: the figures are per connection still open.
        seen = await pool.collect()
        closed = sum(a["closed_by_server"] for a in seen)
        out["closed_by_server"] = closed
        out["close_reasons"] = merge_counts(a["close_reasons"] for a in seen)
        still_open = connected - closed
        before, t1 = cpu_snapshot(pids), time.monotonic()
        await asyncio.sleep(args.idle_cpu_seconds)
        after = cpu_snapshot(pids)
        out["server_idle_cores"] = sum(after[k] - before[k] for k in pids) / (time.monotonic() - t1)
        out["rss_before"] = rss_before
        out["rss_after"] = rss_after
        growth = sum(rss_after[k] - rss_before[k] for k in gateways)
        out["gateway_rss_growth_bytes"] = growth
        out["gateway_bytes_per_connection"] = growth / still_open if still_open > 0 else None
        others = {k: rss_after[k] - rss_before[k] for k in pids if k not in gateways}
        out["other_rss_growth_bytes"] = others
        out["other_bytes_per_connection"] = {
            k: (v / still_open if still_open > 0 else None) for k, v in others.items()
        }
        await pool.close()
    finally:
        pool.terminate()
        log(f"stopping {target.label}")
        await target.stop()
    out["log_issues"] = scan_logs(target.log_files())
    out["logs"] = str(target.workdir)
    return out


def merge_counts(parts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            merged[key] = merged.get(key, 0) + n
    return merged


async def run_all(
    args: argparse.Namespace, workdir: Path, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    report: dict[str, Any] = {"sessions": {}, "idle": {}, "started": time.time()}
    report["loadavg_before"] = os.getloadavg()
    if args.workloads or args.ramp:
        report["sessions"] = await run_sessions(args, workdir, cleanup)
    if args.idle:
        for name in args.targets:
            report["idle"][name] = await run_idle(name, args, workdir, cleanup)
    report["loadavg_after"] = os.getloadavg()
    report["finished"] = time.time()
    return report


# ====================================================================== logs


LOG_PATTERN = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
REDIS_BENIGN = (
    "Redis is starting",
    "Redis version=",
    "Configuration loaded",
    "Server initialized",
    "Memory overcommit",
    "User requested shutdown",
    "ready to exit",
    "Saving the final",
)


def scan_logs(files: list[Path]) -> dict[str, Any]:
    """Warnings, errors and tracebacks in the server logs (HUBBUB_LOG_LEVEL=WARNING)."""
    found: dict[str, Any] = {}
    for path in files:
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        if path.name == "server.log":  # redis: '#' marks warnings (and some startup chatter)
            hits = [
                line for line in lines if " # " in line and not any(b in line for b in REDIS_BENIGN)
            ]
        else:
            hits = [line for line in lines if LOG_PATTERN.search(line)]
        if hits:
            key = f"{path.parent.name}/{path.name}"
            found[key] = {"count": len(hits), "first": hits[:8]}
    return found


# ====================================================================== report


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


ROWS: list[tuple[str, Callable[[dict[str, Any]], float | None], str]] = [
    ("messages published / s", lambda r: r["publish_rate"], ".1f"),
    ("deliveries expected", lambda r: r["expected"], "d"),
    ("deliveries lost", lambda r: r["lost"], "d"),
    ("duplicates + misdelivered", lambda r: r["duplicates"] + r["misdelivered"], "d"),
    ("closed by server", lambda r: r["closed_by_server"], "d"),
    ("deliveries / s", lambda r: r["deliveries_per_s"], ".0f"),
    ("**server CPU µs / delivery**", lambda r: r["server_cpu_us_per_delivery"], ".1f"),
    ("… of which gateway / uvicorn processes", lambda r: cpu_share(r, ("gw", "sio")), ".1f"),
    ("… of which fan-out workers", lambda r: cpu_share(r, ("worker",)), ".1f"),
    ("… of which redis-server", lambda r: cpu_share(r, ("redis",)), ".1f"),
    ("server CPU µs / published message", lambda r: r["server_cpu_us_per_message"], ".0f"),
    ("server CPU, cores (average)", lambda r: r["server_cpu_cores"], ".2f"),
    ("latency p50 (ms)", lambda r: r["latency_ms"]["p50"], ".1f"),
    ("latency p95 (ms)", lambda r: r["latency_ms"]["p95"], ".1f"),
    ("latency p99 (ms)", lambda r: r["latency_ms"]["p99"], ".1f"),
    ("latency max (ms)", lambda r: r["latency_ms"]["max"], ".1f"),
    ("first-recipient latency p50 (ms)", lambda r: r["first_latency_ms"]["p50"], ".1f"),
    ("first-recipient latency p99 (ms)", lambda r: r["first_latency_ms"]["p99"], ".1f"),
    ("publish call p50 (ms)", lambda r: r["publish_request_ms"]["p50"], ".1f"),
    ("drain after last publish (s)", lambda r: r["drain_seconds"], ".2f"),
    ("frame size (B)", lambda r: r["frame_bytes"], "d"),
    ("busiest load client (CPU-s / s)", lambda r: r["client_cpu_max_utilisation"], ".2f"),
    ("publishers' CPU (s)", lambda r: sum(r["publisher_cpu_seconds"]), ".2f"),
    ("other load on the machine (cores)", lambda r: r["other_cpu_cores"], ".2f"),
]


def cpu_share(r: dict[str, Any], prefixes: tuple[str, ...]) -> float | None:
    """Server CPU µs per delivery of the processes whose names start with one of ``prefixes``
    (None when the system has none)."""
    parts = [v for k, v in r["server_cpu_by_process"].items() if k.startswith(prefixes)]
    if not parts or not r["received"]:
        return None
    return sum(parts) / r["received"] * 1e6


def header_rows(labels: list[str], ratio_label: str = "Hubbub / peer") -> list[str]:
    """A markdown table's header: one column per system, and Hubbub / peer when there are two."""
    two = len(labels) == 2
    return [
        "| | " + " | ".join(labels) + (f" | {ratio_label} |" if two else " |"),
        "|---" * (len(labels) + 1 + two) + "|",
    ]


def phase_table(
    runs: list[tuple[str, dict[str, Any] | None]], ratio_label: str = "Hubbub / peer"
) -> list[str]:
    """A markdown table, one column per system, and Hubbub/peer when there are two."""
    two = len(runs) == 2
    lines = header_rows([label for label, _ in runs], ratio_label)
    for name, get, spec in ROWS:
        values = []
        for _, r in runs:
            try:
                values.append(get(r) if r else None)
            except (KeyError, TypeError):
                values.append(None)
        cells = [fmt(v, spec) for v in values]
        if two:
            cells.append(ratio(values[0], values[1]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def describe_phase(r: dict[str, Any]) -> str:
    notes = []
    if r["publish_max_lag_s"] > 0.25:
        notes.append(f"publishers fell behind by up to {r['publish_max_lag_s']:.2f} s")
    if r["drain_timed_out"]:
        notes.append("drain TIMED OUT")
    if r["publish_failed"]:
        notes.append(f"{r['publish_failed']} publishes failed: {r['publish_errors']}")
    if r["close_reasons"]:
        notes.append(f"closes: {r['close_reasons']}")
    if r["late_from_earlier_phases"]:
        notes.append(f"{r['late_from_earlier_phases']} late messages of an earlier phase")
    return "; ".join(notes)


def markdown_report(report: dict[str, Any], args: argparse.Namespace) -> str:
    sessions = report["sessions"]
    names = [n for n in args.targets if n in sessions or n in report["idle"]]
    labels = {n: TARGETS[n].label for n in names}
    paths = {  # the publish path of each system, in the column headers
        n: PUBLISH_PATHS.get(sessions[n].get("publish_path", ""), "")
        for n in names
        if n in sessions
    }
    plain = dict(labels)
    labels.update({n: f"{labels[n]} ({p})" for n, p in paths.items() if p})
    out: list[str] = []
    hub = sessions.get("hubbub")
    peer = sessions.get("socketio")
    compare = hub is not None and peer is not None

    # ---------------------------------------------------------------- targets
    if compare or report["idle"]:
        how = "; ".join(f"{plain[n]} publish: {p}" for n, p in paths.items() if p)
        measured = f"measured ({how})" if compare and how else "measured"
        out += ["## Targets", "", f"| target | {measured} | met? |", "|---|---|---|"]
        if compare:
            for w in ("broadcast", "groups", "users"):
                a = hub["phases"].get(w)
                b = peer["phases"].get(w)
                if not a or not b:
                    continue
                x, y = a["server_cpu_us_per_delivery"], b["server_cpu_us_per_delivery"]
                met = x is not None and y is not None and x <= y / 3
                out.append(
                    f"| {WORKLOADS[w].label}: server CPU / delivery ≤ 1/3 of python-socketio's | "
                    f"{fmt(x, '.1f')} vs {fmt(y, '.1f')} µs = {ratio(x, y)}x | "
                    f"{'yes' if met else 'NO'} |"
                )
            ra, rb = hub.get("ramp"), peer.get("ramp")
            if ra and rb:
                x, y = ra["deliveries_per_s"], rb["deliveries_per_s"]
                met = bool(y) and x >= 3 * y
                out.append(
                    f"| W1 ramp: sustainable deliveries/s ≥ 3x python-socketio's | "
                    f"{x:.0f} vs {y:.0f} /s = {ratio(x, y)}x | {'yes' if met else 'NO'} |"
                )
        if hub is not None and "latency" in hub["phases"]:
            r = hub["phases"]["latency"]
            p99 = r["latency_ms"]["p99"]
            met = p99 is not None and p99 < 10 and not r["lost"]
            out.append(
                f"| p99 < 10 ms at 10 % of Hubbub's sustainable rate ({r['rate']:g} msg/s, "
                f"{r['deliveries_per_s']:.0f} deliveries/s) | {fmt(p99, '.1f')} ms "
                f"(lost {r['lost']}) | {'yes' if met else 'NO'} |"
            )
        idle_hub = report["idle"].get("hubbub")
        if idle_hub and idle_hub.get("gateway_bytes_per_connection") is not None:
            kb = idle_hub["gateway_bytes_per_connection"] / 1024
            out.append(
                f"| idle memory ≤ 30 KB per connection (gateway RSS growth) | {kb:.1f} KB | "
                f"{'yes' if kb <= 30 else 'NO'} |"
            )
        out.append("")

    # ---------------------------------------------------------------- fixed workloads
    all_phases = ["broadcast", "groups", "users", "latency"]
    for w in all_phases:
        runs = [(labels[n], sessions[n]["phases"].get(w)) for n in names if n in sessions]
        runs = [(label, r) for label, r in runs if r is not None]
        if not runs:
            continue
        r0 = runs[0][1]
        assert r0 is not None
        if w == "latency":
            title = (
                f"W1 broadcast at 10 % of Hubbub's sustainable rate: {r0['clients']} clients, "
                f"{r0['rate']:g} msg/s for {r0['seconds']:g} s"
            )
        else:
            title = (
                f"{WORKLOADS[w].label}: {r0['clients']} clients, {r0['rate']:g} msg/s for "
                f"{r0['seconds']:g} s"
            )
        out += [f"## {title}", ""]
        out += phase_table(runs)
        notes = [(label, describe_phase(r)) for label, r in runs if r and describe_phase(r)]
        out += [""] + [f"- {label}: {note}" for label, note in notes] + ([""] if notes else [])

    # ---------------------------------------------------------------- W3 via REST
    rest = hub["phases"].get("users_rest") if hub is not None else None
    if rest is not None:
        direct = hub["phases"].get("users")
        out += [
            f"## W3 via REST (Hubbub only): {rest['clients']} clients, {rest['rate']:g} msg/s "
            f"for {rest['seconds']:g} s",
            "",
            "W3 again, published through Hubbub's REST API (an HTTP request to a gateway, JWT "
            "verified, then the same XADD) instead of straight to the publish stream: what the "
            "REST ingest adds to the server CPU. The peer has no REST path.",
            "",
        ]
        runs = [("Hubbub W3 via REST API", rest), ("Hubbub W3 direct to stream", direct)]
        out += phase_table(runs, "REST / direct")
        note = describe_phase(rest)
        out += [""] + ([f"- W3 via REST: {note}", ""] if note else [])

    # ---------------------------------------------------------------- ramp
    ramps = [(n, sessions[n].get("ramp")) for n in names if n in sessions]
    ramps = [(n, r) for n, r in ramps if r]
    if ramps:
        out += [
            f"## W1 ramp: highest rate with zero loss and p99 < {args.ramp_p99_ms:g} ms "
            f"({args.ramp_seconds:g} s steps)",
            "",
            f"Doubling from {args.ramp_start:g} msg/s, then bisecting; the systems take turns, "
            f"step by step. A step that failed while other work used ≥ {args.ramp_retry_load:g} "
            "cores ran once more, and the rate counts as failed only if that run failed too "
            "(both runs are listed).",
            "",
        ]
        two = len(ramps) == 2
        out += header_rows([labels[n] for n, _ in ramps])

        def at(r: dict[str, Any], get: Callable[[dict[str, Any]], Any]) -> Any:
            return get(r["at_sustainable"]) if r["at_sustainable"] else None

        ramp_rows: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
            ("sustainable rate (msg/s)", lambda r: r["sustainable_rate"], ".1f"),
            ("**deliveries / s at that rate**", lambda r: r["deliveries_per_s"], ".0f"),
            ("first failing rate (msg/s)", lambda r: r["first_failed_rate"], ".1f"),
            ("p99 at that rate (ms)", lambda r: at(r, lambda x: x["latency_ms"]["p99"]), ".1f"),
            (
                "server CPU µs / delivery at that rate",
                lambda r: at(r, lambda x: x["server_cpu_us_per_delivery"]),
                ".1f",
            ),
            (
                "server CPU, cores, at that rate",
                lambda r: at(r, lambda x: x["server_cpu_cores"]),
                ".2f",
            ),
            (
                "busiest load client at that rate (CPU-s / s)",
                lambda r: at(r, lambda x: x["client_cpu_max_utilisation"]),
                ".2f",
            ),
            (
                "other load at that rate (cores)",
                lambda r: at(r, lambda x: x["other_cpu_cores"]),
                ".2f",
            ),
        ]
        for row, get, spec in ramp_rows:
            values = [get(r) for _, r in ramps]
            cells = [fmt(v, spec) for v in values]
            if two:
                cells.append(ratio(values[0], values[1]))
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.append("")
        for n, r in ramps:
            steps = ", ".join(
                f"{s['rate']:g}/s {'ok' if s['ok'] else '✗ ' + str(s['why'])} "
                f"({s['result']['deliveries_per_s']:.0f} del/s, p99 "
                f"{fmt(s['result']['latency_ms']['p99'], '.0f')} ms, server "
                f"{s['result']['server_cpu_cores']:.2f} cores, other "
                f"{s['result']['other_cpu_cores']:.2f})"
                for s in r["steps"]
            )
            conv = "" if r["converged"] else " (did not converge within the step budget)"
            out.append(f"- {labels[n]} steps{conv}: {steps}")
        out.append("")

    # ---------------------------------------------------------------- idle
    idles = [(n, report["idle"].get(n)) for n in names]
    idles = [(n, r) for n, r in idles if r]
    if idles:
        out += [f"## W4 idle: {args.idle} connections over {args.gateways} server processes", ""]
        two = len(idles) == 2
        out += header_rows([labels[n] for n, _ in idles])

        def kb(v: float | None) -> float | None:
            return None if v is None else v / 1024

        idle_rows: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
            ("connections open", lambda r: r["connected"], "d"),
            (
                "… of which closed by the server before the measurement",
                lambda r: r.get("closed_by_server", 0),
                "d",
            ),
            ("connect time (s)", lambda r: r["connect_seconds"], ".1f"),
            (
                "**gateway RSS growth per connection (KB)**",
                lambda r: kb(r["gateway_bytes_per_connection"]),
                ".1f",
            ),
            (
                "gateway RSS growth, total (MB)",
                lambda r: r["gateway_rss_growth_bytes"] / 2**20,
                ".1f",
            ),
            (
                "redis-server RSS growth per connection (KB)",
                lambda r: kb(r["other_bytes_per_connection"].get("redis")),
                ".2f",
            ),
            ("server idle CPU with them open (cores)", lambda r: r["server_idle_cores"], ".3f"),
        ]
        for row, get, spec in idle_rows:
            values = [get(r) for _, r in idles]
            cells = [fmt(v, spec) for v in values]
            if two:
                cells.append(ratio(values[0], values[1]))
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.append("")
        for n, r in idles:
            if r["connect_failed"]:
                out.append(f"- {labels[n]}: {r['connect_failed']} failed, {r['connect_errors']}")
            if r.get("close_reasons"):
                out.append(f"- {labels[n]}: closed by the server: {r['close_reasons']}")
            if r.get("negotiate_retries"):
                out.append(f"- {labels[n]}: negotiate retried: {r['negotiate_retries']}")

    # ---------------------------------------------------------------- health of each run
    out += ["## Per system", ""]
    for n in names:
        s = sessions.get(n)
        i = report["idle"].get(n)
        bits = []
        if s:
            bits.append(
                f"{s.get('clients_connected', 0)} clients connected"
                + (f" ({len(s['connect_errors'])} failed)" if s.get("connect_errors") else "")
            )
            if s.get("server_idle_cores") is not None:
                idle = s["server_idle_cores"]
                bits.append(f"server idle CPU with them connected {idle:.3f} cores")
            if s.get("negotiate_retries"):
                bits.append(f"negotiate retried: {s['negotiate_retries']}")
            stale = s.get("stale_registrations")
            if stale is not None:
                bits.append(f"still registered 3 s after their clients closed: {stale}")
        issues: dict[str, Any] = {}
        for part in (s, i):
            if part:
                issues.update(part.get("log_issues", {}))
        count = sum(v["count"] for v in issues.values())
        bits.append(f"server log warnings/errors: {count}")
        out.append(f"- **{labels[n]}**: " + "; ".join(bits))
        for logname, issue in issues.items():
            out.append(f"  - `{logname}`: {issue['count']} lines, first:")
            for line in issue["first"][:4]:
                out.append(f"    - `{line[:240]}`")
    out.append("")
    return "\n".join(out)


def machine_and_versions(args: argparse.Namespace, command: str) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        from hubbub.dev.embedded import find_server_binary

        binary = find_server_binary()
        redis_version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        redis_version = f"{binary}: {redis_version}"
    except (OSError, subprocess.SubprocessError, FileNotFoundError) as exc:
        redis_version = f"unknown ({exc})"
    return {
        "command": command,
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "hubbub": source_state(),
        "python-socketio": version("python-socketio"),
        "python-engineio": version("python-engineio"),
        "uvicorn": version("uvicorn"),
        "websockets": version("websockets"),
        "uvloop": version("uvloop"),
        "redis-server": redis_version,
    }


# Sections that other benchmarks write into the same file, kept when this one rewrites it.
KEPT_SECTIONS = ("## REST ingest",)  # bench/ingest.py


def kept_sections(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    kept = [
        found.group(0).rstrip("\n") + "\n"
        for heading in KEPT_SECTIONS
        if (found := re.search(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", text, re.S | re.M))
    ]
    return "".join("\n" + section for section in kept)


def results_markdown(report: dict[str, Any], args: argparse.Namespace, info: dict[str, str]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report["started"]))
    took = report["finished"] - report["started"]
    phases = [p for s in report["sessions"].values() for p in s["phases"].values()]
    phases += [
        st["result"]
        for s in report["sessions"].values()
        if s.get("ramp")
        for st in s["ramp"]["steps"]
    ]
    other = [p["other_cpu_cores"] for p in phases]
    load = (
        f"other work on the machine used {min(other):.2f} to {max(other):.2f} cores "
        f"(mean {sum(other) / len(other):.2f}) of {os.cpu_count()} during the measured phases"
        if other
        else "no phase measured"
    )
    lb, la = report["loadavg_before"], report["loadavg_after"]
    publish_paths = "; ".join(
        f"{s['label']}: {PUBLISH_PATHS.get(s.get('publish_path', ''), '?')}"
        for s in report["sessions"].values()
    )
    if any("users_rest" in s["phases"] for s in report["sessions"].values()):
        publish_paths += "; Hubbub's W3 via REST phase: REST API"
    lines = [
        "# Hubbub vs python-socketio: benchmark results",
        "",
        "Produced by `bench/run` (`bench/quick.py`); see its docstring for what each figure "
        "means. Absolute figures drift on a shared machine: read the **Hubbub / peer** ratios, "
        "measured in the same invocation (below 1 is better for CPU, latency and memory, above "
        "1 for deliveries/s).",
        "",
        f"- run: {started}, {took / 60:.1f} min",
        f"- command: `{info['command']}`",
        f"- machine: nproc {info['nproc']}, CPU {info['cpu']}, {info['memory']} RAM, Linux "
        f"{info['kernel']}, Python {info['python']}",
        f"- load: {load}; load average {lb[0]:.2f} before, {la[0]:.2f} after (1 min)",
        f"- hubbub: {info['hubbub']}",
        f"- python-socketio {info['python-socketio']} (python-engineio {info['python-engineio']}),"
        f" uvicorn {info['uvicorn']} (uvloop {info['uvloop']}, httptools, websockets-sansio), "
        f"websockets {info['websockets']}",
        f"- {info['redis-server']} (a separate server per system)",
        f"- setup: {args.gateways} server processes per system (Hubbub also {args.workers} "
        f"fan-out workers), {args.clients} clients from {args.client_procs} load-client "
        f"processes ({args.client_impl}), {args.publisher_procs} publisher processes "
        f"({args.publishers} in flight each), payload padding {args.pad} B",
        f"- publish path: {publish_paths}",
        "",
        markdown_report(report, args),
        "## How the two setups differ (read the figures with this in mind)",
        "",
        publishing_note(args),
        "- Keep-alive: the SignalR load clients send a Ping every 10 s (Hubbub closes a client "
        "silent for 30 s) and Hubbub pings after 15 s without output; Socket.IO clients only "
        "answer the server's pings (every 25 s). This shows in the idle CPU figures.",
        "- Connecting: Hubbub is a negotiate POST, then the WebSocket and the SignalR handshake "
        "(two JWTs checked); Socket.IO is the WebSocket and `40`.",
        "- Frames: SignalR JSON records are ~30 B longer than Socket.IO's `42[...]` packets.",
        "- The ramp finds where the whole 2-core machine saturates for each system: servers, "
        "load clients and publishers share it (their CPU is in the tables).",
        "",
    ]
    return "\n".join(lines)


def publishing_note(args: argparse.Namespace) -> str:
    peer = (
        "python-socketio's come from a write-only `AsyncRedisManager` (one Redis PUBLISH that "
        "both uvicorn processes receive and decode)"
    )
    if args.hubbub_publish == "direct":
        hub = (
            "Hubbub's messages are appended straight to its publish stream by "
            "`hubbub.sdk.publisher.Publisher` (one XADD; then a fan-out worker, the gateway's "
            "inbox), "
            "the counterpart of the peer's path; the W3 via REST phase shows what the REST API "
            "(an HTTP request to a gateway, JWT verified) adds"
        )
    else:
        hub = (
            "Hubbub's messages go through its REST API (an HTTP request to a gateway, JWT "
            "verified, XADD, a fan-out worker, the gateway's inbox), so its server CPU includes "
            "that ingest"
        )
    return f"- Publishing: {hub}; {peer}. The publishers' own CPU is not server CPU for either."


def print_details(report: dict[str, Any]) -> None:
    """Every figure of every phase, one block each (``--details``)."""
    for name, session in report["sessions"].items():
        phases = list(session["phases"].items())
        if session.get("ramp"):
            phases += [(f"ramp {s['rate']:g}/s", s["result"]) for s in session["ramp"]["steps"]]
        for label, r in phases:
            print(f"\n=== {name} {label}")
            slim = {k: v for k, v in r.items() if k not in ("target",)}
            print(json.dumps(slim, indent=1, default=str))


def source_state() -> str:
    """The commit measured, and whether the working tree had local changes (outside bench/)."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *argv], capture_output=True, text=True, timeout=10
        ).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = [
            line[3:]
            for line in git("status", "--porcelain").splitlines()
            if not line[3:].startswith("bench/")
        ]
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (f" + local changes to {', '.join(dirty)}" if dirty else "")


# ====================================================================== orchestration


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
        )


DEFAULT_RATES = {"broadcast": 50.0, "groups": 200.0, "users": 200.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--compare", action="store_true", help="run Hubbub and python-socketio (same workloads)"
    )
    parser.add_argument("--target", choices=sorted(TARGETS), action="append", dest="targets",
                        help="system(s) to run (repeatable; default hubbub)")  # fmt: skip
    parser.add_argument(
        "--all",
        action="store_true",
        help="W1, W2, W3, the ramp and W4 idle (10,000 connections unless --idle says)",
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append",
                        dest="workloads", help="fixed-rate workload(s) (repeatable)")  # fmt: skip
    parser.add_argument("--ramp", action="store_true", help="W1 ramp, then W1 at 10 %% of it")
    parser.add_argument("--idle", type=int, default=None, help="W4: this many idle connections")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, help="messages/s of every fixed workload")
    for w, rate in DEFAULT_RATES.items():
        parser.add_argument(f"--{w}-rate", type=float, default=rate, help=f"default {rate:g}")
    parser.add_argument("--seconds", type=float, default=10, help="duration of each fixed phase")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--publisher-procs", type=int, default=2)
    parser.add_argument("--publishers", type=int, default=8, help="requests in flight per proc")
    parser.add_argument("--gateways", type=int, default=2, help="server processes per system")
    parser.add_argument("--workers", type=int, default=2, help="Hubbub fan-out workers")
    parser.add_argument(
        "--hubbub-publish",
        choices=["rest", "direct"],
        default=None,
        help="how Hubbub's publisher processes publish: straight to the publish stream "
        "(hubbub.sdk.publisher.Publisher) or through the REST API (default: direct with --compare, "
        "as the peer publishes straight to Redis; rest otherwise)",
    )
    parser.add_argument(
        "--rest-seconds",
        type=float,
        default=5.0,
        help="--all with direct publishing: the extra W3 via REST phase (Hubbub only) lasts "
        "this long; 0 skips it",
    )
    parser.add_argument("--pad", type=int, default=16, help="payload padding (frame ~100 B)")
    parser.add_argument(
        "--compression",
        choices=["none", "deflate"],
        default="none",
        help="offer permessage-deflate from the load clients",
    )
    parser.add_argument(
        "--client-impl",
        choices=sorted(CLIENT_IMPLS),
        default="sansio",
        help="load-client WebSocket layer, both from the websockets library (see the classes)",
    )
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument("--ramp-start", type=float, default=50.0, help="first W1 rate, msg/s")
    parser.add_argument("--ramp-seconds", type=float, default=3.0, help="publishing per step")
    parser.add_argument("--ramp-drain", type=float, default=2.0, help="drain timeout per step")
    parser.add_argument("--ramp-max-steps", type=int, default=10)
    parser.add_argument("--ramp-precision", type=float, default=0.15)
    parser.add_argument("--ramp-p99-ms", type=float, default=100.0)
    parser.add_argument(
        "--ramp-retry-load",
        type=float,
        default=0.3,
        help="a ramp step that failed while other work used at least this many cores runs "
        "once more",
    )
    parser.add_argument("--ramp-budget", type=float, default=120.0, help="seconds per system")
    parser.add_argument("--latency-fraction", type=float, default=0.1)
    parser.add_argument("--idle-settle", type=float, default=3.0, help="W4: pause before RSS")
    parser.add_argument("--idle-cpu-seconds", type=float, default=3.0, help="W4: idle CPU window")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="pause between group joins and the first publish (default: none)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=2.0,
        help="first measure the servers' idle CPU (clients connected) this long",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir of logs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the server processes under cProfile (<name>.prof next to the logs; "
        "inflates their CPU figures)",
    )
    parser.add_argument("--results", type=Path, help="write the report (markdown) to this file")
    parser.add_argument("--json", type=Path, help="write every figure (JSON) to this file")
    parser.add_argument("--details", action="store_true", help="print every figure of each phase")
    args = parser.parse_args(argv)
    if args.compare:
        args.targets = ["hubbub", "socketio"]
    elif not args.targets:
        args.targets = ["hubbub"]
    else:  # Hubbub first (its ramp sets the latency check's rate), no repeats
        args.targets = sorted(set(args.targets), key=lambda n: n != "hubbub")
    if args.all:
        args.workloads = args.workloads or list(DEFAULT_RATES)
        args.ramp = True
        if args.idle is None:
            args.idle = 10_000
    elif args.workloads is None and not args.ramp and not args.idle:
        args.workloads = ["broadcast"]
    args.workloads = list(dict.fromkeys(args.workloads or []))
    args.idle = args.idle or 0
    if args.hubbub_publish is None:
        args.hubbub_publish = "direct" if args.compare else "rest"
    args.rest_phase = (
        args.all
        and args.hubbub_publish == "direct"
        and "hubbub" in args.targets
        and "users" in args.workloads
        and args.rest_seconds > 0
    )
    args.rates = {w: args.rate or getattr(args, f"{w}_rate") for w in DEFAULT_RATES}
    if args.clients < 1 or args.client_procs < 1 or args.seconds <= 0:
        parser.error("--clients, --client-procs and --seconds must be positive")
    if any(r <= 0 for r in args.rates.values()) or args.publisher_procs < 1:
        parser.error("rates and --publisher-procs must be positive")
    args.client_procs = min(args.client_procs, args.clients)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(
        ["python", "bench/quick.py", *(sys.argv[1:] if argv is None else argv)]
    )
    raise_fd_limit()
    # SIGTERM stops the benchmark the way Ctrl-C does: everything it started is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-bench-"))
    cleanup: list[Callable[[], None]] = []
    report: dict[str, Any] | None = None
    try:
        report = run_loop(run_all(args, workdir, cleanup))
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    finally:
        for step in reversed(cleanup):  # idempotent: a no-op after a normal run
            with contextlib.suppress(Exception):
                step()
        issues = report is not None and any(
            part.get("log_issues")
            for part in [*report["sessions"].values(), *report["idle"].values()]
        )
        keep = args.keep_logs or args.profile or report is None or issues
        if keep:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info = machine_and_versions(args, command)
    text = results_markdown(report, args, info)
    if args.details:
        print_details(report)
    print(text)
    if args.results:
        args.results.write_text(text + "\n" + kept_sections(args.results))
        log(f"results written to {args.results}")
    if args.json:
        args.json.write_text(json.dumps({"info": info, **report}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
