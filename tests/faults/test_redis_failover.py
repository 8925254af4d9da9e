"""Failover: the Redis primary (Sentinel) or a cluster master is SIGKILLed mid-stream and its
replica takes over; with ``HUBBUB_REDIS_WAIT_REPLICAS=1`` nothing accepted is lost.

The fault makes the loss certain when it can happen at all: the replica is frozen (SIGSTOP)
and cut off (``CLIENT KILL TYPE replica``), the workers frozen too, then numbered probes are
published, then the primary is killed and the
replica thawed and promoted. Without ``WAIT`` the probes are accepted (``202``) while only the
primary has them, and the failover loses them; with ``WAIT 1`` the replica cannot confirm
them, so they are refused (``503 Error.Redis.NotReplicated``), never accepted and lost. Around
the fault, three numbered sequences (group, user, broadcast) run from both gateways' clients:
every accepted number arrives once and in order (``run_sequences``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis as SyncRedis

from hubbub.dev.embedded import RedisProcess
from hubbub.dev.topologies import RedisClusterProcesses, SentinelProcesses
from hubbub.redis.stream import target_partition
from hubbub.sdk.client import HubbubClient
from hubbub.settings import Settings
from hubbub.wire.envelopes import Kind
from hubbub.wire.keys import KeySchema
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient, client_token
from tests.support.sequences import REFUSED, Collector, Outcome, run_sequences

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N = 300  # per sequence
PROBES = 8

Topology = RedisClusterProcesses | SentinelProcesses


@pytest.fixture(params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    servers: Topology
    if request.param == "sentinel":
        servers = SentinelProcesses(str(tmp_path / "sentinel"))
    else:
        servers = RedisClusterProcesses(3, 1, str(tmp_path / "cluster"))
    servers.start()
    yield servers
    servers.stop()


def _shared_keys(prefix: str) -> list[str]:
    """The keys whose loss matters to group ``ga``: its publish partition first, then the
    gateways' heartbeat deadlines and the hub's membership."""
    n = target_partition("chat", Kind.GROUP, "ga", Settings().publish_partitions)
    schema = KeySchema(prefix)
    return [schema.publish_partition(n), schema.gateways, schema.hub("chat").connection("x")]


@pytest.fixture
def fault_prefix(topology: Topology, prefix: str) -> str:
    """The test's prefix, varied until on a cluster the killed master (the one serving the
    group's partition) also serves the heartbeat deadlines and the hub's membership: the
    failover then rolls all of them back at once, whatever the test's place in the run."""
    if isinstance(topology, SentinelProcesses):
        return prefix
    for i in range(1000):
        candidate = f"{prefix}x{i}"
        if len({topology.master_for(k).port for k in _shared_keys(candidate)}) == 1:
            return candidate
    raise AssertionError("no prefix puts the shared keys on one master")


@pytest.fixture
async def failover_deployment(
    topology: Topology, tmp_path: Path, fault_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Deployment]:
    env = topology.nodes_env()
    dep = Deployment(env["HUBBUB_REDIS_URL"], tmp_path, fault_prefix)
    dep.settings.update(env, HUBBUB_REDIS_WAIT_TIMEOUT="0.2")
    yield dep
    dep.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(dep.logs())


def _group_primary(topology: Topology, prefix: str) -> RedisProcess:
    """The server whose loss matters to group ``ga``: the primary, or the cluster master of
    the group's publish partition (and, by ``fault_prefix``, of the shared keys)."""
    if isinstance(topology, SentinelProcesses):
        return topology.primary()
    return topology.master_for(_shared_keys(prefix)[0])


def _signal(process: RedisProcess, sig: signal.Signals) -> None:
    assert process.process is not None
    process.process.send_signal(sig)


async def _lose_the_primary(
    topology: Topology, dep: Deployment, api: HubbubClient, prefix: str
) -> Outcome:
    """Freeze the replica and the workers, publish the probes, kill the primary, thaw the
    replica and wait for its promotion; then bring the old primary back as a replica (so
    ``WAIT 1`` can succeed again) and thaw the workers. The probes' outcome."""
    primary = _group_primary(topology, prefix)
    replica = (
        topology.replica()
        if isinstance(topology, SentinelProcesses)
        else topology.replica_of(primary)
    )
    _signal(replica, signal.SIGSTOP)
    # Cut the replication link too: what the primary had already written to the frozen
    # replica's socket would still reach it, so it gets nothing written from now on.
    with SyncRedis(port=primary.port) as admin:
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "replica") == 1
    for worker in dep.workers:
        worker.signal(signal.SIGSTOP)
    probes = Outcome()
    for n in range(PROBES):
        try:
            await api.send_to_group("ga", "seq", ["p", n])
            probes.accepted.append(n)
        except httpx.HTTPStatusError as exc:
            assert exc.response.status_code == 503, exc.response.text
            assert exc.response.json()["code"] in REFUSED, exc.response.text
            probes.refused.append(n)
    if isinstance(topology, SentinelProcesses):
        topology.kill_primary(wait=False)
        _signal(replica, signal.SIGCONT)
        await asyncio.to_thread(topology.wait_promoted, replica)
    else:
        topology.kill_master(primary, wait=False)
        _signal(replica, signal.SIGCONT)
        await asyncio.to_thread(topology.wait_failed_over, primary)
    await asyncio.to_thread(topology.restart, primary)
    for worker in dep.workers:
        worker.signal(signal.SIGCONT)
    return probes


