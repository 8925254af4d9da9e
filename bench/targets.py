"""The systems under test: Hubbub (gateways and fan-out workers started by the shared launcher,
:class:`hubbub.dev.launcher.LocalDeployment`) and the peers, whose server processes the same
launcher starts: python-socketio (uvicorn processes running ``bench/peer_socketio.py``) and Node
Socket.IO (``node bench/peer_node/server.js``); each system with its own ``redis-server``
(:class:`hubbub.dev.embedded.RedisProcess`)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ACCESS_KEY, BENCH_DIR, HUB, NODE_PEER_DIR, ClientSpec, log
from hubbub.dev.embedded import RedisProcess, free_port
from hubbub.dev.launcher import ChildProcess, LocalDeployment, start_process, stop_all
from hubbub.dev.topologies import RedisClusterProcesses
from hubbub.sdk.client import HubbubClient

STOP_TIMEOUT = 20.0  # seconds a server process gets to drain before it is killed
# A cluster node that does not answer pings this long is flagged failing: long, so that a
# busy 2-core box does not flag a master (the benchmark's masters have no replica to fail
# over to).
CLUSTER_NODE_TIMEOUT_MS = 15000


def cluster_masters(redis: str) -> int:
    """``--redis``: 0 for ``standalone``, N for ``cluster:N``."""
    if redis == "standalone":
        return 0
    kind, _, count = redis.partition(":")
    if kind != "cluster" or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{redis!r}: standalone or cluster:N (N masters, N >= 1)")
    return int(count)


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
        self.redis: RedisProcess | None = None
        self.cluster: RedisClusterProcesses | None = None  # Hubbub, --redis cluster:N
        self.gateways: list[ChildProcess] = []
        self.workers: list[ChildProcess] = []

    @property
    def redis_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.nodes_env()["HUBBUB_REDIS_URL"]
        assert self.redis is not None, "not started"
        return self.redis.url

    def redis_env(self) -> dict[str, str]:
        """The Redis settings a Hubbub process needs (besides ``HUBBUB_REDIS_URL``)."""
        if self.cluster is None:
            return {}
        env = self.cluster.nodes_env()
        del env["HUBBUB_REDIS_URL"]
        return env

    def _start_redis(self) -> None:
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
        stop_all(procs, STOP_TIMEOUT)  # SIGTERM all first, so they drain in parallel
        for proc in procs:
            if proc.killed:
                log(f"{proc.name} did not stop within {STOP_TIMEOUT:g}s: killed it")
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def server_pids(self) -> dict[str, int]:
        """Every server-side process: gateways, workers, and ``redis`` (one redis-server) or
        ``redis-m1`` .. ``redis-mN`` (the cluster's masters, in slot order)."""
        pids = {p.name: p.pid for p in self.gateways + self.workers}
        if self.redis is not None and self.redis.process is not None:
            pids["redis"] = self.redis.process.pid
        if self.cluster is not None:
            for n, master in enumerate(self.cluster.masters(), 1):
                assert master.process is not None
                pids[f"redis-m{n}"] = master.process.pid
        return pids

    def gateway_pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.gateways}

    def client_endpoints(self) -> list[str]:
        return [gw.url for gw in self.gateways]

    def log_files(self) -> list[Path]:
        files = [p.log for p in self.gateways + self.workers if p.log is not None]
        if self.redis is not None:
            files.append(Path(self.redis.directory) / "server.log")
        if self.cluster is not None:
            files += [Path(p.directory) / "server.log" for p in self.cluster.processes]
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
        self.rest: list[HubbubClient] = []  # one per gateway
        self.publish_mode = "rest"  # or "direct" (--hubbub-publish)
        self.redis_topology = "standalone"  # or "cluster:N" (--redis)

    def _start_redis(self) -> None:
        masters = cluster_masters(self.redis_topology)
        if not masters:
            super()._start_redis()
            return
        # No replicas: the benchmark measures the masters' work (a replica would only add
        # replication traffic, and share the same cores).
        self.cluster = RedisClusterProcesses(
            masters, 0, str(self.workdir / "redis-cluster"), CLUSTER_NODE_TIMEOUT_MS
        )
        self.cluster.start()

    async def start(self) -> None:
        self._start_redis()
        deployment = LocalDeployment(
            self.redis_url,
            ACCESS_KEY,
            workdir=self.workdir,
            settings={
                **self.redis_env(),
                "HUBBUB_LOG_LEVEL": "WARNING",
                "HUBBUB_METRICS_PORT": "0",  # workers: no /metrics listener (two would share one)
                "PYTHONUNBUFFERED": "1",
            },
            gateway_id="bench-{name}",
            worker_id="bench-{name}",
            # Own session: a Ctrl-C reaches only the orchestrator, which stops them in order.
            new_session=True,
            profile=self.profile,
        )
        self.gateways, self.workers = deployment.gateways, deployment.workers
        for _ in range(self.n_gateways):
            deployment.launch_gateway()
        for _ in range(self.n_workers):
            deployment.start_worker()
        await asyncio.gather(*(gw.wait_healthy(30.0) for gw in self.gateways))
        await asyncio.sleep(0.5)
        for proc in self.workers:
            if proc.returncode is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.output()}")
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
            return {"kind": "hubbub-direct", "redis_url": self.redis_url, "key_prefix": "hubbub",
                    "redis_env": self.redis_env()}  # fmt: skip
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
    process_name = "sio"  # the server processes are sio1, sio2, ...

    def server_argv(self, port: int) -> list[str]:
        return [sys.executable, str(BENCH_DIR / "peer_socketio.py"), "--port", str(port),
                "--redis-url", self.redis_url]  # fmt: skip

    def server_env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONUNBUFFERED="1")

    async def start(self) -> None:
        self._start_redis()
        env = self.server_env()
        for n in range(1, self.n_gateways + 1):
            port, name = free_port(), f"{self.process_name}{n}"
            profile = self.workdir / f"{name}.prof" if self.profile else None
            log = self.workdir / f"{name}.log"
            peer = start_process(
                name,
                self.server_argv(port),
                env=env,
                log=log,
                port=port,
                new_session=True,
                profile=profile,
            )
            self.gateways.append(peer)
        await asyncio.gather(*(gw.wait_healthy(30.0, "/bench/connected") for gw in self.gateways))
        await asyncio.sleep(0.5)  # let each subscribe to the Redis channel

    def publisher_config(self, mode: str | None = None) -> dict[str, Any]:
        return {"kind": "socketio", "redis_url": self.redis_url}

    async def stale(self, connection_ids: list[str], grace: float = 3.0) -> int | None:
        """Clients the server processes still hold after they closed (``/bench/connected``)."""
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


