"""The hot-path connection (``Pipe``) on a real Redis Cluster of three masters: commands go to
their slot's master, redirections are followed, and a blocking read over streams on several
masters answers as soon as one has something, without leaving the others blocked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis as SyncRedis

from hubbub.dev.topologies import RedisClusterProcesses
from hubbub.redis.endpoint import RedisEndpoint, parse_nodes
from hubbub.redis.pipe import Pipe
from hubbub.redis.resp import pack, streams_reply
from tests.support.processes import eventually


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses(3, 0, str(tmp_path_factory.mktemp("pipe-cluster")))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def pipe(servers: RedisClusterProcesses, prefix: str) -> AsyncIterator[Pipe]:
    env = servers.nodes_env()
    endpoint = RedisEndpoint(
        env["HUBBUB_REDIS_URL"],
        f"pipe-{prefix}",
        mode="cluster",
        cluster_nodes=parse_nodes(env["HUBBUB_REDIS_CLUSTER_NODES"]),
    )
    p = Pipe(endpoint)
    yield p
    await p.aclose()


def _keys_on_each_master(servers: RedisClusterProcesses, prefix: str) -> list[str]:
    """One key per master (the first key found that lands on it)."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < 3:
        key = f"{prefix}:s{n}"
        found.setdefault(servers.master_for(key).port, key)
        n += 1
    return list(found.values())


def _blocked_clients(servers: RedisClusterProcesses, name: str) -> int:
    blocked = 0
    for master in servers.masters():
        with SyncRedis(port=master.port) as admin:
            blocked += sum(
                1 for c in admin.client_list() if c["name"] == name and "b" in c["flags"]
            )
    return blocked


async def test_commands_go_to_their_masters_and_batches_are_split(
    pipe: Pipe, servers: RedisClusterProcesses, prefix: str
) -> None:
    keys = _keys_on_each_master(servers, prefix)
    assert [await pipe.execute("INCR", k) for k in keys] == [1, 1, 1]
    replies = await pipe.execute_keyed([(k, pack(("INCRBY", k, 10))) for k in keys * 2])
    assert replies == [11, 11, 11, 21, 21, 21]  # in order, across three masters
    for key in keys:
        with SyncRedis(port=servers.master_for(key).port) as node:
            assert node.get(key) == b"21"  # each on its own master, no proxying


async def test_a_blocking_read_over_three_masters_answers_with_the_first(
    pipe: Pipe, servers: RedisClusterProcesses, prefix: str
) -> None:
    keys = _keys_on_each_master(servers, prefix + "r")
    positions = {k.encode(): b"$" for k in keys}
    read = asyncio.ensure_future(pipe.read_streams(("XREAD", "COUNT", 10), positions, 5000))

    async def all_blocked() -> bool:  # no event says so
        return _blocked_clients(servers, f"pipe-{prefix}") == 3

    await eventually(all_blocked, timeout=5)
    started = time.monotonic()
    with SyncRedis(port=servers.master_for(keys[1]).port) as node:
        node.xadd(keys[1], {"n": "1"})
    answer = streams_reply(await asyncio.wait_for(read, 4))
    assert time.monotonic() - started < 2.5  # not the 5 s block of the other two
    assert [(stream, [f for _, f in entries]) for stream, entries in answer] == [
        (keys[1].encode(), [{b"n": b"1"}])
    ]
    assert _blocked_clients(servers, f"pipe-{prefix}") == 0  # the others were unblocked


async def test_moved_and_ask_are_followed(
    pipe: Pipe, servers: RedisClusterProcesses, prefix: str
) -> None:
    key = f"{prefix}:moving"
    assert await pipe.execute("XADD", key, "*", "n", "1")
    source = servers.master_for(key)
    target = next(m for m in servers.masters() if m.port != source.port)
    await asyncio.to_thread(servers.migrate_key_slot, key, target)  # the pipe's map is stale
    assert await pipe.execute("XLEN", key) == 1  # MOVED, followed
    assert await pipe.execute("XADD", key, "*", "n", "2")
    with SyncRedis(port=target.port) as node:
        assert node.xlen(key) == 2


async def test_redis_py_callers_wait_for_a_free_connection(
    servers: RedisClusterProcesses, prefix: str
) -> None:
    """A burst larger than the pool (hundreds of unregisters when clients leave at once) waits
    its turn, as on one server; redis-py's own cluster pool would raise MaxConnectionsError."""
    env = servers.nodes_env()
    endpoint = RedisEndpoint(env["HUBBUB_REDIS_URL"], mode="cluster", max_connections=4)
    client = endpoint.redis()
    try:
        key = f"{prefix}:burst"
        results = await asyncio.gather(*(client.incr(key) for _ in range(300)))
        assert sorted(results) == list(range(1, 301))
    finally:
        await client.aclose()
