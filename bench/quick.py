"""A first, honest Hubbub benchmark: real processes, real sockets, server CPU per delivery.

    .venv/bin/python bench/quick.py --clients 200 --rate 50 --seconds 10 \
        [--workload broadcast|groups|users] [--client-procs 2] [--json]

What runs (every piece a separate OS process):

- one ``redis-server`` (:class:`hubbub.embedded.RedisProcess`), two gateways
  (``python -m hubbub_gateway.main``) and two fan-out workers (``python -m hubbub_fanout.main``);
- ``--client-procs`` load-client processes, each holding its share of raw SignalR JSON
  WebSocket connections (the ``websockets`` library), spread evenly over both gateways;
- the publisher, in this process: ``--rate`` REST sends/s spread over both gateways, with a
  few concurrent requests so it is not the bottleneck.

Every message carries its publish time (``time.time()``, taken just before the REST call) and a
sequence number; each client takes ``receive time - publish time`` for *every* message it gets,
and checks it got no duplicate and nothing meant for someone else.

**Server CPU per delivery** = user+system CPU (``/proc/<pid>/stat``) of the gateways, the
workers and redis-server, from the first publish until every expected delivery arrived (or the
drain timeout), divided by the deliveries received. The load clients' own CPU is reported too:
when a client process is near 1.0 CPU-s per second, it (not the server) is the bottleneck and the
latency figures mostly measure it.

Two WebSocket layers for the load clients, both from ``websockets``: ``--client-impl sansio``
(default; its sans-I/O protocol on a bare asyncio transport, ~20 % less client CPU and lower
client-side latency at 1,000 connections) and ``--client-impl websockets`` (its asyncio client).

Structure, so that a comparison (python-socketio, ...) can be added later: a *target* (here
:class:`HubbubTarget`) starts and stops the server side, names its server PIDs, publishes,
manages groups and answers whether a connection is still registered; a *client protocol* (here
SignalR: :func:`open_signalr_client` and :class:`SignalRReceiver`) connects one load client and
counts what it receives into :class:`ClientStats`; a *workload* picks each message's recipients
and knows how many deliveries that should make. Adding a system means one more target class and
one more client protocol (a Socket.IO receiver); orchestration, measurement and report stay.

Other figures: the latency of each message's *first* recipient (the pipeline without the fan-out
burst), the servers' idle CPU with the clients connected, connections still registered after
their clients closed (leaks), warnings and errors in the server logs (kept in a temp dir when
there are any), and the CPU the rest of the machine used meanwhile: on a shared machine, other
jobs skew every figure, so look at that line before trusting a run.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import resource
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

T = TypeVar("T")
HUB = "chat"
TARGET_METHOD = "newMessage"
RS = b"\x1e"
GROUP_SIZE = 10
CLIENT_PING_INTERVAL = 10.0  # the gateway closes clients it has not heard from for 30 s
ACCESS_KEY = "bench-access-key-0123456789abcdef0123456789"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ====================================================================== server-side CPU


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


class HubbubTarget:
    """Redis + N gateways + M fan-out workers, as real processes."""

    name = "hubbub"
    client_protocol = "signalr"

    def __init__(
        self, workdir: Path, gateways: int = 2, workers: int = 2, profile: bool = False
    ) -> None:
        self.workdir = workdir
        self.profile = profile  # run gateways and workers under cProfile (<name>.prof)
        self.n_gateways = gateways
        self.n_workers = workers
        self.redis: Any = None
        self.gateways: list[ServerProc] = []
        self.workers: list[ServerProc] = []
        self.rest: list[Any] = []  # one HubbubClient per gateway

    # ------------------------------------------------------------ lifecycle

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HUBBUB_REDIS_URL=self.redis.url,
            HUBBUB_ACCESS_KEY=ACCESS_KEY,
            HUBBUB_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def _spawn(self, name: str, module: str, env: dict[str, str], port: int | None) -> ServerProc:
        logfile = self.workdir / f"{name}.log"
        with logfile.open("ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", module]
                if not self.profile
                else [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    f"{logfile.with_suffix('.prof')}",
                    "-m",
                    module,
                ],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C reaches only the orchestrator, which stops them in order.
                start_new_session=True,
            )
        return ServerProc(name, process, logfile, port)

    async def start(self) -> None:
        import httpx

        from hubbub.client import HubbubClient
        from hubbub.embedded import RedisProcess, free_port

        self.redis = RedisProcess(directory=str(self.workdir / "redis"))
        os.makedirs(self.redis.directory, exist_ok=True)
        self.redis.start()
        for n in range(1, self.n_gateways + 1):
            port = free_port()
            env = self._env(HUBBUB_PORT=str(port), HUBBUB_GATEWAY_ID=f"bench-gw{n}")
            self.gateways.append(self._spawn(f"gw{n}", "hubbub_gateway.main", env, port))
        for n in range(1, self.n_workers + 1):
            env = self._env(HUBBUB_WORKER_NAME=f"bench-worker{n}")
            self.workers.append(self._spawn(f"worker{n}", "hubbub_fanout.main", env, None))
        async with httpx.AsyncClient() as http:
            await asyncio.gather(*(self._wait_healthy(http, gw) for gw in self.gateways))
        await asyncio.sleep(0.5)
        for proc in self.workers:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log.read_text(errors='replace')}")
        # httpx's default pool (100 connections) leaves room for the concurrent publishers.
        self.rest = [HubbubClient(gw.url, ACCESS_KEY, HUB, timeout=30.0) for gw in self.gateways]

    async def _wait_healthy(self, http: Any, proc: ServerProc, within: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{proc.url}/api/health", timeout=1)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{proc.name} not healthy after {within}s")

    async def stop(self) -> None:
        for client in self.rest:
            with contextlib.suppress(Exception):
                await client.aclose()
        self.rest = []
        self.stop_processes()

    def stop_processes(self) -> None:
        """Synchronous, idempotent: also used from the Ctrl-C / atexit path."""
        procs = self.gateways + self.workers
        for proc in procs:  # SIGTERM all first, so gateways drain in parallel
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()
        if self.redis is not None:
            self.redis.stop()

    # ------------------------------------------------------------ what the benchmark needs

    def server_pids(self) -> dict[str, int]:
        pids = {p.name: p.process.pid for p in self.gateways + self.workers}
        if self.redis is not None and self.redis.process is not None:
            pids["redis"] = self.redis.process.pid
        return pids

    def client_endpoints(self) -> list[str]:
        return [gw.url for gw in self.gateways]

    def log_files(self) -> list[Path]:
        files = [p.log for p in self.gateways + self.workers]
        if self.redis is not None:
            files.append(Path(self.redis.directory) / "server.log")
        return files

    async def publish(self, n: int, recipient: tuple[str, str], payload: dict[str, Any]) -> None:
        """Send one message through gateway ``n % gateways``; raises on any non-2xx."""
        client = self.rest[n % len(self.rest)]
        kind, name = recipient
        if kind == "all":
            await client.send_to_all(TARGET_METHOD, [payload])
        elif kind == "group":
            await client.send_to_group(name, TARGET_METHOD, [payload])
        elif kind == "user":
            await client.send_to_user(name, TARGET_METHOD, [payload])
        else:
            raise ValueError(kind)

    async def add_to_group(self, n: int, group: str, connection_id: str) -> None:
        await self.rest[n % len(self.rest)].add_connection_to_group(group, connection_id)

    async def connection_registered(self, n: int, connection_id: str) -> bool:
        """Does the server still list this connection (after its client closed it)?"""
        exists: bool = await self.rest[n % len(self.rest)].connection_exists(connection_id)
        return exists


TARGETS: dict[str, Callable[..., HubbubTarget]] = {"hubbub": HubbubTarget}


# ====================================================================== load clients


@dataclass
class ClientStats:
    """What one load-client process saw; shipped to the orchestrator at the end."""

    received: int = 0
    duplicates: int = 0
    misdelivered: int = 0
    other_records: int = 0
    closed_by_server: int = 0
    close_reasons: dict[str, int] = field(default_factory=dict)
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    last_receive: float = 0.0
    first_latency: dict[int, float] = field(default_factory=dict)  # seq -> earliest latency
    stopping: bool = False  # our own closes at the end are not the server's doing

    def record_close(self, reason: str) -> None:
        self.closed_by_server += 1
        self.close_reasons[reason] = self.close_reasons.get(reason, 0) + 1


@dataclass
class ClientSpec:
    index: int
    base_url: str
    user: str
    group: str


class SignalRReceiver:
    """The SignalR JSON side of one load client: the handshake answer, then every record.

    Latency is sampled on every Invocation (receive time - the publish time it carries);
    a repeated sequence number is a duplicate, a message for another group or user a
    misdelivery. Pings (type 6) are ignored; a Close (type 7) is recorded with its error.
    """

    __slots__ = ("closed", "group", "handshake", "loads", "seen", "stats", "user")

    def __init__(self, spec: ClientSpec, stats: ClientStats, handshake: asyncio.Future[None]):
        import orjson

        self.loads = orjson.loads
        self.stats = stats
        self.group, self.user = spec.group, spec.user
        self.handshake = handshake
        self.seen: set[int] = set()
        self.closed = False

    def feed(self, data: bytes, now: float) -> bool:
        """One WebSocket message; False once the server sent a Close record."""
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
                payload = message["arguments"][0]
                seq = payload["s"]
                if seq in self.seen:
                    stats.duplicates += 1
                    continue
                self.seen.add(seq)
                stats.received += 1
                latency = now - payload["t"]
                stats.latencies.append(latency)
                if latency < stats.first_latency.get(seq, 1e9):
                    stats.first_latency[seq] = latency
                stats.last_receive = now
                group, user = payload.get("g"), payload.get("u")
                if (group is not None and group != self.group) or (
                    user is not None and user != self.user
                ):
                    stats.misdelivered += 1
            elif kind == 6:
                continue
            elif kind == 7:
                self.closed = True
                stats.record_close(str(message.get("error") or "Close record without error"))
                return False
            else:
                stats.other_records += 1
        return True

    def lost(self, reason: str) -> None:
        """The socket ended (for whatever reason)."""
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(reason))
        elif not self.closed and not self.stats.stopping:
            self.stats.record_close(reason)
        self.closed = True


class WebsocketsClient:
    """``--client-impl websockets``: the websockets library's asyncio client, a reader task per
    connection. Simple and obviously right; costs a task wake-up, a future and a message
    assembler per frame."""

    def __init__(self, receiver: SignalRReceiver) -> None:
        self.receiver = receiver
        self.extensions = ""
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None

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

    def __init__(self, receiver: SignalRReceiver) -> None:
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

    async def send(self, text: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.protocol.send_text(text.encode())
        self._flush()

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


CLIENT_IMPLS: dict[str, Callable[[SignalRReceiver], WebsocketsClient | SansIOClient]] = {
    "websockets": WebsocketsClient,
    "sansio": SansIOClient,
}
HANDSHAKE = '{"protocol":"json","version":1}\x1e'
PING = '{"type":6}\x1e'


async def open_signalr_client(
    spec: ClientSpec, http: Any, stats: ClientStats, impl: str, compression: bool
) -> tuple[str, WebsocketsClient | SansIOClient]:
    """Negotiate, open the WebSocket, complete the SignalR handshake; then the receiver counts
    everything that arrives. Returns the connection id and the client."""
    from hubbub.tokens import mint_token

    token = mint_token(ACCESS_KEY, "bench", user_id=spec.user)
    response = await http.post(
        f"{spec.base_url}/hubs/{HUB}/negotiate?negotiateVersion=1",
        headers={"Authorization": f"Bearer {token}"},
    )
    response.raise_for_status()
    body = response.json()
    ws_url = spec.base_url.replace("http://", "ws://", 1)
    url = f"{ws_url}/hubs/{HUB}?id={body['connectionToken']}&access_token={token}"
    receiver = SignalRReceiver(spec, stats, asyncio.get_running_loop().create_future())
    client = CLIENT_IMPLS[impl](receiver)
    await client.open(url, compression)
    try:
        await client.send(HANDSHAKE)
        await asyncio.wait_for(asyncio.shield(receiver.handshake), 30)
    except BaseException:
        await client.close()
        raise
    return body["connectionId"], client


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
    clients: dict[int, WebsocketsClient | SansIOClient] = {}
    ids: dict[int, str] = {}
    errors: list[str] = []
    limit = asyncio.Semaphore(config["connect_concurrency"])

    async def open_one(spec: ClientSpec, http: httpx.AsyncClient) -> None:
        async with limit:
            try:
                ids[spec.index], clients[spec.index] = await open_signalr_client(
                    spec, http, stats, config["client_impl"], config["compression"]
                )
            except Exception as exc:
                errors.append(f"client {spec.index}: {exc!r}")

    async def pinger() -> None:
        while True:
            await asyncio.sleep(CLIENT_PING_INTERVAL)
            for client in list(clients.values()):
                with contextlib.suppress(Exception):
                    await client.send(PING)

    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=config["connect_concurrency"])
    ) as http:
        await asyncio.gather(*(open_one(s, http) for s in specs))
    ping_task = loop.create_task(pinger())
    first = next(iter(clients.values()), None)
    conn.send({"ready": ids, "errors": errors, "extensions": first.extensions if first else ""})

    cpu_start = wall_start = 0.0
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "start":
            cpu_start, wall_start = time.process_time(), time.monotonic()
        elif command == "count":
            conn.send(stats.received + stats.duplicates)
        elif command == "stop":
            cpu = time.process_time() - cpu_start
            wall = time.monotonic() - wall_start
            stats.stopping = True
            conn.send(
                {
                    "received": stats.received,
                    "duplicates": stats.duplicates,
                    "misdelivered": stats.misdelivered,
                    "other_records": stats.other_records,
                    "closed_by_server": stats.closed_by_server,
                    "close_reasons": stats.close_reasons,
                    "latencies": stats.latencies.tobytes(),
                    "last_receive": stats.last_receive,
                    "first_latency": stats.first_latency,
                    "cpu_seconds": cpu,
                    "wall_seconds": wall,
                    "connections": len(clients),
                }
            )
            break
    ping_task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True), 15
        )
    conn.send("closed")


class ClientPool:
    """The load-client processes and the pipe to each."""

    def __init__(self, procs: int) -> None:
        self.n = procs
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[multiprocessing.connection.Connection] = []

    async def _recv(self, pipe: multiprocessing.connection.Connection, within: float) -> Any:
        loop = asyncio.get_running_loop()

        def wait() -> Any:
            if not pipe.poll(within):
                raise TimeoutError("load client did not answer")
            return pipe.recv()

        return await loop.run_in_executor(None, wait)

    async def start(
        self, specs: list[ClientSpec], impl: str, compression: bool, within: float
    ) -> list[dict[str, Any]]:
        context = multiprocessing.get_context("spawn")
        share = -(-len(specs) // self.n)
        for p in range(self.n):
            # Contiguous shares: each process holds clients of every gateway (they alternate).
            mine = [s.__dict__ for s in specs[p * share : (p + 1) * share]]
            parent, child = context.Pipe()
            config = {
                "specs": mine,
                "client_impl": impl,
                "compression": compression,
                "connect_concurrency": 32,
            }
            process = context.Process(
                target=client_process_main, args=(child, config), name=f"client{p}", daemon=True
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)
        return list(await asyncio.gather(*(self._recv(p, within) for p in self.pipes)))

    def broadcast(self, command: str) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    async def count(self) -> int:
        self.broadcast("count")
        return sum(await asyncio.gather(*(self._recv(p, 10) for p in self.pipes)))

    async def stop(self) -> list[dict[str, Any]]:
        self.broadcast("stop")
        return list(await asyncio.gather(*(self._recv(p, 60) for p in self.pipes)))

    async def close(self) -> None:
        """The normal way out: each client closes its sockets, says so, and exits."""
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                await self._recv(pipe, 15)  # "closed"
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


class Workload:
    """Who each message goes to, and how many deliveries that should make."""

    name = ""

    def __init__(self, specs: list[ClientSpec], connected: dict[int, str], seed: int) -> None:
        self.specs = specs
        self.connected = connected  # client index -> connection id (only those that connected)
        self.rng = random.Random(seed)

    async def prepare(self, target: HubbubTarget) -> None:
        pass

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        """(recipient, fields the payload carries for checking, expected deliveries)."""
        raise NotImplementedError


class Broadcast(Workload):
    name = "broadcast"

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        return ("all", ""), {}, len(self.connected)


class Groups(Workload):
    name = "groups"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.members: dict[str, list[int]] = {}
        for spec in self.specs:
            if spec.index in self.connected:
                self.members.setdefault(spec.group, []).append(spec.index)
        self.groups = sorted(self.members)

    async def prepare(self, target: HubbubTarget) -> None:
        limit = asyncio.Semaphore(32)

        async def join(n: int, group: str, index: int) -> None:
            async with limit:
                await target.add_to_group(n, group, self.connected[index])

        jobs = [
            join(n, group, index)
            for n, (group, index) in enumerate(
                (g, i) for g, members in self.members.items() for i in members
            )
        ]
        await asyncio.gather(*jobs)

    def next(self) -> tuple[tuple[str, str], dict[str, str], int]:
        group = self.rng.choice(self.groups)
        return ("group", group), {"g": group}, len(self.members[group])


class Users(Workload):
    name = "users"

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


# ====================================================================== publisher


@dataclass
class PublishResult:
    published: int = 0
    failed: int = 0
    expected: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    request_latencies: list[float] = field(default_factory=list)
    started: float = 0.0  # time.time() of the first publish
    duration: float = 0.0
    max_lag: float = 0.0  # how far behind schedule the publisher got


async def publish(
    target: HubbubTarget,
    workload: Workload,
    rate: float,
    seconds: float,
    concurrency: int,
    pad: int,
) -> PublishResult:
    result = PublishResult()
    total = max(1, int(rate * seconds))
    limit = asyncio.Semaphore(concurrency)
    padding = "x" * pad

    async def one(seq: int) -> None:
        try:
            recipient, check, expected = workload.next()
            payload: dict[str, Any] = {"s": seq, **check, "p": padding}
            sent = time.time()
            payload["t"] = sent
            try:
                await target.publish(seq, recipient, payload)
            except Exception as exc:
                result.failed += 1
                key = repr(exc)[:160]
                result.errors[key] = result.errors.get(key, 0) + 1
                return
            result.request_latencies.append(time.time() - sent)
            result.published += 1
            result.expected += expected
        finally:
            limit.release()

    tasks = []
    start = time.monotonic()
    result.started = time.time()
    for seq in range(total):
        due = start + seq / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await limit.acquire()
        result.max_lag = max(result.max_lag, time.monotonic() - due)
        tasks.append(asyncio.create_task(one(seq)))
    await asyncio.gather(*tasks)
    result.duration = time.monotonic() - start
    return result


# ====================================================================== report


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


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
            found[
                path.parent.name + "/" + path.name if path.name == "server.log" else path.name
            ] = {
                "count": len(hits),
                "first": hits[:8],
            }
    return found


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict[str, Any]) -> None:
    r = report
    lat = r["latency_ms"]
    rows = [
        (
            "workload",
            f"{r['workload']} ({r['target']}, {r['clients_connected']}/{r['clients']} "
            f"clients, {r['client_procs']} {r['client_impl']} client procs, "
            f"frame ~{r['frame_bytes']} B)",
        ),
        (
            "messages published",
            f"{r['published']} ({r['publish_failed']} failed) in "
            f"{r['publish_seconds']:.2f} s = {r['publish_rate']:.1f}/s"
            + (
                f"  PUBLISHER FELL BEHIND the {r['rate']:g}/s schedule by up to "
                f"{r['publish_max_lag_s']:.2f} s"
                if r["publish_max_lag_s"] > 0.25
                else ""
            ),
        ),
        (
            "publish request p50 / p99 (ms)",
            f"{fmt(r['publish_request_ms']['p50'], '.1f')} / "
            f"{fmt(r['publish_request_ms']['p99'], '.1f')}",
        ),
        ("deliveries expected", f"{r['expected']}"),
        ("deliveries received", f"{r['received']}"),
        ("deliveries lost", f"{r['lost']} ({r['lost_pct']:.3f} %)"),
        ("duplicates / misdelivered", f"{r['duplicates']} / {r['misdelivered']}"),
        ("closed by server", f"{r['closed_by_server']} {r['close_reasons'] or ''}"),
        (
            "still registered after close",
            f"{r['stale_registrations']} of {r['clients_connected']} connections",
        ),
        ("deliveries/s", f"{r['deliveries_per_s']:.0f}"),
        (
            "latency p50 / p95 / p99 / max (ms)",
            f"{fmt(lat['p50'], '.1f')} / {fmt(lat['p95'], '.1f')}"
            f" / {fmt(lat['p99'], '.1f')} / {fmt(lat['max'], '.1f')}",
        ),
        (
            "first-recipient latency p50 / p99 (ms)",
            f"{fmt(r['first_latency_ms']['p50'], '.1f')} / "
            f"{fmt(r['first_latency_ms']['p99'], '.1f')}  (per message, earliest client)",
        ),
        (
            "drain (after last publish)",
            f"{r['drain_seconds']:.2f} s{' (TIMED OUT)' if r['drain_timed_out'] else ''}",
        ),
        ("server CPU µs / delivered msg", f"{fmt(r['server_cpu_us_per_delivery'], '.1f')}"),
        (
            "server CPU µs / published msg",
            f"{fmt(r['server_cpu_us_per_message'], '.0f')}  (idle, clients connected: "
            f"{fmt(r['server_idle_cores'], '.3f')} cores)",
        ),
        (
            "server CPU s (window)",
            f"{r['server_cpu_seconds']:.2f} over {r['window_seconds']:.2f} s = "
            f"{r['server_cpu_seconds'] / r['window_seconds']:.2f} cores  "
            + " ".join(f"{k}={v:.2f}" for k, v in r["server_cpu_by_process"].items()),
        ),
        (
            "load-client CPU s",
            f"{sum(r['client_cpu_seconds']):.2f} = "
            + " + ".join(f"{c:.2f}" for c in r["client_cpu_seconds"])
            + f"  (busiest {r['client_cpu_max_utilisation']:.2f} CPU-s/s)",
        ),
        ("publisher (this process) CPU s", f"{r['publisher_cpu_seconds']:.2f}"),
        (
            "other load on the machine",
            f"{r['other_cpu_cores']:.2f} cores busy (of {r['machine_cores']}) with other work",
        ),
        ("ws extensions", r["ws_extensions"] or "none"),
        ("source", r["source"]),
        ("server log warnings/errors", str(sum(v["count"] for v in r["log_issues"].values()))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for name, issue in r["log_issues"].items():
        print(f"  {name}: {issue['count']} lines, first:")
        for line in issue["first"]:
            print(f"    {line[:300]}")
    if r["connect_errors"]:
        print(f"  connect errors ({len(r['connect_errors'])}), first: {r['connect_errors'][:3]}")
    if r["publish_errors"]:
        print(f"  publish errors: {r['publish_errors']}")


# ====================================================================== orchestration


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
        )


async def run(
    args: argparse.Namespace, workdir: Path, cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    target = TARGETS[args.target](
        workdir, gateways=args.gateways, workers=args.workers, profile=args.profile
    )
    cleanup.append(target.stop_processes)
    pool = ClientPool(args.client_procs)
    cleanup.append(pool.terminate)
    log(
        f"starting {args.target}: redis + {args.gateways} gateways + {args.workers} workers "
        f"(logs in {workdir})"
    )
    await target.start()
    try:
        endpoints = target.client_endpoints()
        specs = [
            ClientSpec(i, endpoints[i % len(endpoints)], f"u{i}", f"g{i // GROUP_SIZE}")
            for i in range(args.clients)
        ]
        log(f"connecting {args.clients} clients from {args.client_procs} processes")
        t0 = time.monotonic()
        ready = await pool.start(specs, args.client_impl, args.compression == "deflate", 300)
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
        workload = WORKLOADS[args.workload](specs, connected, args.seed)
        await workload.prepare(target)
        if args.settle:
            await asyncio.sleep(args.settle)

        pids = target.server_pids()
        idle_cores = None
        if args.idle_seconds > 0:  # what the server side burns with the clients connected, idle
            idle_before, idle_start = cpu_snapshot(pids), time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            idle_after = cpu_snapshot(pids)
            idle_cores = sum(idle_after[k] - idle_before[k] for k in pids) / (
                time.monotonic() - idle_start
            )
        pool.broadcast("start")
        cpu_before = cpu_snapshot(pids)
        machine_before, self_before = machine_busy_seconds(), time.process_time()
        window_start = time.monotonic()
        log(f"publishing {args.workload} at {args.rate}/s for {args.seconds} s")
        pub = await publish(target, workload, args.rate, args.seconds, args.publishers, args.pad)
        publish_end = time.monotonic()
        log(
            f"published {pub.published} ({pub.failed} failed); waiting for "
            f"{pub.expected} deliveries (at most {args.drain_timeout} s)"
        )
        got = 0
        while True:
            got = await pool.count()
            if got >= pub.expected or time.monotonic() - publish_end > args.drain_timeout:
                break
            await asyncio.sleep(0.05)
        drain_end = time.monotonic()
        cpu_after = cpu_snapshot(pids)
        machine_busy = machine_busy_seconds() - machine_before
        self_cpu = time.process_time() - self_before
        results = await pool.stop()
        await pool.close()
        stale = await count_stale(target, list(connected.values()))
    finally:
        pool.terminate()
        log("stopping servers")
        await target.stop()

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
    last_receive = max((r["last_receive"] for r in results), default=0.0)
    active = max(1e-9, (last_receive - pub.started) if received else publish_end - window_start)
    close_reasons: dict[str, int] = {}
    for res in results:
        for reason, n in res["close_reasons"].items():
            close_reasons[reason] = close_reasons.get(reason, 0) + n
    sample_frame = json.dumps(
        {
            "type": 1,
            "target": TARGET_METHOD,
            "arguments": [{"s": 12345, "g": "g12", "p": "x" * args.pad, "t": time.time()}],
        },
        separators=(",", ":"),
    )
    return {
        "target": args.target,
        "workload": args.workload,
        "clients": args.clients,
        "clients_connected": len(connected),
        "client_procs": args.client_procs,
        "client_impl": args.client_impl,
        "rate": args.rate,
        "seconds": args.seconds,
        "frame_bytes": len(sample_frame) + 1,
        "published": pub.published,
        "publish_failed": pub.failed,
        "publish_errors": pub.errors,
        "publish_seconds": pub.duration,
        "publish_rate": pub.published / pub.duration if pub.duration else 0.0,
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
        "window_seconds": drain_end - window_start,
        "server_cpu_seconds": server_total,
        "server_cpu_by_process": server_cpu,
        "server_cpu_us_per_delivery": server_total / received * 1e6 if received else None,
        "server_cpu_us_per_message": server_total / pub.published * 1e6 if pub.published else None,
        "server_idle_cores": idle_cores,
        "client_cpu_seconds": [r["cpu_seconds"] for r in results],
        "publisher_cpu_seconds": self_cpu,
        # Everything else the machine ran meanwhile (other jobs skew every figure above).
        "other_cpu_cores": max(
            0.0,
            machine_busy - server_total - sum(r["cpu_seconds"] for r in results) - self_cpu,
        )
        / (drain_end - window_start),
        "machine_cores": os.cpu_count(),
        "client_cpu_max_utilisation": max(
            (r["cpu_seconds"] / r["wall_seconds"] for r in results if r["wall_seconds"]),
            default=0.0,
        ),
        "ws_extensions": ready[0]["extensions"] if ready else "",
        "connect_errors": connect_errors,
        "stale_registrations": stale,
        "log_issues": scan_logs(target.log_files()),
        "logs": str(workdir),
        "source": source_state(),
    }


async def count_stale(target: HubbubTarget, connection_ids: list[str], grace: float = 3.0) -> int:
    """Connections the server still lists after their clients closed them (leaks)."""
    remaining = connection_ids
    deadline = time.monotonic() + grace
    limit = asyncio.Semaphore(32)

    async def registered(n: int, connection_id: str) -> bool:
        async with limit:
            return await target.connection_registered(n, connection_id)

    while remaining:
        found = await asyncio.gather(*(registered(n, c) for n, c in enumerate(remaining)))
        remaining = [c for c, f in zip(remaining, found, strict=True) if f]
        if not remaining or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return len(remaining)


def source_state() -> str:
    """The commit measured, and whether the working tree had local changes (outside bench/)."""
    root = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *argv], capture_output=True, text=True, timeout=10
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


def fmt_ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50, help="messages published per second")
    parser.add_argument("--seconds", type=float, default=10, help="publishing duration")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="broadcast")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--target", choices=sorted(TARGETS), default="hubbub")
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--publishers", type=int, default=8, help="concurrent REST requests")
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
        help="run gateways and workers under cProfile (<name>.prof next to the logs; "
        "inflates their CPU figures)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.client_procs < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--clients, --client-procs, --rate and --seconds must be positive")
    args.client_procs = min(args.client_procs, args.clients)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    # SIGTERM stops the benchmark the way Ctrl-C does: everything it started is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-bench-"))
    cleanup: list[Callable[[], None]] = []
    report: dict[str, Any] | None = None
    try:
        report = run_loop(run(args, workdir, cleanup))
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    finally:
        for step in reversed(cleanup):  # idempotent: a no-op after a normal run
            with contextlib.suppress(Exception):
                step()
        keep = args.keep_logs or args.profile or report is None or bool(report["log_issues"])
        if keep:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if report is not None:
                report["logs"] = None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
