"""At-least-once, de-duplicated, per-target ordered delivery across real faults.

Each test publishes numbered sequences to a group, a user and everyone while it breaks
something, and every client checks that each accepted number arrived once and in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from websockets.exceptions import InvalidStatus

from hubbub.dev.embedded import RedisProcess
from hubbub.redis.stream import partition_of
from hubbub.sdk.client import HubbubClient
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.keys import KeySchema
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token
from tests.support.sequences import Collector, Outcome, check_once_in_order, publish, run_sequences

# Publishing 3 x N numbers one by one takes over a minute on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N = int(os.environ.get("HUBBUB_FAULT_N", "1700"))  # per target; three targets per test


async def duplicates_dropped(dep: Deployment) -> int:
    """``hubbub_drops_total{reason="duplicate"}`` summed over the (running) gateways."""
    total = 0.0
    async with httpx.AsyncClient() as http:
        for gw in dep.gateways:
            r = await http.get(f"{gw.url}/metrics")
            assert r.status_code == 200, r.text
            for line in r.text.splitlines():
                if line.startswith('hubbub_drops_total{reason="duplicate"}'):
                    total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def pending_of(redis: Redis, stream: str, consumer: str) -> list[bytes]:
    """Ids read by ``consumer`` in the workers' group and not acknowledged."""
    rows = await redis.xpending_range(
        stream, "fanout", min="-", max="+", count=100_000, consumername=consumer
    )
    return [row["message_id"] for row in rows]


async def test_worker_sigkill_mid_stream(deployment: Deployment, redis: Redis, prefix: str) -> None:
    """The worker routing the group's partition is killed while it holds entries it read and
    never acknowledged. The next owner claims them and routes them before anything newer:
    every number arrives once, in order, and the killed worker's pending list empties."""
    await deployment.start_gateway()
    await deployment.start_gateway()
    for _ in range(3):
        deployment.start_worker()
    schema = KeySchema(prefix)
    group_partition = partition_of(MessageEntry(Kind.GROUP, "chat", "ga", b""), 16)
    lease = schema.partition_lease(group_partition)
    stream = schema.publish_partition(group_partition)
    killed: list[str] = []
    left_pending: list[bytes] = []
    probes = Outcome()  # the "p" sequence, to the group, published during the fault
    attempts = 0

    async with HubbubClient(deployment.gateways[0].url, ACCESS_KEY, "chat") as api:

        async def leased() -> bool:
            return bool(await redis.get(lease))

        async def kill_owner_with_pending() -> None:
            """SIGSTOP the owner, then publish to the group until Redis hands it entries
            (its XREADGROUP was already waiting in Redis) that it cannot acknowledge; then
            SIGKILL. If it was stopped outside a read, let it go on and try again."""
            nonlocal attempts
            loop = asyncio.get_running_loop()
            lease_ms = int(deployment.settings["HUBBUB_LEASE_MS"])

            async def renewed() -> bool:  # the owner ran and renewed since it was stopped
                return bool(await redis.pttl(lease) > lease_ms * 0.8)

            while not left_pending:
                attempts += 1
                assert attempts <= 50, "never caught the owner with pending entries"
                owner = (await redis.get(lease) or b"").decode()
                victim = next((w for w in deployment.workers if w.name == owner), None)
                if victim is None:  # between two owners (a rebalance): wait for the next
                    await eventually(leased)
                    continue
                victim.signal(signal.SIGSTOP)
                stopped = loop.time()
                # Well inside the 2 s lease, so a SIGCONT never meets a new owner.
                while loop.time() - stopped < 0.5:
                    number = len(probes.accepted)
                    await api.send_to_group("ga", "seq", ["p", number])
                    probes.accepted.append(number)
                    pending = await pending_of(redis, stream, owner)
                    if pending:
                        victim.signal(signal.SIGKILL)
                        killed.append(owner)
                        left_pending.extend(await pending_of(redis, stream, owner))
                        return
                victim.signal(signal.SIGCONT)
                # Stopped again at once, it would not run between stops, and its leases would
                # expire under the test: let it renew first.
                await eventually(renewed, timeout=10)

        await eventually(leased)
        outcome = await run_sequences(
            deployment, api, kill_owner_with_pending, at=N // 3, probes=probes, count=N
        )

        new_owner = (await redis.get(lease) or b"").decode()
        assert new_owner and new_owner != killed[0]
        # The killed worker's entries were claimed (and acknowledged) by the next owner.
        assert await pending_of(redis, stream, killed[0]) == []
        claimed = [w for w in deployment.workers if "pending entries" in w.output()]
        assert claimed, "no worker logged routing pending entries"
        duplicates = await duplicates_dropped(deployment)
    for kind, o in outcome.items():
        assert not o.refused, kind
    print(
        f"\nworker SIGKILL: {attempts} attempt(s) to catch it; {len(left_pending)} entries "
        f"pending for {killed[0]} at the kill; sent {3 * N} + {len(probes.accepted)} probes, "
        f"all delivered once and in order; duplicates dropped at gateways: {duplicates}"
    )