def node_binary() -> str:
    """The ``node`` executable, and the peer's packages installed (``npm ci``, as bench/run
    does), or an error that says what to run."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("the Node peer needs node (20 or later) on PATH")
    if not (NODE_PEER_DIR / "node_modules").is_dir():
        raise RuntimeError(f"the Node peer's packages are missing: run npm ci in {NODE_PEER_DIR}")
    return node


class NodeTarget(SocketIOTarget):
    """The second peer: its own Redis + N Node processes running Socket.IO 4 with
    ``@socket.io/redis-adapter`` (``bench/peer_node/server.js``, the counterpart of
    ``bench/peer_socketio.py``); published to by ``@socket.io/redis-emitter``."""

    name = "node"
    label = "Node Socket.IO"
    process_name = "node"  # node1, node2, ...

    def server_argv(self, port: int) -> list[str]:
        return [node_binary(), str(NODE_PEER_DIR / "server.js"), "--port", str(port),
                "--redis-url", self.redis_url]  # fmt: skip

    def server_env(self) -> dict[str, str]:
        return dict(os.environ, NODE_ENV="production")

    async def start(self) -> None:
        if self.profile:  # --profile runs Python servers under cProfile; not a Node process
            log("--profile: the Node peer's processes run without a profiler")
            self.profile = False
        await super().start()

    def publisher_config(self, mode: str | None = None) -> dict[str, Any]:
        return {"kind": "node", "redis_url": self.redis_url}


TARGETS: dict[str, type[Target]] = {
    "hubbub": HubbubTarget,
    "socketio": SocketIOTarget,
    "node": NodeTarget,
}
PEERS = ("socketio", "node")  # what --peer chooses from (bench/__main__.py)
