"""The topology launchers against real servers: a 3+3 cluster that fails over and reshards
under traffic, and a sentinel deployment that fails over; each with data that must survive."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

from hubbub.dev.embedded import RedisProcess
from hubbub.dev.topologies import RedisClusterProcesses, SentinelProcesses


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _client(process: RedisProcess) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=process.port, decode_responses=True)


def _cluster_client(cluster: RedisClusterProcesses) -> RedisCluster:
    nodes = [ClusterNode("127.0.0.1", m.port) for m in cluster.masters()]
    return RedisCluster(startup_nodes=nodes, decode_responses=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    with RedisClusterProcesses(3, 1, str(tmp_path_factory.mktemp("cluster"))) as c:
        yield c


def test_cluster_is_whole_and_described(cluster: RedisClusterProcesses) -> None:
    masters = cluster.masters()
    assert len(masters) == 3 and len(cluster.ports) == 6
    for master in masters:
        assert cluster.replica_of(master).port not in {m.port for m in masters}
    env = cluster.nodes_env()
    assert env["HUBBUB_REDIS_MODE"] == "cluster"
    assert env["HUBBUB_REDIS_URL"] == masters[0].url
    assert env["HUBBUB_REDIS_CLUSTER_NODES"] == ",".join(f"127.0.0.1:{m.port}" for m in masters)
    assert len({cluster.node_id(p) for p in cluster.processes}) == 6


def test_master_failover_keeps_replicated_keys(cluster: RedisClusterProcesses) -> None:
    client = _cluster_client(cluster)
    keys = {f"failover:{i}": str(i) for i in range(64)}  # spread over all three masters
    for key, value in keys.items():
        client.set(key, value)
    client.close()
    for master in cluster.masters():
        with _client(master) as direct:
            assert direct.wait(1, 1000) == 1  # every write is on the replica too

    victim = cluster.master_for("failover:0")
    expected_successor = cluster.replica_of(victim)
    promoted = cluster.kill_master(victim)
    assert promoted is not None and promoted.port == expected_successor.port
    assert cluster.master_for("failover:0").port == promoted.port
    assert victim.port not in {m.port for m in cluster.masters()}

    client = _cluster_client(cluster)
    assert {key: client.get(key) for key in keys} == keys
    client.close()

    cluster.restart(victim)  # back as a replica of its successor, for the tests after this
    assert cluster.replica_of(promoted).port == victim.port


def test_migrating_a_stream_slot_under_traffic(cluster: RedisClusterProcesses) -> None:
    stream = "{stream-slot}:events"
    slot = key_slot(stream.encode())
    client = _cluster_client(cluster)
    for i in range(10):
        client.xadd(stream, {"n": str(i)})
    client.xgroup_create(stream, "workers", id="0")
    client.xreadgroup("workers", "w1", {stream: ">"}, count=4)  # 4 pending entries
    for i in range(250):  # more keys in the slot than one MIGRATE batch
        client.set(f"{{stream-slot}}:k{i}", str(i))

    written: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        """Writes to the migrating slot the whole time; redis-py follows ASK and MOVED."""
        writer = _cluster_client(cluster)
        try:
            n = 0
            while not stop.is_set():
                writer.set(f"{{stream-slot}}:live{n}", str(n))
                written.append(n)
                n += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer.close()

    source = cluster.master_for(stream)
    target = next(m for m in cluster.masters() if m.port != source.port)
    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        _until(lambda: len(written) > 20, 5, "traffic to start")
        cluster.migrate_slots([slot], source, target, batch=100)
        after = len(written)
        _until(lambda: len(written) > after + 20, 5, "traffic after the migration")
    finally:
        stop.set()
        thread.join(10)
    assert not errors
    assert cluster.master_for(stream).port == target.port

    with _client(target) as direct:
        groups = direct.xinfo_groups(stream)
        assert [(g["name"], g["pending"]) for g in groups] == [("workers", 4)]
        assert direct.xlen(stream) == 10
        assert direct.cluster("countkeysinslot", slot) == 1 + 250 + len(written)
    with _client(source) as direct, pytest.raises(redis.exceptions.MovedError) as moved:
        direct.get(stream)  # the source now sends clients to the target
    assert (moved.value.slot_id, moved.value.port) == (slot, target.port)

    client = _cluster_client(cluster)
    assert all(client.get(f"{{stream-slot}}:live{n}") == str(n) for n in written)
    assert client.xpending(stream, "workers")["pending"] == 4
    client.close()


def test_migrate_key_slot_is_a_no_op_on_the_owner(cluster: RedisClusterProcesses) -> None:
    owner = cluster.master_for("hubbub:publish:0")
    cluster.migrate_key_slot("hubbub:publish:0", owner)
    assert cluster.master_for("hubbub:publish:0").port == owner.port


def test_failed_start_stops_what_it_started(tmp_path: Path) -> None:
    topology = RedisClusterProcesses(3, 0, str(tmp_path))

    def broken(timeout: float) -> None:
        raise RuntimeError("create failed")

    topology._create = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="create failed"):
        topology.start()
    assert len(topology.processes) == 3
    assert all(p.process is None for p in topology.processes)
    topology.stop()  # a second stop is harmless


def test_sentinel_failover_keeps_replicated_data(tmp_path: Path) -> None:
    with SentinelProcesses(str(tmp_path)) as topology:
        primary, replica = topology.primary(), topology.replica()
        assert primary.port != replica.port
        env = topology.nodes_env()
        assert env["HUBBUB_REDIS_MODE"] == "sentinel"
        assert env["HUBBUB_REDIS_URL"] == primary.url
        assert env["HUBBUB_REDIS_SENTINEL_MASTER"] == "hubbub"
        assert len(env["HUBBUB_REDIS_SENTINELS"].split(",")) == 3

        with _client(primary) as direct:
            direct.set("hubbub:sentinel", "kept")
            direct.xadd("hubbub:stream", {"n": "1"})
            assert direct.wait(1, 1000) == 1
        topology.wait_replica_synced()

        promoted = topology.kill_primary()
        assert promoted is not None and promoted.port == replica.port
        assert topology.primary().port == replica.port
        with _client(promoted) as direct:
            assert direct.get("hubbub:sentinel") == "kept"
            assert direct.xlen("hubbub:stream") == 1
            assert direct.info("replication")["role"] == "master"
        addresses = [("127.0.0.1", s.port) for s in topology.sentinels]
        sentinel = Sentinel(addresses, decode_responses=True)
        assert sentinel.discover_master("hubbub") == ("127.0.0.1", replica.port)

        topology.restart(primary)  # the old primary returns as the new replica
        assert topology.replica().port == primary.port
        with _client(primary) as direct:
            assert direct.get("hubbub:sentinel") == "kept"
    topology.stop()  # a second stop is harmless


def test_one_master_cluster_without_replicas(tmp_path: Path) -> None:
    """Fewer than 3 masters: assembled by hand (redis-cli --cluster create refuses them)."""
    with RedisClusterProcesses(1, 0, str(tmp_path / "one")) as one:
        (master,) = one.masters()
        assert len(one.processes) == 1 and one.slot_owner(0).port == master.port
        assert one.slot_owner(16383).port == master.port
        client = _cluster_client(one)
        keys = {f"one:{i}": str(i) for i in range(16)}
        for key, value in keys.items():
            client.set(key, value)
        assert {key: client.get(key) for key in keys} == keys
        client.close()


def test_two_master_cluster_with_replicas(tmp_path: Path) -> None:
    with RedisClusterProcesses(2, 1, str(tmp_path / "two")) as two:
        masters = two.masters()
        assert len(masters) == 2 and len(two.processes) == 4
        assert two.slot_owner(0).port == masters[0].port
        assert two.slot_owner(16383).port == masters[1].port
        for master in masters:
            assert two.replica_of(master).port not in {m.port for m in masters}
        client = _cluster_client(two)
        keys = {f"two:{i}": str(i) for i in range(32)}  # both masters
        for key, value in keys.items():
            client.set(key, value)
        assert {key: client.get(key) for key in keys} == keys
        client.close()