async def test_entries_left_pending_by_a_dead_consumer_go_out_first(
    deployment: Deployment, redis: Redis, prefix: str
) -> None:
    """Entries a consumer read and never acknowledged (it died) reach the client before the
    entries published after them, once a worker takes the partition."""
    gateway = await deployment.start_gateway()
    schema = KeySchema(prefix)
    stream = schema.publish_partition(partition_of(MessageEntry(Kind.GROUP, "chat", "ga", b""), 16))
    await redis.xgroup_create(stream, "fanout", id="0", mkstream=True)
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        client = await RawClient.connect(gateway.url, token=client_token("ua"))
        assert client.connection_id
        await api.add_connection_to_group("ga", client.connection_id)
        collector = Collector(client)
        first = await publish(api, "group", "ga", "g", range(10))
        # A "worker" that read them and died: nobody will acknowledge these ten.
        read = await redis.xreadgroup("fanout", "dead-worker", {stream: ">"}, count=100)
        assert len(read[0][1]) == 10
        assert len(await pending_of(redis, stream, "dead-worker")) == 10
        rest = await publish(api, "group", "ga", "g", range(10, 20))
        deployment.start_worker()
        await collector.wait_for("g", set(range(20)))
        outcome = Outcome(accepted=first.accepted + rest.accepted)
        await api.send_to_group("ga", "seq", ["end-g", 0])
        await collector.wait_for("end-g", {0})
        check_once_in_order(collector.got["g"], outcome)
        assert await pending_of(redis, stream, "dead-worker") == []
        await collector.stop()


