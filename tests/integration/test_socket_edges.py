"""Edge cases of serving an open SignalR socket: pipelined and split records, Close among other
records, clients that drop mid-invocation, bad UTF-8, binary frames, multi-connection users and
server-side close. Real gateways, workers and Redis, like ``test_socket.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

from hubbub.sdk.client import HubbubClient
from hubbub.wire.keys import HubKeys, KeySchema
from tests.support.processes import Deployment, eventually
from tests.support.rawclient import RS, RawClient, client_token

HANDSHAKE = b'{"protocol":"json","version":1}' + RS
UNKNOWN = "Method 'Nope' does not exist on this hub."
NO_STREAMING = "Streaming invocations are not supported."
JOINER = ["hubbub.joinLeaveGroup"]  # may join and leave any group


def inv(invocation_id: int | str, target: str, *args: Any) -> bytes:
    return (
        orjson.dumps(
            {"type": 1, "invocationId": str(invocation_id), "target": target, "arguments": args}
        )
        + RS
    )


def stream_inv(invocation_id: str) -> bytes:
    record = {"type": 4, "invocationId": invocation_id, "target": "Count", "arguments": [3]}
    return orjson.dumps(record) + RS


def done(invocation_id: int | str, error: str | None = None) -> dict[str, Any]:
    """The Completion the gateway writes for an invocation."""
    answer: dict[str, Any] = {"type": 3, "invocationId": str(invocation_id)}
    if error is not None:
        answer["error"] = error
    return answer


async def records(client: RawClient, n: int) -> list[dict[str, Any]]:
    return [await client.recv() for _ in range(n)]


async def until_closed(client: RawClient) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Every record the client still gets, and how its socket then closed."""
    got: list[dict[str, Any]] = []
    while True:
        try:
            got.append(await client.recv())
        except ConnectionClosed as closed:
            return got, closed


def hub_keys(prefix: str) -> HubKeys:
    return KeySchema(prefix).hub("chat")


async def keys_of_hub(redis: Redis, prefix: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=f"{hub_keys(prefix).base}:*")]


