"""Retries never duplicate (issue 10): a send with an ``Idempotency-Key`` (REST header, a
batch item's ``idempotencyKey``, ``Publisher(idempotency_key=...)``) sent again within the
window answers the first message id and appends nothing; another key is another message."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from hubbub.redis.stream import target_partition
from hubbub.sdk.client import HubbubClient, ServiceAuth
from hubbub.sdk.publisher import Publisher
from hubbub.settings import Settings
from hubbub.wire.envelopes import Kind
from hubbub.wire.keys import KeySchema
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient, client_token


async def received(client: RawClient, end: str) -> list[str]:
    """Targets received up to and including the marker ``end`` (sent last, to the same
    connection, so it travels in the same partition as what it closes)."""
    got: list[str] = []
    while True:
        message = await client.recv()
        got.append(message["target"])
        if message["target"] == end:
            return got


async def test_a_retried_send_is_one_message(
    deployment: Deployment, redis: Redis, prefix: str
) -> None:
    gateway = await deployment.start_gateway()
    deployment.start_worker()
    client = await RawClient.connect(gateway.url, token=client_token("ida"))
    conn = client.connection_id
    assert conn is not None
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        first = await api.send_to_connection(conn, "once", [1], idempotency_key="order-17")
        again = await api.send_to_connection(conn, "once", [1], idempotency_key="order-17")
        assert again == first
        # Concurrently, with a new key: still one message.
        ids = await asyncio.gather(
            *(
                api.send_to_connection(conn, "race", [n], idempotency_key="order-18")
                for n in range(10)
            )
        )
        assert len(set(ids)) == 1, ids
        other = await api.send_to_connection(conn, "other", [2], idempotency_key="order-19")
        assert other not in (first, ids[0])
        plain = [await api.send_to_connection(conn, "plain", [3]) for _ in range(2)]
        assert plain[0] != plain[1]  # no key: every call is a message
        await api.send_to_connection(conn, "end", [])
        got = await received(client, "end")
        assert got == ["once", "race", "other", "plain", "plain", "end"], got
        # The key is remembered for the window, no longer.
        schema = KeySchema(prefix)
        partition = target_partition("chat", Kind.CONNECTION, conn, Settings().publish_partitions)
        key = schema.idempotency(schema.publish_partition(partition), "chat", "order-17")
        ttl = await redis.pttl(key)
        assert 0 < ttl <= Settings().idempotency_window * 1000, ttl
        assert (await redis.get(key) or b"").decode() == first
    await client.close()


async def test_batch_items_and_the_publisher_take_keys(
    deployment: Deployment, redis: Redis, prefix: str
) -> None:
    gateway = await deployment.start_gateway()
    deployment.start_worker()
    client = await RawClient.connect(gateway.url, token=client_token("idb"))
    conn = client.connection_id
    assert conn is not None
    batch = [
        {"to": "connection", "name": conn, "target": "b1", "idempotencyKey": "b-1"},
        {"to": "connection", "name": conn, "target": "b2"},
        {"to": "connection", "name": conn, "target": "b3", "idempotencyKey": "b-3"},
    ]
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        first = await api.send_batch(batch)
        again = await api.send_batch(batch)
        assert again[0] == first[0] and again[2] == first[2]
        assert again[1] != first[1]  # the item without a key is sent again
        settings = Settings(redis_url=deployment.redis_url, key_prefix=prefix)
        async with Publisher.from_settings(settings, "chat") as publisher:
            p1 = await publisher.send_to_connection(conn, "p", [], idempotency_key="p-1")
            p2 = await publisher.send_to_connection(conn, "p", [], idempotency_key="p-1")
            assert p1 == p2
            # The same key as a REST send on the same hub is the same message.
            rest = await api.send_to_connection(conn, "p", [], idempotency_key="p-1")
            assert rest == p1
        await api.send_to_connection(conn, "end", [])
        got = await received(client, "end")
        assert got == ["b1", "b2", "b3", "b2", "p", "end"], got
    await client.close()


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\u00e9", "a\tb"])
async def test_bad_keys_are_refused(deployment: Deployment, key: str) -> None:
    gateway = await deployment.start_gateway()
    async with httpx.AsyncClient(base_url=gateway.url, auth=ServiceAuth(ACCESS_KEY)) as http:
        r = await http.post(
            "/api/hubs/chat/:send",
            json={"target": "m", "arguments": []},
            headers={"Idempotency-Key": key.encode()},
        )
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "Error.InvalidName", r.text
        item = {"to": "all", "target": "m", "idempotencyKey": key}
        r = await http.post("/api/hubs/chat/:batch", json={"messages": [item]})
        assert r.status_code == 400, r.text
        assert "messages[0]" in r.json()["message"], r.text