async def test_gateway_redis_connections_cut(
    deployment: Deployment, redis: Redis, prefix: str
) -> None:
    await deployment.start_gateway()
    victim = await deployment.start_gateway()
    for _ in range(3):
        deployment.start_worker()
    kills = 0

    async def cut() -> None:
        nonlocal kills
        for _ in range(3):
            for client in await redis.client_list():
                if client.get("name") == f"hubbub-gateway-{prefix}-{victim.name}":
                    await redis.client_kill_filter(_id=client["id"])
                    kills += 1
            await asyncio.sleep(0.2)

    async with HubbubClient(deployment.gateways[0].url, ACCESS_KEY, "chat") as api:
        await run_sequences(deployment, api, cut, at=N // 2, count=N)
    assert kills >= 1
    print(f"\ngateway Redis connections cut {kills} times; sent {3 * N}, all delivered once")


async def test_redis_restart_with_aof(aof_redis: RedisProcess, tmp_path: Path) -> None:
    dep = Deployment(aof_redis.url, tmp_path, "aof")
    try:
        await dep.start_gateway()
        await dep.start_gateway()
        for _ in range(3):
            dep.start_worker()

        async def restart() -> None:
            assert aof_redis.process is not None
            aof_redis.process.send_signal(signal.SIGKILL)  # no shutdown save: AOF only
            aof_redis.process.wait()
            aof_redis.process = None
            await asyncio.sleep(0.5)
            aof_redis.start()

        async with HubbubClient(dep.gateways[0].url, ACCESS_KEY, "chat") as api:
            outcome = await run_sequences(dep, api, restart, at=N // 2, count=N)
        refused = sum(len(o.refused) for o in outcome.values())
        print(
            f"\nRedis SIGKILL + restart (AOF, fsync always): sent {3 * N}, "
            f"accepted {3 * N - refused}, refused with 503 {refused}; every accepted delivered once"
        )
    finally:
        dep.stop()


async def test_redis_restarted_empty_is_recovered_without_restarting_anything(
    tmp_path: Path,
) -> None:
    """Redis comes back with no data (no persistence, or a failover to an empty replica):
    consumer groups and leases are made again, gateways re-register, and messages accepted
    after the restart are delivered, with no Hubbub process restarted."""
    (tmp_path / "redis").mkdir()
    server = RedisProcess(directory=str(tmp_path / "redis"))  # nothing kept on disk
    server.start()
    dep = Deployment(server.url, tmp_path, "empty")
    try:
        await dep.start_gateway()
        await dep.start_gateway()
        dep.start_worker()
        dep.start_worker()
        await dep.workers_seen(2)  # both past their start-up check of Redis, killed below
        async with HubbubClient(dep.gateways[0].url, ACCESS_KEY, "chat") as api:
            before = await RawClient.connect(dep.gateways[1].url, token=client_token("ua"))
            await api.send_to_user("ua", "seq", ["before", 0])
            assert (await before.recv())["arguments"] == ["before", 0]

            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            server.process = None
            server.start()  # same port, empty
            loop = asyncio.get_running_loop()
            restarted = loop.time()
            # The gateway closes its clients when it finds itself unregistered; the client
            # reconnects (as the official clients do) once the gateway accepts it again.
            closed = await before.recv(timeout=15)
            assert closed["type"] == 7 and closed.get("allowReconnect") is True, closed

            async def reconnect() -> RawClient | None:
                try:
                    return await RawClient.connect(dep.gateways[1].url, token=client_token("ua"))
                except (httpx.HTTPError, InvalidStatus):  # refused while it re-registers
                    return None

            after = await eventually(reconnect, timeout=10, interval=0.1)
            assert after.connection_id is not None
            await api.add_connection_to_group("ga", after.connection_id)
            collector = Collector(after)
            outcomes = await asyncio.gather(
                publish(api, "group", "ga", "g", range(100)),
                publish(api, "user", "ua", "u", range(100)),
                publish(api, "all", "", "a", range(100)),
            )
            for name, outcome in zip("gua", outcomes, strict=True):
                assert outcome.accepted, f"nothing to {name} was accepted after the restart"
                await collector.wait_for(name, set(outcome.accepted), timeout=10)
                check_once_in_order(collector.got[name], outcome)
            print(
                f"\nRedis restarted empty: delivering again {loop.time() - restarted:.1f} s "
                f"after the restart; refused meanwhile: {[len(o.refused) for o in outcomes]}"
            )
            await collector.stop()
    finally:
        dep.stop()
        server.stop()


def metric(gateway_url: str, sample: str) -> float:
    """One sample of a gateway's /metrics (0 if absent)."""
    text = httpx.get(f"{gateway_url}/metrics").text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


async def test_worker_stalled_past_its_lease_is_fenced(
    deployment: Deployment, redis: Redis, prefix: str
) -> None:
    """The worker routing the group's partition is frozen (SIGSTOP) while its read waits for
    entries; entries published then are handed to it (pending under its name) but it cannot
    route them. Another worker takes the partition over, routes them and more; then the
    frozen one is thawed and routes the batch it holds, behind its successor. Its deliveries
    carry the old lease epoch and gateways refuse them: every number arrives once, in order,
    and the refusals are counted."""
    gateway = await deployment.start_gateway()
    for _ in range(2):
        deployment.start_worker()
    schema = KeySchema(prefix)
    partition = partition_of(MessageEntry(Kind.GROUP, "chat", "ga", b""), 16)
    lease, stream = schema.partition_lease(partition), schema.publish_partition(partition)
    client = await RawClient.connect(gateway.url, token=client_token("ua"))
    assert client.connection_id is not None
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        await api.add_connection_to_group("ga", client.connection_id)
        collector = Collector(client)
        first = await publish(api, "group", "ga", "g", range(50))
        await collector.wait_for("g", set(first.accepted))  # the owner is idle, reading

        owner = (await redis.get(lease) or b"").decode()
        victim = next(w for w in deployment.workers if w.name == owner)

        async def handed_to(consumer: str) -> bool:
            pending = await redis.xpending(stream, "fanout")
            return any(
                c["name"].decode() == consumer and c["pending"] > 0 for c in pending["consumers"]
            )

        # Freeze it while its read waits (where an idle worker spends nearly all its time):
        # Redis then hands it what is published. Frozen at another step, nothing is handed to
        # it and its lease is still fresh: thaw, let it route that, and try again.
        held, sent = Outcome(), 50
        for _attempt in range(5):
            victim.signal(signal.SIGSTOP)
            batch = await publish(api, "group", "ga", "g", range(sent, sent + 10))
            sent += 10
            held.accepted += batch.accepted
            held.refused += batch.refused
            try:
                await eventually(lambda: handed_to(owner), timeout=1.0)
                break
            except AssertionError:
                victim.signal(signal.SIGCONT)
                await collector.wait_for("g", set(held.accepted))
        else:
            raise AssertionError("the owner was never frozen in its read")
        try:

            async def taken_over() -> bool:
                holder = await redis.get(lease)
                return bool(holder) and holder.decode() != owner

            await eventually(taken_over, timeout=20)
            after = await publish(api, "group", "ga", "g", range(sent, sent + 40))
            await collector.wait_for("g", set(held.accepted) | set(after.accepted))
        finally:
            victim.signal(signal.SIGCONT)

        async def victim_lost_it() -> bool:
            return (
                "released [" in victim.output()
                and str(partition) in victim.output().split("released [")[-1].split("]")[0]
            )

        await eventually(victim_lost_it, timeout=20)
        # Everything the thawed worker could write is written once it has found the lease lost.
        last = await publish(api, "group", "ga", "g", range(sent + 40, sent + 41))
        await collector.wait_for("g", set(last.accepted))
        everything = first.accepted + held.accepted + after.accepted + last.accepted
        assert not (first.refused or held.refused or after.refused or last.refused)
        check_once_in_order(collector.got["g"], Outcome(accepted=everything))
        await collector.stop()
    fenced = metric(gateway.url, 'hubbub_drops_total{reason="stale_epoch"}')
    duplicates = metric(gateway.url, 'hubbub_drops_total{reason="duplicate"}')
    print(
        f"\nworker frozen past its lease with entries in hand: all "
        f"{len(everything)} delivered once and in order; refused as stale: {fenced:.0f}, "
        f"duplicates: {duplicates:.0f}"
    )
    assert fenced > 0  # the thawed worker did write behind its successor, and was refused
    await client.close()