async def connections_gauge(gateway_url: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{gateway_url}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hubbub_connections" and sample.labels == {"hub": "chat"}:
                return sample.value
    return 0.0


async def head_connection(api: HubbubClient, conn: str) -> int:
    return (await api.http.head(f"/api/hubs/chat/connections/{conn}")).status_code


async def gone(api: HubbubClient, client: RawClient) -> None:
    """The gateway unregisters just after the socket closed; wait for that, bounded."""
    conn = client.connection_id
    assert conn

    async def absent() -> bool:
        return await head_connection(api, conn) == 404

    await eventually(absent, timeout=5)


async def no_trace_left(
    api: HubbubClient, redis: Redis, prefix: str, gateway_url: str, conn: str
) -> None:
    """Nothing of the hub is left in Redis (the test's only connection is gone) and the gateway
    counts no connection: its connection hash, group, user and gateway sets are all deleted."""

    async def clean() -> bool:
        return (
            await connections_gauge(gateway_url) == 0
            and await head_connection(api, conn) == 404
            and await keys_of_hub(redis, prefix) == []
        )

    await eventually(clean, timeout=5)


def raw_text_frame(payload: bytes) -> bytes:
    """A masked client text frame (FIN, opcode 1), for payloads the library would not send."""
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def assert_silent(client: RawClient, api: HubbubClient) -> None:
    """Prove ``client`` got nothing before a later marker sent only to it."""
    assert client.connection_id is not None
    await api.send_to_connection(client.connection_id, "marker", [])
    assert (await client.recv())["target"] == "marker"


# ---------------------------------------------------------------- pipelining and ordering


async def test_handshake_frame_carrying_invocations_answers_each_in_order(
    cluster: Deployment, api: HubbubClient
) -> None:
    client = await RawClient.connect(
        cluster.gateways[1].url, token=client_token("pip", JOINER), handshake=False
    )
    # One frame: handshake, a stream invocation (answered without a task), two invocations
    # (answered by a task) and another stream invocation that must wait for them.
    await client.send_raw(
        HANDSHAKE + stream_inv("s0") + inv(1, "JoinGroup", "g1") + inv(2, "Nope") + stream_inv("s1")
    )
    assert await records(client, 5) == [
        {},
        done("s0", NO_STREAMING),
        done(1),
        done(2, UNKNOWN),
        done("s1", NO_STREAMING),
    ]
    # The join that came with the handshake took effect.
    await api.send_to_group("g1", "newMessage", ["to g1"])
    assert (await client.recv())["arguments"] == ["to g1"]


async def test_burst_of_invocations_answered_in_order(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str
) -> None:
    client = await RawClient.connect(cluster.gateways[1].url, token=client_token("burst", JOINER))
    assert client.connection_id

    # 50 invocations, one frame each, sent without waiting for answers. Odd ids join b<id>,
    # even ids leave the group the previous one joined, every tenth is unknown: only the
    # groups before an unknown one stay, and only if the joins and leaves ran in order.
    def nth(i: int) -> bytes:
        if i % 10 == 0:
            return inv(i, "Nope")
        return inv(i, "JoinGroup", f"b{i}") if i % 2 else inv(i, "LeaveGroup", f"b{i - 1}")

    for i in range(1, 51):
        await client.send_raw(nth(i))
    await client.send_raw(b'{"type":6}' + RS)  # a Ping among them: nothing to answer
    await client.send_raw(stream_inv("s"))  # answered after the invocations before it
    expected = [done(i, UNKNOWN if i % 10 == 0 else None) for i in range(1, 51)]
    assert await records(client, 51) == [*expected, done("s", NO_STREAMING)]
    groups = await redis.smembers(hub_keys(prefix).connection_groups(client.connection_id))
    assert groups == {b"b9", b"b19", b"b29", b"b39", b"b49"}
    await api.send_to_group("b49", "newMessage", ["still in b49"])
    assert (await client.recv())["arguments"] == ["still in b49"]


async def test_records_split_across_frames_answered_in_order(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str
) -> None:
    client = await RawClient.connect(cluster.gateways[1].url, token=client_token("split", JOINER))
    assert client.connection_id
    # A record cut in two frames, the second frame also carrying the start of the next one.
    first, second = inv(1, "JoinGroup", "h1"), inv(2, "Nope")
    await client.send_raw(first[:10])
    await client.send_raw(first[10:] + second[:5])
    await client.send_raw(second[5:])
    assert await records(client, 2) == [done(1), done(2, UNKNOWN)]

    # 50 joins cut into 97-byte frames: no frame boundary matches a record boundary.
    blob = b"".join(inv(i, "JoinGroup", f"h{i}") for i in range(3, 53))
    for start in range(0, len(blob), 97):
        await client.send_raw(blob[start : start + 97])
    assert await records(client, 50) == [done(i) for i in range(3, 53)]
    groups = await redis.smembers(hub_keys(prefix).connection_groups(client.connection_id))
    assert groups == {b"h1"} | {f"h{i}".encode() for i in range(3, 53)}


async def test_invocations_then_close_in_one_frame(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str
) -> None:
    """Records before a client's Close are handled in order, those after it are ignored (Close
    is the last message of a connection); the gateway then closes the socket normally."""
    client = await RawClient.connect(cluster.gateways[1].url, token=client_token("cl", JOINER))
    assert client.connection_id
    await client.send_raw(
        inv(1, "JoinGroup", "g2") + inv(2, "Nope") + b'{"type":7}' + RS + inv(3, "Nope")
    )
    got, closed = await until_closed(client)
    assert got == [done(1), done(2, UNKNOWN)]
    assert isinstance(closed, ConnectionClosedOK)
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    await no_trace_left(api, redis, prefix, cluster.gateways[1].url, client.connection_id)
    assert not await api.group_exists("g2")


# ---------------------------------------------------------------- clients that drop


@pytest.mark.parametrize("when", ["with_handshake", "after_invocations", "during_rest_join"])
async def test_drop_while_joining_leaves_no_registration(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str, when: str
) -> None:
    gateway = cluster.gateways[1]
    token = client_token("dropper", JOINER)
    joins = b"".join(inv(i, "JoinGroup", f"d{i}") for i in range(1, 11))
    if when == "with_handshake":
        # Handshake and joins in one frame; drop as soon as the handshake is answered, i.e.
        # right after registration, while the joins are in flight.
        client = await RawClient.connect(gateway.url, token=token, handshake=False)
        await client.send_raw(HANDSHAKE + joins)
        assert await client.recv() == {}
        client.ws.transport.abort()
    elif when == "after_invocations":
        client = await RawClient.connect(gateway.url, token=token)
        await client.send_raw(joins)
        client.ws.transport.abort()
    else:
        client = await RawClient.connect(gateway.url, token=token)
        assert client.connection_id
        join = asyncio.create_task(api.add_connection_to_group("d1", client.connection_id))
        client.ws.transport.abort()
        try:
            await join
        except httpx.HTTPStatusError as exc:  # the drop won the race
            assert exc.response.status_code == 404
    conn = client.connection_id
    assert conn
    await no_trace_left(api, redis, prefix, gateway.url, conn)
    hk = hub_keys(prefix)
    for i in range(1, 11):
        assert await redis.scard(hk.group_connections(f"d{i}")) == 0
        assert not await redis.exists(hk.group_gateways(f"d{i}"))
    assert await redis.scard(hk.user_connections("dropper")) == 0
    assert not await redis.exists(hk.user_gateways("dropper"), hk.connection_groups(conn))
    assert not await redis.sismember(hk.gateway_connections(f"{prefix}-gw2"), conn)
    assert not await api.user_exists("dropper")


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "invocations_pending"])
async def test_invalid_utf8_text_frame_closes_1007_and_unregisters(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str, busy: bool
) -> None:
    gateway = cluster.gateways[1]
    client = await RawClient.connect(gateway.url, token=client_token("utf", JOINER))
    assert client.connection_id
    if busy:
        await client.send_raw(b"".join(inv(i, "JoinGroup", f"u{i}") for i in range(1, 6)))
    client.ws.transport.write(raw_text_frame(b'{"type":1,"target":"\xff\xfe"}' + RS))
    got, closed = await until_closed(client)
    # Only Completions of the joins sent before may still come; no SignalR Close record.
    assert all(r["type"] == 3 and "error" not in r for r in got), got
    assert isinstance(closed, ConnectionClosedError)
    assert closed.rcvd is not None and closed.rcvd.code == 1007
    await no_trace_left(api, redis, prefix, gateway.url, client.connection_id)


