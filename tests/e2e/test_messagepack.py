"""The MessagePack hub protocol end to end: the official JS client with
@microsoft/signalr-protocol-msgpack and signalrcore's MessagePackHubProtocol, unchanged, against
two gateways and two workers; REST calls go to the gateway the clients are not connected to."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest
from signalrcore.hub_connection_builder import HubConnectionBuilder
from signalrcore.protocol.messagepack_protocol import MessagePackHubProtocol

from hubbub.protocol import messagepack as mp
from hubbub.protocol.codec import MESSAGEPACK
from hubbub.protocol.signalr import Invocation
from hubbub.sdk.client import HubbubClient
from hubbub.upstream import Call, Upstream
from tests.e2e.nodeclient import NodeClient, ensure_node_modules
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import RawClient, client_token

pytestmark = pytest.mark.e2e

JOIN = ["hubbub.joinLeaveGroup"]


@pytest.fixture(scope="session", autouse=True)
def _js_installed() -> None:
    ensure_node_modules()


async def js_client(url: str, user: str, *, msgpack: bool = True, **options: Any) -> NodeClient:
    client = NodeClient()
    await client.start(url, client_token(user, roles=JOIN), msgpack=msgpack, **options)
    await client.wait_connected()
    return client


@pytest.fixture
async def js() -> AsyncIterator[list[NodeClient]]:
    clients: list[NodeClient] = []
    yield clients
    for c in clients:
        await c.aclose()


class CoreClient:
    """signalrcore with its MessagePack protocol: a threaded client, behind queues."""

    def __init__(self, url: str, user: str) -> None:
        token = client_token(user, roles=JOIN)
        self.hub = (
            HubConnectionBuilder()
            .with_url(url, options={"access_token_factory": lambda: token})
            .with_hub_protocol(MessagePackHubProtocol())
            # Its ping thread only runs with automatic reconnect (see test_signalrcore.py).
            .with_automatic_reconnect(
                {"type": "raw", "keep_alive_interval": 10, "reconnect_interval": 5}
            )
            .build()
        )
        self.opened = threading.Event()
        self.messages: queue.Queue[list[Any]] = queue.Queue()
        self.completions: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.hub.on_open(self.opened.set)
        self.hub.on("newMessage", self.messages.put)
        self.hub.on_error(lambda m: self.completions.put(("error", m.error)))

    async def start(self) -> None:
        self.hub.start()
        assert await asyncio.to_thread(self.opened.wait, 15), "signalrcore did not connect"

    @property
    def connection_id(self) -> str | None:
        return getattr(self.hub.transport, "connection_id", None)

    async def message(self) -> list[Any]:
        return await asyncio.to_thread(self.messages.get, True, 10)

    async def invoke(self, method: str, *args: Any) -> tuple[str, Any]:
        self.hub.send(
            method, list(args), on_invocation=lambda m: self.completions.put(("ok", m.result))
        )
        return await asyncio.to_thread(self.completions.get, True, 10)

    def stop(self) -> None:
        # stop() blocks ~15 s on its own threads after closing the socket: in the background.
        threading.Thread(target=self.hub.stop, daemon=True).start()


@pytest.fixture
def core() -> Iterator[list[CoreClient]]:
    clients: list[CoreClient] = []
    yield clients
    for c in clients:
        c.stop()


async def message(client: NodeClient) -> list[Any]:
    args: list[Any] = (await client.next_event("message"))["args"]
    return args


async def test_msgpack_clients_receive_all_group_user_connection(
    cluster: Deployment,
    api: HubbubClient,
    js: list[NodeClient],
    core: list[CoreClient],
) -> None:
    url = f"{cluster.gateways[1].url}/hubs/chat"
    alice = await js_client(url, "alice")
    js.append(alice)
    sig = CoreClient(url, "sig")
    core.append(sig)
    await sig.start()
    assert alice.connection_id and sig.connection_id

    payload = ["hello", {"n": 1, "f": 1.5, "nested": [None, True, "ü"]}]
    await api.send_to_all("newMessage", payload)
    assert await message(alice) == payload
    assert await sig.message() == payload

    await api.add_connection_to_group("room", alice.connection_id)
    await api.add_connection_to_group("room", sig.connection_id)
    await api.send_to_group("room", "newMessage", ["room only"])
    assert await message(alice) == ["room only"]
    assert await sig.message() == ["room only"]

    await api.send_to_user("alice", "newMessage", ["for alice"])
    await api.send_to_user("sig", "newMessage", ["for sig"])
    assert await message(alice) == ["for alice"]
    assert await sig.message() == ["for sig"]

    await api.send_to_connection(alice.connection_id, "newMessage", ["direct"])
    await api.send_to_connection(sig.connection_id, "newMessage", ["direct sig"])
    assert await message(alice) == ["direct"]
    assert await sig.message() == ["direct sig"]

    # The client's own JoinGroup, a Completion in MessagePack both ways.
    assert await alice.invoke("JoinGroup", "mine") is None
    assert await sig.invoke("JoinGroup", "mine") == ("ok", None)
    await api.send_to_group("mine", "newMessage", ["joined"])
    assert await message(alice) == ["joined"]
    assert await sig.message() == ["joined"]
    # A refusal comes back as an error Completion; the connection stays open.
    with pytest.raises(RuntimeError, match="does not exist"):
        await alice.invoke("Nope")
    kind, error = await sig.invoke("Nope")
    assert kind == "error" and "does not exist" in error
    assert (await alice.state())["state"] == "Connected"


async def test_mixed_group_gets_the_same_messages_in_order(
    cluster: Deployment,
    api: HubbubClient,
    js: list[NodeClient],
    core: list[CoreClient],
) -> None:
    a, b = (f"{g.url}/hubs/chat" for g in cluster.gateways)
    json_a = await js_client(a, "j1", msgpack=False)
    mp_a = await js_client(a, "m1")
    json_b = await js_client(b, "j2", msgpack=False)
    mp_b = await js_client(b, "m2")
    js += [json_a, mp_a, json_b, mp_b]
    sig = CoreClient(a, "s1")
    core.append(sig)
    await sig.start()
    for client in js:
        assert await client.invoke("JoinGroup", "mixed") is None
    assert await sig.invoke("JoinGroup", "mixed") == ("ok", None)

    sent = [[i, f"message {i}", {"i": i, "x": [i * 0.5, None]}] for i in range(20)]
    for args in sent:
        await api.send_to_group("mixed", "newMessage", args)
    for client in js:
        assert [await message(client) for _ in sent] == sent
    assert [await sig.message() for _ in sent] == sent


@pytest.fixture
async def service(cluster: Deployment) -> AsyncIterator[list[Call]]:
    """An SDK service echoing what a client sent, as JSON reaches it."""
    calls: list[Call] = []
    app = Upstream(cluster.service_settings(), name="msgpack-service")
    chat = app.hub("chat")

    @chat.on("echo")
    async def echo(call: Call, *args: Any) -> Any:
        calls.append(call)
        return {"args": list(args), "user": call.user_id}

    async with app:
        await cluster.upstream_services_seen()
        yield calls


async def test_upstream_receives_msgpack_arguments_and_answers(
    cluster: Deployment, service: list[Call], js: list[NodeClient], core: list[CoreClient]
) -> None:
    url = f"{cluster.gateways[1].url}/hubs/chat"
    alice = await js_client(url, "alice")
    js.append(alice)
    args = [1, "two", {"three": 3.5, "list": [True, None]}]
    assert await alice.invoke("echo", *args) == {"args": args, "user": "alice"}
    assert service[-1].arguments == args
    assert service[-1].user_id == "alice"

    sig = CoreClient(url, "sig")
    core.append(sig)
    await sig.start()
    assert await sig.invoke("echo", "from", "core") == (
        "ok",
        {"args": ["from", "core"], "user": "sig"},
    )

    # Binary data has no JSON form: refused with an error, the connection stays.
    kind, error = await sig.invoke("echo", b"\x00\x01")
    assert kind == "error" and "JSON cannot carry" in error, error
    assert await sig.invoke("echo", 2) == ("ok", {"args": [2], "user": "sig"})


async def test_client_results_from_a_msgpack_client(
    cluster: Deployment, js: list[NodeClient]
) -> None:
    url = f"{cluster.gateways[1].url}/hubs/chat"
    client = await js_client(url, "erin", answer=("ask", "fail"))
    js.append(client)
    conn = client.connection_id
    assert conn is not None
    base = f"{cluster.gateways[0].url}/api/hubs/chat/connections"
    async with HubbubClient(cluster.gateways[0].url, ACCESS_KEY, "chat") as api:
        answer = await api.http.post(
            f"{base}/{conn}/:invoke", json={"target": "ask", "arguments": [7, "x"]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"result": {"echo": [7, "x"]}}
        failed = await api.http.post(
            f"{base}/{conn}/:invoke", json={"target": "fail", "arguments": []}
        )
        assert failed.status_code == 502, failed.text
        assert "the client refuses" in failed.json()["message"]


async def test_wire_bytes(cluster: Deployment, api: HubbubClient) -> None:
    """On the wire: the handshake answer is JSON text; what follows is binary MessagePack,
    records sent in the same frame as the handshake are read, and a delivery is the
    transcoded record, byte for byte."""
    raw = await RawClient.connect(
        cluster.gateways[1].url, token=client_token("wire", roles=JOIN), handshake=False
    )
    try:
        # As the JS client writes it: five items, no stream ids.
        body = msgpack.packb([1, {}, "1", "JoinGroup", ["wire"]])
        join = mp.prefix(len(body)) + body
        await raw.ws.send(b'{"protocol":"messagepack","version":1}\x1e' + join)
        assert await raw.ws.recv() == "{}\x1e"  # text
        completion = await asyncio.wait_for(raw.ws.recv(), 10)
        assert completion == mp.encode_completion("1")  # binary, void
        await api.send_to_group("wire", "newMessage", ["hi", 1])
        while True:
            frame = await asyncio.wait_for(raw.ws.recv(), 10)
            assert isinstance(frame, bytes)
            if frame != mp.PING_RECORD:
                break
        assert frame == mp.encode_invocation("newMessage", ["hi", 1])
        assert MESSAGEPACK.parse(frame[1:]) == Invocation("newMessage", ["hi", 1])
    finally:
        await raw.close()
