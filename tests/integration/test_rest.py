"""The REST API against real gateways, workers and Redis; recipients on the *other* gateway."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from hubbub.sdk.client import HubbubClient
from hubbub.tokens import mint_token
from hubbub.wire.keys import KeySchema
from tests.support.processes import ACCESS_KEY, Deployment, eventually
from tests.support.rawclient import RawClient, client_token


async def published(redis: Redis, prefix: str) -> int:
    """Entries ever appended to the publish partitions (trimming does not lower it)."""
    total = 0
    for n in range(16):
        key = KeySchema(prefix).publish_partition(n)
        if await redis.exists(key):
            total += (await redis.xinfo_stream(key))["entries-added"]
    return total


def invocation(*args: object, target: str = "newMessage") -> dict[str, object]:
    return {"type": 1, "target": target, "arguments": list(args)}


async def assert_silent(client: RawClient, marker: HubbubClient) -> None:
    """Prove ``client`` got nothing before a later marker message sent only to it."""
    assert client.connection_id is not None
    await marker.send_to_connection(client.connection_id, "marker", [])
    assert (await client.recv())["target"] == "marker"


async def test_send_to_all_group_user_connection(cluster: Deployment, api: HubbubClient) -> None:
    far = cluster.gateways[1].url
    alice = await RawClient.connect(far, token=client_token("alice"))
    bob = await RawClient.connect(cluster.gateways[0].url, token=client_token("bob"))
    assert alice.connection_id is not None

    await api.send_to_all("newMessage", ["all"])
    assert await alice.recv() == invocation("all")
    assert await bob.recv() == invocation("all")

    await api.add_connection_to_group("room", alice.connection_id)
    await api.send_to_group("room", "newMessage", ["room"])
    assert await alice.recv() == invocation("room")

    await api.send_to_user("alice", "newMessage", ["for alice"])
    assert await alice.recv() == invocation("for alice")

    await api.send_to_connection(alice.connection_id, "newMessage", ["direct"])
    assert await alice.recv() == invocation("direct")

    # bob saw only the broadcast
    await assert_silent(bob, api)
    for c in (alice, bob):
        await c.close()


async def test_excluded_on_broadcast_and_group(cluster: Deployment, api: HubbubClient) -> None:
    a = await RawClient.connect(cluster.gateways[1].url)
    b = await RawClient.connect(cluster.gateways[1].url)
    assert a.connection_id and b.connection_id
    await api.send_to_all("newMessage", ["not a"], excluded=[a.connection_id])
    assert await b.recv() == invocation("not a")
    await assert_silent(a, api)

    for c in (a, b):
        await api.add_connection_to_group("g", c.connection_id)  # type: ignore[arg-type]
    await api.send_to_group("g", "newMessage", ["not b"], excluded=[b.connection_id])
    assert await a.recv() == invocation("not b")
    await assert_silent(b, api)


async def test_user_added_to_group_before_connecting(
    cluster: Deployment, api: HubbubClient
) -> None:
    await api.add_user_to_group("vip", "carol")
    assert await api.user_in_group("vip", "carol")
    carol = await RawClient.connect(cluster.gateways[1].url, token=client_token("carol"))
    await api.send_to_group("vip", "newMessage", ["welcome"])
    assert await carol.recv() == invocation("welcome")

    await api.remove_user_from_group("vip", "carol")
    assert not await api.user_in_group("vip", "carol")
    await api.send_to_group("vip", "newMessage", ["gone"])
    await assert_silent(carol, api)


async def test_user_group_with_ttl_zero_binds_only_current_connections(
    cluster: Deployment, api: HubbubClient
) -> None:
    first = await RawClient.connect(cluster.gateways[1].url, token=client_token("dave"))
    await api.add_user_to_group("now", "dave", ttl=0)
    later = await RawClient.connect(cluster.gateways[0].url, token=client_token("dave"))
    await api.send_to_group("now", "newMessage", ["now"])
    assert await first.recv() == invocation("now")
    await assert_silent(later, api)


async def test_closed_connection_leaves_every_set(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str
) -> None:
    client = await RawClient.connect(cluster.gateways[1].url, token=client_token("erin"))
    conn = client.connection_id
    assert conn is not None
    await api.add_connection_to_group("g1", conn)
    await api.add_user_to_group("g2", "erin")
    assert await api.connection_exists(conn)
    assert await api.user_exists("erin")
    assert await api.group_exists("g1") and await api.group_exists("g2")

    await client.close()

    async def gone() -> bool:
        return not await api.connection_exists(conn)

    await eventually(gone)
    assert not await api.user_exists("erin")
    assert not await api.group_exists("g1")
    assert not await api.group_exists("g2")
    hub_keys = [k async for k in redis.scan_iter(match=f"{prefix}:{{{prefix}:chat}}:*")]
    # Only the durable user -> group binding remains.
    assert hub_keys == [KeySchema(prefix).hub("chat").user_groups("erin").encode()]


async def test_membership_errors_and_existence(cluster: Deployment, api: HubbubClient) -> None:
    http = api.http
    r = await http.put("/api/hubs/chat/groups/g/connections/nope")
    assert r.status_code == 404
    assert r.headers["x-ms-error-code"] == "Error.Connection.NotExisted"
    assert r.json()["code"] == "Error.Connection.NotExisted"
    r = await http.head("/api/hubs/chat/connections/nope")
    assert r.status_code == 404
    assert r.headers["x-ms-error-code"] == "Warning.Connection.NotExisted"
    r = await http.get("/api/hubs/chat/users/nobody")
    assert r.status_code == 404 and r.json()["code"] == "Warning.User.NotExisted"
    r = await http.head("/api/hubs/chat/groups/empty")
    assert r.status_code == 404


async def test_close_connection_with_reason(cluster: Deployment, api: HubbubClient) -> None:
    client = await RawClient.connect(cluster.gateways[1].url)
    assert client.connection_id
    await api.close_connection(client.connection_id, reason="kicked by admin")
    assert await client.recv() == {"type": 7, "error": "kicked by admin"}


async def test_generated_token_connects_as_user(cluster: Deployment, api: HubbubClient) -> None:
    token = await api.generate_token(user_id="frank")
    client = await RawClient.connect(cluster.gateways[1].url, token=token)
    await api.send_to_user("frank", "newMessage", ["hi frank"])
    assert await client.recv() == invocation("hi frank")


async def test_legacy_v1_paths_and_application_prefix(
    cluster: Deployment, api: HubbubClient
) -> None:
    client = await RawClient.connect(cluster.gateways[1].url, hub="app_chat")
    url = "/api/v1/hubs/chat/:send"
    r = await api.http.post(url, params={"application": "app"}, json={"target": "t"})
    assert r.status_code == 202
    assert await client.recv() == invocation(target="t")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", 400),
        (b"{}", 400),
        (b'{"target": ""}', 400),
        (b'{"target": "x", "arguments": 5}', 400),
        (b"[1, 2]", 400),
        (b'{"target": "x", "arguments": ["' + b"a" * (1024 * 1024) + b'"]}', 413),
    ],
)
async def test_bad_bodies_are_refused_and_nothing_is_published(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str, body: bytes, code: int
) -> None:
    before = await published(redis, prefix)
    r = await api.http.post(
        "/api/hubs/chat/:send", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == code, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["message"]
    assert await published(redis, prefix) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/hubs/1bad/:send",  # hub must start with a letter
        "/api/hubs/chat/connections/bad%20id/:send",
        "/api/hubs/chat/:send?excluded=bad%20id",
    ],
)
async def test_bad_names_are_400(cluster: Deployment, api: HubbubClient, path: str) -> None:
    r = await api.http.post(path, json={"target": "x"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "Error.InvalidName"


async def test_rest_authentication(cluster: Deployment) -> None:
    base = cluster.gateways[0].url
    url = f"{base}/api/hubs/chat/:send"
    body = {"target": "x"}
    async with httpx.AsyncClient() as http:
        r = await http.post(url, json=body)
        assert r.status_code == 401 and "Bearer" in r.json()["message"]
        wrong_key = mint_token("another-key-of-enough-length-000000", url)
        r = await http.post(url, json=body, headers={"Authorization": f"Bearer {wrong_key}"})
        assert r.status_code == 401
        wrong_aud = mint_token(ACCESS_KEY, f"{base}/api/hubs/other/:send")
        r = await http.post(url, json=body, headers={"Authorization": f"Bearer {wrong_aud}"})
        assert r.status_code == 401 and "audience" in r.json()["message"]
        expired = mint_token(ACCESS_KEY, url, minutes=-5)
        r = await http.post(url, json=body, headers={"Authorization": f"Bearer {expired}"})
        assert r.status_code == 401 and "expired" in r.json()["message"]
        # Azure's SDK sends the query in aud and drops the port: both are ignored.
        sdk_style = mint_token(ACCESS_KEY, "HTTP://127.0.0.1/api/hubs/chat/:send?api-version=1")
        r = await http.post(
            url + "?api-version=2022-06-01",
            json=body,
            headers={"Authorization": f"Bearer {sdk_style}"},
        )
        assert r.status_code == 202, r.text


async def test_concurrent_publishes_all_arrive_once(cluster: Deployment, api: HubbubClient) -> None:
    client = await RawClient.connect(cluster.gateways[1].url)
    n = 300
    await asyncio.gather(*(api.send_to_all("n", [i]) for i in range(n)))
    got = sorted([(await client.recv())["arguments"][0] for _ in range(n)])
    assert got == list(range(n))
    await assert_silent(client, api)


async def test_gateway_drops_redelivered_message_ids(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str
) -> None:
    """What a worker that dies between its inbox appends and its XACK causes: the same
    delivery twice. The client must see it once."""
    from hubbub.protocol.signalr import encode_invocation
    from hubbub.wire.envelopes import Kind, MessageEntry

    client = await RawClient.connect(cluster.gateways[1].url)
    assert client.connection_id
    fields = MessageEntry(
        Kind.CONNECTION, "chat", client.connection_id, encode_invocation("dup", [1])
    ).fields(b"7:1-1")
    delivery = dict(zip(fields[::2], fields[1::2], strict=True))
    inbox = KeySchema(prefix).inbox(f"{prefix}-gw2")
    await redis.xadd(inbox, delivery)
    await redis.xadd(inbox, delivery)
    assert await client.recv() == invocation(1, target="dup")
    await assert_silent(client, api)


async def test_batch_publish(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str
) -> None:
    alice = await RawClient.connect(cluster.gateways[1].url, token=client_token("alice"))
    assert alice.connection_id
    await api.add_connection_to_group("room", alice.connection_id)
    ids = await api.send_batch(
        [
            {"to": "all", "target": "t", "arguments": [1]},
            {"to": "group", "name": "room", "target": "t", "arguments": [2]},
            {"to": "user", "name": "alice", "target": "t", "arguments": [3]},
            {"to": "connection", "name": alice.connection_id, "target": "t", "arguments": [4]},
            {"to": "all", "target": "t", "arguments": [5], "excluded": [alice.connection_id]},
        ]
    )
    assert len(set(ids)) == 5
    got = sorted([(await alice.recv())["arguments"][0] for _ in range(4)])
    assert got == [1, 2, 3, 4]
    await assert_silent(alice, api)

    # One bad item refuses the whole batch; nothing is appended.
    before = await published(redis, prefix)
    r = await api.http.post(
        "/api/hubs/chat/:batch",
        json={"messages": [
            {"to": "all", "target": "t"},
            {"to": "connection", "name": "bad id", "target": "t"},
        ]},
    )  # fmt: skip
    assert r.status_code == 400 and "messages[1]" in r.json()["message"]
    assert await published(redis, prefix) == before
