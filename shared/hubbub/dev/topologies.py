"""Real Redis Cluster and Sentinel topologies on loopback ports, for tests and benchmarks.

Built on :class:`~hubbub.dev.embedded.RedisProcess`: every node is a real ``redis-server`` child
process with its own directory, so failover, resharding and replication are Redis's own, not a
simulation. Synchronous on purpose (like :mod:`.embedded`): fixtures and benchmark drivers call
these from plain code, and every wait polls the servers against a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import redis
from redis.crc import key_slot

from hubbub.dev.embedded import RedisProcess, find_server_binary, free_port

HOST = "127.0.0.1"
SLOTS = 16384

# redis-py's Connection is not annotated; through this alias its calls type-check as Any.
_Connection: Callable[..., Any] = redis.Connection


class _Link:
    """A connection to one node, replies unparsed (no redis-py response callbacks), RESP2.

    Opened per command for polls (nodes come and go, and a pooled connection to a killed node
    would only add stale-socket errors), kept for a burst such as a slot migration.
    """

    def __init__(self, port: int, timeout: float = 2.0) -> None:
        self._conn = _Connection(
            host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
            decode_responses=True, protocol=2,  # flat lists, whatever the client default
        )  # fmt: skip
        self._conn.connect()

    def __call__(self, *args: str | int) -> Any:
        self._conn.send_command(*args)
        return self._conn.read_response()

    def close(self) -> None:
        self._conn.disconnect()


def _call(port: int, *args: str | int, timeout: float = 2.0) -> Any:
    """One command on a fresh connection."""
    link = _Link(port, timeout)
    try:
        return link(*args)
    finally:
        link.close()


def _parse_info(text: str) -> dict[str, str]:
    """INFO / CLUSTER INFO text as a dict (section headers have no colon)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name] = value
    return fields


def _info(port: int, section: str) -> dict[str, str]:
    return _parse_info(_call(port, "INFO", section))


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (errors count as "not yet": nodes are restarting) until it holds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return
            last_error = None
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(0.02)


def _alive(process: RedisProcess) -> bool:
    return process.process is not None and process.process.poll() is None


def _kill(process: RedisProcess) -> None:
    """SIGKILL: a crash, not a shutdown (no nodes.conf save, no goodbye to the replicas)."""
    if process.process is not None:
        process.process.kill()
        process.process.wait()
        process.process = None


# A replica's full sync starts at once: by default a diskless sync waits 5 s for more replicas.
_FAST_SYNC = ("--repl-diskless-sync-delay", "0")

# --------------------------------------------------------------------------------------------
# Cluster