# ---------------------------------------------------------------- frames, users, server close


async def test_binary_frames_carry_records_like_text(
    cluster: Deployment, api: HubbubClient
) -> None:
    client = await RawClient.connect(
        cluster.gateways[1].url, token=client_token("bin", JOINER), handshake=False
    )
    await client.ws.send(HANDSHAKE)  # bytes: a binary frame
    assert await client.recv() == {}
    await client.ws.send(inv(1, "JoinGroup", "bg") + inv(2, "Nope"))
    await client.ws.send(stream_inv("s"))
    second = inv(3, "LeaveGroup", "none")
    await client.ws.send(second[:7])  # a record split over a binary and a text frame
    await client.send_raw(second[7:])
    assert await records(client, 4) == [
        done(1),
        done(2, UNKNOWN),
        done("s", NO_STREAMING),
        done(3),
    ]
    await api.send_to_group("bg", "newMessage", ["binary member"])
    assert (await client.recv())["arguments"] == ["binary member"]


@pytest.mark.parametrize("spread", [False, True], ids=["same_gateway", "two_gateways"])
async def test_user_with_two_connections_gets_user_message_on_both(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str, spread: bool
) -> None:
    first_gw = cluster.gateways[0 if spread else 1]
    first = await RawClient.connect(first_gw.url, token=client_token("twin"))
    second = await RawClient.connect(cluster.gateways[1].url, token=client_token("twin"))
    other = await RawClient.connect(cluster.gateways[1].url, token=client_token("other"))
    assert first.connection_id and second.connection_id

    await api.send_to_user("twin", "newMessage", ["hi twins"])
    assert (await first.recv())["arguments"] == ["hi twins"]
    assert (await second.recv())["arguments"] == ["hi twins"]
    await assert_silent(other, api)

    await first.close()
    await gone(api, first)
    members = await redis.smembers(hub_keys(prefix).user_connections("twin"))
    assert members == {second.connection_id.encode()}
    await api.send_to_user("twin", "newMessage", ["hi again"])
    assert (await second.recv())["arguments"] == ["hi again"]


@pytest.mark.parametrize("reason", ["kicked by admin: «bye» & see you", None])
async def test_rest_close_sends_reason_and_closes_socket(
    cluster: Deployment, api: HubbubClient, redis: Redis, prefix: str, reason: str | None
) -> None:
    gateway = cluster.gateways[1]
    client = await RawClient.connect(gateway.url, token=client_token("kicked", JOINER))
    conn = client.connection_id
    assert conn
    assert await client.invoke("JoinGroup", "room") == done(1)
    params = {"reason": reason} if reason is not None else {}
    response = await api.http.delete(f"/api/hubs/chat/connections/{conn}", params=params)
    assert response.status_code == 200
    got, closed = await until_closed(client)
    assert got == [{"type": 7, "error": reason} if reason is not None else {"type": 7}]
    assert isinstance(closed, ConnectionClosedOK)
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    await no_trace_left(api, redis, prefix, gateway.url, conn)
    assert not await api.group_exists("room")