async def test_failover_with_wait_loses_nothing_accepted(
    topology: Topology, failover_deployment: Deployment, fault_prefix: str
) -> None:
    """Also: the failover sends the gateways' heartbeat deadlines back in time (the promoted
    replica missed the last ones), yet no worker reaps a live gateway, so no client is closed
    (``hubbub_fanout.reap``: a worker reaps only what it has itself seen expired for the
    grace). With the grace removed, a thawed worker reaped a gateway before its next heartbeat
    and its client got ``Close{allowReconnect}``."""
    dep = failover_deployment
    dep.settings["HUBBUB_REDIS_WAIT_REPLICAS"] = "1"
    await dep.start_gateway()
    await dep.start_gateway()
    dep.start_worker()
    dep.start_worker()
    await dep.workers_seen(2)  # both past their start-up check of Redis
    probes = Outcome()
    async with HubbubClient(dep.gateways[0].url, ACCESS_KEY, "chat") as api:

        async def fault() -> None:
            nonlocal probes
            probes = await _lose_the_primary(topology, dep, api, fault_prefix)

        outcome = await run_sequences(dep, api, fault, at=N // 3, count=N)
    # No replica could confirm the probes: refused, so none was accepted and lost.
    assert probes.accepted == [] and len(probes.refused) == PROBES
    refused = {kind: len(o.refused) for kind, o in outcome.items()}
    print(f"\n{type(topology).__name__}, WAIT 1: {3 * N} sent, refused {refused}, lost 0")


async def test_failover_without_wait_loses_what_only_the_primary_had(
    topology: Topology, failover_deployment: Deployment, fault_prefix: str
) -> None:
    """The other side of the trade: accepted (``202``), then lost with the primary."""
    dep = failover_deployment
    await dep.start_gateway()
    dep.start_worker()
    async with HubbubClient(dep.gateways[0].url, ACCESS_KEY, "chat") as api:
        client = await RawClient.connect(dep.gateways[0].url, token=client_token("ua"))
        assert client.connection_id
        await api.add_connection_to_group("ga", client.connection_id)
        collector = Collector(client)
        await api.send_to_group("ga", "seq", ["before", 0])
        await collector.wait_for("before", {0})
        probes = await _lose_the_primary(topology, dep, api, fault_prefix)
        assert probes.accepted == list(range(PROBES))  # no WAIT: the primary alone said yes
        await api.send_to_group("ga", "seq", ["after", 0])
        await collector.wait_for("after", {0}, timeout=60)
        # "after" went through the same partition after the probes: had any probe survived,
        # it would have arrived first. The first probe may have reached the frozen worker
        # (its blocked read returned it as it froze), which then routed it; the rest are lost.
        assert collector.got["p"] in ([], [0]), collector.got["p"]
        lost = PROBES - len(collector.got["p"])
        await collector.stop()
    print(f"\n{type(topology).__name__}, no WAIT: {PROBES} accepted, {lost} lost")


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterProcesses]:
    servers = RedisClusterProcesses(3, 1, str(tmp_path / "cluster"))
    servers.start()
    yield servers
    servers.stop()


async def test_resharding_while_messages_flow_loses_nothing(
    redis_cluster: RedisClusterProcesses, tmp_path: Path, prefix: str
) -> None:
    """Every slot a message crosses moves to another master mid-stream (``MIGRATING`` /
    ``IMPORTING``, then ``MIGRATE``, then ``SETSLOT NODE``): the group's and the user's
    publish partitions, the hub's membership, both gateways' inboxes and the broadcast feed.
    Clients see ``ASK`` and ``MOVED`` followed; every accepted number arrives once, in order."""
    env = redis_cluster.nodes_env()
    dep = Deployment(env["HUBBUB_REDIS_URL"], tmp_path, prefix)
    dep.settings.update(env)
    try:
        await dep.start_gateway()
        await dep.start_gateway()
        dep.start_worker()
        dep.start_worker()
        schema = KeySchema(prefix)
        partitions = Settings().publish_partitions
        keys = [
            schema.publish_partition(target_partition("chat", Kind.GROUP, "ga", partitions)),
            schema.publish_partition(target_partition("chat", Kind.USER, "ua", partitions)),
            schema.hub("chat").connection("x"),
            schema.broadcast_feed,
            *(schema.inbox(f"{prefix}-{gw.name}") for gw in dep.gateways),
        ]
        moved: list[str] = []

        async def reshard() -> None:
            for key in keys:
                source = redis_cluster.master_for(key)
                target = next(m for m in redis_cluster.masters() if m.port != source.port)
                await asyncio.to_thread(redis_cluster.migrate_key_slot, key, target)
                assert redis_cluster.master_for(key).port == target.port
                moved.append(key)

        async with HubbubClient(dep.gateways[0].url, ACCESS_KEY, "chat") as api:
            await run_sequences(dep, api, reshard, at=N // 3, count=N)
        assert moved == keys
    except BaseException:
        print(dep.logs())
        raise
    finally:
        dep.stop()