@dataclass(frozen=True)
class _Node:
    """One line of CLUSTER NODES, as one node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]
    connected: bool

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _parse_nodes(text: str) -> list[_Node]:
    nodes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@")[0]
        slots: set[int] = set()
        for spec in parts[8:]:
            if spec.startswith("["):  # an importing/migrating marker, not ownership
                continue
            first, _, last = spec.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        nodes.append(
            _Node(
                node_id=parts[0],
                port=int(address.rsplit(":", 1)[1]),
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                slots=frozenset(slots),
                connected=parts[7] == "connected",
            )
        )
    return nodes


class RedisClusterProcesses:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on loopback.
    Three or more masters are created by ``redis-cli --cluster create``; 1 or 2 (which it
    refuses) by hand, the same way (:meth:`_assemble`).

    Settings chosen for quick, certain failover in tests: a short node timeout; replica
    validity factor 0 (a replica always may take over, however long its link was down); and
    full coverage not required, so the surviving masters keep serving their slots while one
    shard fails over (as production should be configured). Waits therefore check slot
    coverage themselves rather than trusting ``cluster_state:ok`` alone.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        directory: str | None = None,
        node_timeout_ms: int = 1000,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least 1 master and 0 or more replicas")
        self.master_count = masters
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        self._owns_directory = directory is None
        self.directory = os.path.abspath(directory or tempfile.mkdtemp(prefix="hubbub-cluster-"))
        self.processes: list[RedisProcess] = []
        self._a_slot_of: dict[int, int] = {}  # port of a killed master -> one of its slots
        self._ids: dict[int, str] = {}  # port -> node id (stable across restarts: nodes.conf)
        self._taken: set[int] = set()  # ports handed out, client and bus alike
        self._bus_ports: dict[int, int] = {}  # port -> cluster bus port
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, create the cluster, and return once every node agrees it is usable.

        About 2 s, all of it Redis's: ``redis-cli --cluster create`` sleeps a second while the
        nodes meet, and a master reports ``cluster_state:ok`` no sooner than 2 s after it
        started. A failure part-way stops whatever was started, so no server leaks.
        """
        try:
            for _ in range(self.master_count * (1 + self.replicas_per_master)):
                self.processes.append(self._new_process())
                self.processes[-1].start()
            for process in self.processes:
                self._ids[process.port] = _call(process.port, "CLUSTER", "MYID")
            self._create(timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _free_port(self) -> int:
        """A free port not already handed to another node (the kernel may offer one twice)."""
        while (port := free_port()) in self._taken:
            pass
        self._taken.add(port)
        return port

    def _new_process(self) -> RedisProcess:
        port = self._free_port()
        bus_port = self._free_port()  # explicit: port + 10000 may be over 65535 or taken
        self._bus_ports[port] = bus_port
        directory = os.path.join(self.directory, f"node-{port}")
        os.makedirs(directory, exist_ok=True)
        return RedisProcess(
            port=port,
            directory=directory,
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",  # relative to the node's own --dir
                "--cluster-port", str(bus_port),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-announce-ip", HOST,
                "--cluster-replica-validity-factor", "0",
                "--cluster-require-full-coverage", "no",
                "--cluster-allow-reads-when-down", "no",
                *_FAST_SYNC,
            ],
        )  # fmt: skip

    def _create(self, timeout: float) -> None:
        if self.master_count < 3:  # redis-cli --cluster create refuses fewer than 3 masters
            self._assemble(timeout)
            return
        cli = shutil.which("redis-cli") or os.path.join(
            os.path.dirname(find_server_binary()), "redis-cli"
        )
        args = [
            cli, "--cluster", "create", *(f"{HOST}:{p.port}" for p in self.processes),
            "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes",
        ]  # fmt: skip
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")

    def _assemble(self, timeout: float) -> None:
        """What ``redis-cli --cluster create`` does, by hand (it refuses 1 or 2 masters): the
        first ``masters`` nodes each take an even share of the slots, every node meets the
        first, and the rest are spread as replicas over the masters in turn."""
        masters = self.processes[: self.master_count]
        replicas = self.processes[self.master_count :]
        for n, process in enumerate(masters):
            first = SLOTS * n // len(masters)
            last = SLOTS * (n + 1) // len(masters) - 1
            _call(process.port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        seed = self.processes[0].port
        for process in self.processes[1:]:  # the bus port too: it is not port + 10000
            _call(process.port, "CLUSTER", "MEET", HOST, seed, self._bus_ports[seed])
        ids = {self._ids[p.port] for p in self.processes}

        def all_known() -> bool:  # a replica may only REPLICATE a master it knows
            for process in self.processes:
                known = {n.node_id for n in _parse_nodes(_call(process.port, "CLUSTER", "NODES"))}
                if not ids <= known:
                    return False
            return True

        _until(all_known, timeout, "every cluster node to know every other")
        for n, process in enumerate(replicas):
            master_id = self._ids[masters[n % len(masters)].port]

            def replicates(port: int = process.port, master: str = master_id) -> bool:
                return bool(_call(port, "CLUSTER", "REPLICATE", master) == "OK")

            _until(replicates, timeout, f"the node on {process.port} to replicate {master_id}")

    def stop(self) -> None:
        """Stop every node; safe to call twice, and after a failed start."""
        for process in self.processes:
            process.stop()
        if self._owns_directory and not self._stopped:
            shutil.rmtree(self.directory, ignore_errors=True)
        self._stopped = True

    def __enter__(self) -> RedisClusterProcesses:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.processes]

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.processes]

    def nodes_env(self) -> dict[str, str]:
        """What a Hubbub process needs in its environment to use this cluster."""
        masters = self.masters()
        return {
            "HUBBUB_REDIS_MODE": "cluster",
            "HUBBUB_REDIS_URL": masters[0].url,
            "HUBBUB_REDIS_CLUSTER_NODES": ",".join(f"{HOST}:{m.port}" for m in masters),
        }

    # -- topology as the cluster sees it -----------------------------------------------------

    def node_id(self, process: RedisProcess) -> str:
        return self._ids[process.port]

    def _process(self, port: int) -> RedisProcess:
        for process in self.processes:
            if process.port == port:
                return process
        raise KeyError(f"no node of this cluster on port {port}")

    def _live(self) -> list[RedisProcess]:
        return [p for p in self.processes if _alive(p)]

    def _view(self) -> list[_Node]:
        """CLUSTER NODES from the first live node that answers."""
        error: Exception | None = None
        for process in self._live():
            try:
                return _parse_nodes(_call(process.port, "CLUSTER", "NODES"))
            except (redis.RedisError, OSError) as exc:
                error = exc
        raise RuntimeError(f"no cluster node answers: {error!r}")

    def masters(self) -> list[RedisProcess]:
        """The live masters that own slots, in slot order (the first serves slot 0's range)."""
        owners = [n for n in self._view() if n.is_master and n.slots and not n.failing]
        owners.sort(key=lambda n: min(n.slots))
        return [self._process(n.port) for n in owners]

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        """A live replica of ``master`` (the first one the cluster lists)."""
        master_id = self.node_id(master)
        for node in self._view():
            if node.master_id == master_id and not node.failing:
                process = self._process(node.port)
                if _alive(process):
                    return process
        raise LookupError(f"master on port {master.port} has no live replica")

    def slot_owner(self, slot: int) -> RedisProcess:
        for node in self._view():
            if node.is_master and slot in node.slots:
                return self._process(node.port)
        raise LookupError(f"no master serves slot {slot}")

    def master_for(self, key: str) -> RedisProcess:
        """The master currently serving ``key``'s slot."""
        return self.slot_owner(key_slot(key.encode()))

    # -- health ------------------------------------------------------------------------------

    def _healthy(self) -> bool:
        """Every live node: state ok, all slots served, and the same slot map and roles (who
        replicates whom) as the others; every live replica linked to its master (so WAIT and
        failover have a replica to use)."""
        maps: list[tuple[dict[int, str], dict[int, str | None]]] = []
        for process in self._live():
            info = _parse_info(_call(process.port, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            nodes = _parse_nodes(_call(process.port, "CLUSTER", "NODES"))
            live_ports = {p.port for p in self._live()}
            if any(n.failing or not n.connected for n in nodes if n.port in live_ports):
                return False
            owners = {s: n.node_id for n in nodes if n.is_master and not n.failing for s in n.slots}
            if len(owners) != SLOTS:
                return False
            roles = {n.port: n.master_id for n in nodes if n.port in live_ports}
            maps.append((owners, roles))
            replication = _info(process.port, "replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return bool(maps) and all(m == maps[0] for m in maps)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        _until(self._healthy, timeout, "every cluster node to agree on a fully served slot map")

    # -- faults ------------------------------------------------------------------------------

    def kill_master(
        self, process: RedisProcess, wait: bool = True, timeout: float = 30.0
    ) -> RedisProcess | None:
        """SIGKILL a master; with ``wait``, return the replica that took over its slots once
        every surviving node serves all slots again."""
        slots = {s for n in self._view() if n.port == process.port for s in n.slots}
        if not slots:
            raise ValueError(f"node on port {process.port} is not a master owning slots")
        if wait:  # (without: the caller may have frozen the replica, to thaw it later)
            self.replica_of(process)  # LookupError now, rather than a TimeoutError later
        self._a_slot_of[process.port] = min(slots)
        _kill(process)
        if not wait:
            return None
        return self.wait_failed_over(process, timeout)

    def wait_failed_over(self, process: RedisProcess, timeout: float = 30.0) -> RedisProcess:
        """Wait until another node serves the slots of ``process``, a master :meth:`kill_master`
        killed (with ``wait=False``: a test may thaw a frozen replica first), and every
        surviving node serves all slots again; that node."""
        slot, dead_id = self._a_slot_of[process.port], self.node_id(process)

        def failed_over() -> bool:
            return self._healthy() and self.node_id(self.slot_owner(slot)) != dead_id

        _until(failed_over, timeout, f"a replica to take over from the master on {process.port}")
        return self.slot_owner(slot)

    def kill(self, process: RedisProcess) -> None:
        """SIGKILL any node, waiting for nothing."""
        _kill(process)

    def restart(self, process: RedisProcess, timeout: float = 30.0) -> None:
        """Bring a killed node back (same port, same nodes.conf) and wait until the cluster is
        whole again: a master that was failed over comes back as a replica of its successor."""
        if _alive(process):
            return
        process.start()
        self.wait_healthy(timeout)

    # -- resharding --------------------------------------------------------------------------

    def migrate_slots(
        self,
        slots: Iterable[int],
        source: RedisProcess,
        target: RedisProcess,
        batch: int = 100,
        timeout: float = 30.0,
    ) -> None:
        """Move ``slots`` with their keys from ``source`` to ``target`` while clients keep going.

        The procedure ``redis-cli --cluster reshard`` follows: IMPORTING on the target,
        MIGRATING on the source (so new keys are ASK-redirected and the source's set only
        shrinks), MIGRATE in batches until the slot is empty on the source, then SETSLOT NODE
        on the target first (it bumps its epoch), the source, and every other master.
        MIGRATE moves each key's serialized value, so streams keep their consumer groups.
        """
        slots = list(slots)
        source_id, target_id = self.node_id(source), self.node_id(target)
        owned = {s for n in self._view() if n.port == source.port and n.is_master for s in n.slots}
        strays = [s for s in slots if s not in owned]
        if strays:
            raise ValueError(f"slots {strays[:5]} are not served by the node on {source.port}")
        others = [m for m in self.masters() if m.port not in (source.port, target.port)]
        with ExitStack() as links:
            to_source = _Link(source.port, timeout=15.0)  # MIGRATE waits for the target
            links.callback(to_source.close)
            to_target = _Link(target.port)
            links.callback(to_target.close)
            to_others = [_Link(m.port) for m in others]
            for link in to_others:
                links.callback(link.close)
            for slot in slots:
                to_target("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
                to_source("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
                while keys := to_source("CLUSTER", "GETKEYSINSLOT", slot, batch):
                    to_source("MIGRATE", HOST, target.port, "", 0, 10_000, "KEYS", *keys)
                for link in (to_target, to_source, *to_others):
                    link("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        _until(self._healthy, timeout, "every cluster node to agree on the migrated slots")

    def migrate_key_slot(self, key: str, target: RedisProcess) -> None:
        """Move the slot of ``key`` (with every key in it) to ``target``."""
        source = self.master_for(key)
        if source.port != target.port:
            self.migrate_slots([key_slot(key.encode())], source, target)


# --------------------------------------------------------------------------------------------
# Sentinel


class SentinelProcess:
    """One ``redis-server --sentinel`` on 127.0.0.1 with its own (writable) config file.

    Not a RedisProcess: sentinel insists on a config file as its first argument, rewrites it
    with what it learns, and rejects data-server options such as ``save``/``appendonly``.
    """

    def __init__(self, directory: str, config: Sequence[str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = os.path.abspath(directory)
        self.config = tuple(config)  # "sentinel ..." lines after port/bind/dir/logfile
        self.binary = find_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, "sentinel.conf")
        if not os.path.exists(path):  # a restart keeps what sentinel wrote there
            lines = [
                f"port {self.port}",
                f"bind {HOST}",
                f"dir {self.directory}",
                f"logfile {os.path.join(self.directory, 'sentinel.log')}",
                *self.config,
            ]
            with open(path, "w") as out:
                out.write("\n".join(lines) + "\n")
        console = os.path.join(self.directory, "console.log")
        with open(console, "wb") as out:
            self.process = subprocess.Popen(
                [self.binary, path, "--sentinel"], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(console, errors="replace") as out:
                    raise RuntimeError(f"redis sentinel exited: {out.read().strip()}")
            try:
                if _call(self.port, "PING", timeout=0.5) == "PONG":
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.02)
        raise TimeoutError(f"redis sentinel did not answer on port {self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# SENTINEL DEBUG <name> <ms> pairs; see SentinelProcesses. Not lower: a sentinel trusts a
# replica's INFO for 5 ping periods while the master is down, and asks for it once a second
# then, so a ping period under ~250 ms leaves no replica fit to promote.
_FAST_SENTINEL_TIMERS = ("ping-period", 300, "publish-period", 200, "info-period", 1000)


class SentinelProcesses:
    """A primary, one replica and ``sentinels`` sentinels watching them, on loopback.

    The replica is linked before any sentinel starts: a sentinel lists the replicas it finds in
    its first INFO of the primary, and otherwise would find one only at its next INFO.

    ``fast_timers`` shortens sentinel's internal periods (``SENTINEL DEBUG``, Redis 7.0+):
    ping and reconnect 1 s -> 300 ms, hello 2 s -> 200 ms, INFO 10 s -> 1 s. Not only for
    speed: with the stock 1 s reconnect period and a ``down_after_ms`` under it, sentinels can
    reach the freshly promoted primary too late, mark it down and start another failover.
    ``failover_timeout_ms`` is short because a failed election is retried only after twice it.
    """

    def __init__(
        self,
        directory: str | None = None,
        sentinels: int = 3,
        master_name: str = "hubbub",
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        fast_timers: bool = True,
    ) -> None:
        self.sentinel_count = sentinels
        self.fast_timers = fast_timers
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = sentinels // 2 + 1
        self._owns_directory = directory is None
        self.directory = os.path.abspath(directory or tempfile.mkdtemp(prefix="hubbub-sentinel-"))
        self.servers: list[RedisProcess] = []  # [first primary, first replica]
        self.sentinels: list[SentinelProcess] = []
        self._stopped = False

    def start(self, timeout: float = 30.0) -> None:
        """Start primary, replica, then sentinels; return once every sentinel knows all of them.

        A failure part-way stops whatever was started.
        """
        try:
            primary = RedisProcess(directory=self._subdir("primary"), extra_args=_FAST_SYNC)
            primary.start()
            self.servers.append(primary)
            replica = RedisProcess(
                directory=self._subdir("replica"),
                extra_args=[*_FAST_SYNC, "--replicaof", HOST, str(primary.port)],
            )
            replica.start()
            self.servers.append(replica)
            self.wait_replica_synced(timeout)
            config = [
                "sentinel resolve-hostnames no",
                f"sentinel monitor {self.master_name} {HOST} {primary.port} {self.quorum}",
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.master_name} 1",
            ]
            for i in range(self.sentinel_count):
                sentinel = SentinelProcess(self._subdir(f"sentinel-{i}"), config)
                self.sentinels.append(sentinel)
                sentinel.start()
                if self.fast_timers:
                    _call(sentinel.port, "SENTINEL", "DEBUG", *_FAST_SENTINEL_TIMERS)
            _until(self._sentinels_agree, timeout, "every sentinel to know the whole topology")
        except BaseException:
            self.stop()
            raise

    def _subdir(self, name: str) -> str:
        path = os.path.join(self.directory, name)
        os.makedirs(path, exist_ok=True)
        return path

    def stop(self) -> None:
        """Stop sentinels first (so they start no failover), then the servers; idempotent."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
        if self._owns_directory and not self._stopped:
            shutil.rmtree(self.directory, ignore_errors=True)
        self._stopped = True

    def __enter__(self) -> SentinelProcesses:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- topology ----------------------------------------------------------------------------

    def nodes_env(self) -> dict[str, str]:
        """What a Hubbub process needs in its environment to use this deployment."""
        return {
            "HUBBUB_REDIS_MODE": "sentinel",
            "HUBBUB_REDIS_SENTINELS": ",".join(f"{HOST}:{s.port}" for s in self.sentinels),
            "HUBBUB_REDIS_SENTINEL_MASTER": self.master_name,
            "HUBBUB_REDIS_URL": self.primary().url,
        }

    def _reported_primary_port(self, sentinel: SentinelProcess) -> int:
        reply: list[str] = _call(
            sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
        )
        return int(reply[1])

    def _server(self, port: int) -> RedisProcess:
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(f"no server of this deployment on port {port}")

    def primary(self) -> RedisProcess:
        """The primary as the (first answering) sentinel reports it."""
        error: Exception | None = None
        for sentinel in self.sentinels:
            try:
                return self._server(self._reported_primary_port(sentinel))
            except (redis.RedisError, OSError) as exc:
                error = exc
        raise RuntimeError(f"no sentinel answers: {error!r}")

    def replica(self) -> RedisProcess:
        """The server that is not the primary (it may be down after a failover)."""
        primary = self.primary()
        return next(s for s in self.servers if s.port != primary.port)

    def _sentinels_agree(self) -> bool:
        primary, replica = self.primary(), self.replica()
        for sentinel in self.sentinels:
            if self._reported_primary_port(sentinel) != primary.port:
                return False
            master = _pairs(_call(sentinel.port, "SENTINEL", "MASTER", self.master_name))
            if master.get("flags") != "master":
                return False
            if int(master.get("num-other-sentinels", "0")) != self.sentinel_count - 1:
                return False
            replicas = [
                _pairs(r) for r in _call(sentinel.port, "SENTINEL", "REPLICAS", self.master_name)
            ]
            if not any(
                r.get("port") == str(replica.port)
                and r.get("flags") == "slave"  # not s_down, not disconnected
                and r.get("master-link-status") == "ok"
                for r in replicas
            ):
                return False
        return True

    def wait_replica_synced(self, timeout: float = 10.0) -> None:
        """Wait until the replica's link is up and it has everything the primary has written."""
        primary, replica = self.servers[0], self.servers[1]
        if len(self.sentinels) > 0:
            primary, replica = self.primary(), self.replica()

        def synced() -> bool:
            theirs = _info(replica.port, "replication")
            if theirs.get("master_link_status") != "up":
                return False
            ours = _info(primary.port, "replication")
            return int(theirs["slave_repl_offset"]) >= int(ours["master_repl_offset"])

        _until(synced, timeout, f"replica on {replica.port} to catch up with {primary.port}")

    # -- faults ------------------------------------------------------------------------------

    def kill_primary(self, wait: bool = True, timeout: float = 30.0) -> RedisProcess | None:
        """SIGKILL the primary; with ``wait``, return the replica once every sentinel reports it
        as the master (and is linked to it) and it reports ``role:master`` itself."""
        old, successor = self.primary(), self.replica()
        if not _alive(successor):
            raise LookupError(f"the replica on {successor.port} is down: restart() it first")
        _kill(old)
        if not wait:
            return None
        self.wait_promoted(successor, timeout)
        return successor

    def wait_promoted(self, successor: RedisProcess, timeout: float = 30.0) -> None:
        """Wait until every sentinel reports ``successor`` as the master (and is linked to it)
        and it reports ``role:master`` itself."""

        def promoted() -> bool:
            for sentinel in self.sentinels:
                if self._reported_primary_port(sentinel) != successor.port:
                    return False
                # Linked to it, and not about to fail it over again.
                master = _pairs(_call(sentinel.port, "SENTINEL", "MASTER", self.master_name))
                if master.get("flags") != "master":
                    return False
            return _info(successor.port, "replication").get("role") == "master"

        _until(promoted, timeout, f"sentinels to promote the replica on {successor.port}")

    def restart(self, process: RedisProcess, timeout: float = 30.0) -> None:
        """Bring a killed server back as a replica of the current primary; wait until it is
        synced and every sentinel sees it as a healthy replica.

        Told ``--replicaof`` directly: left to the sentinels, a returning old primary is
        converted only after it has claimed to be master for several seconds.
        """
        if _alive(process):
            return
        primary = self.primary()
        process.extra_args = (*_FAST_SYNC, "--replicaof", HOST, str(primary.port))
        process.start()
        self.wait_replica_synced(timeout)
        # Until the sentinels see it up and linked, they would not pick it in a failover.
        _until(self._sentinels_agree, timeout, f"sentinels to see the replica on {process.port}")


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A sentinel reply (name, value, name, value, ...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
