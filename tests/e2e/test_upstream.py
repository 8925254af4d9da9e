"""The way back with the official JS client: invocations reach a Python SDK service
(:mod:`hubbub.upstream`), its answers come back as Completions, connection events arrive,
and REST ``:invoke`` gets a client's own answer (client results), across two gateways."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hubbub.sdk.client import HubbubClient
from hubbub.upstream import Call, ConnectionEvent, HubError, Upstream
from tests.e2e.nodeclient import NodeClient, ensure_node_modules
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import client_token

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session", autouse=True)
def _js_installed() -> None:
    ensure_node_modules()


class Recorder:
    """What the SDK handlers saw, with an event per arrival."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.events: list[tuple[str, ConnectionEvent]] = []
        self.changed = asyncio.Condition()

    async def add(self, item: Any) -> None:
        async with self.changed:
            if isinstance(item, Call):
                self.calls.append(item)
            else:
                self.events.append(item)
            self.changed.notify_all()

    async def wait(self, predicate: Any, timeout: float = 10.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)


@pytest.fixture
async def service(cluster: Deployment) -> AsyncIterator[Recorder]:
    """A chat service on the SDK, in this process, consuming the cluster's upstream stream."""
    seen = Recorder()
    app = Upstream(cluster.service_settings(), name="chat-service")
    chat = app.hub("chat")

    @chat.on("echo")
    async def echo(call: Call, *args: Any) -> Any:
        await seen.add(call)
        return {"args": list(args), "user": call.user_id, "connection": call.connection_id}

    @chat.on("sendMessage")
    async def send_message(call: Call, room: str, text: str) -> None:
        await seen.add(call)
        await chat.send_to_group(room, "message", [call.user_id, text])

    @chat.on("announce")
    async def announce(call: Call, text: str) -> str:
        key = f"{call.connection_id}:{call.invocation_id}"
        for _ in range(2):  # as a handler run twice (at least once) would: sent once
            await chat.send_to_connection(
                call.connection_id, "message", [text], idempotency_key=key
            )
        return "done"

    @chat.on("join")
    async def join(call: Call, room: str) -> bool:
        return await chat.add_connection_to_group(room, call.connection_id)

    @chat.on("boom")
    async def boom(call: Call) -> None:
        raise HubError("no such room")

    @chat.on("crash")
    async def crash(call: Call) -> None:
        raise ValueError("a bug")

    @chat.on("slow")
    async def slow(call: Call) -> None:
        await asyncio.Event().wait()  # never answers: the gateway's timeout does

    @chat.on_connected
    async def connected(event: ConnectionEvent) -> None:
        await seen.add(("connected", event))

    @chat.on_disconnected
    async def disconnected(event: ConnectionEvent) -> None:
        await seen.add(("disconnected", event))

    async with app:
        await cluster.upstream_services_seen()
        yield seen


async def open_client(url: str, user: str, **options: Any) -> NodeClient:
    client = NodeClient()
    await client.start(url, client_token(user), **options)
    await client.wait_connected()
    return client


@pytest.fixture
async def clients() -> AsyncIterator[list[NodeClient]]:
    opened: list[NodeClient] = []
    yield opened
    for client in opened:
        await client.aclose()


async def test_invoke_returns_the_handlers_value_and_send_reaches_it(
    cluster: Deployment, service: Recorder, clients: list[NodeClient]
) -> None:
    url = f"{cluster.gateways[1].url}/hubs/chat"
    alice = await open_client(url, "alice", on=("message",))
    bob = await open_client(f"{cluster.gateways[0].url}/hubs/chat", "bob", on=("message",))
    clients += [alice, bob]

    result = await alice.invoke("echo", 1, "two", {"three": 3})
    assert result == {"args": [1, "two", {"three": 3}], "user": "alice",
                      "connection": alice.connection_id}  # fmt: skip
    call = service.calls[-1]
    assert (call.method, call.user_id, call.invocation_id) == ("echo", "alice", "0")
    assert "alice" in call.claims.values() and "exp" in call.claims  # the token's claims

    # Group changes and sends from a handler; send() (no answer) reaches its handler too.
    assert await alice.invoke("join", "room1") is True
    assert await bob.invoke("join", "room1") is True
    await alice.send("sendMessage", "room1", "hello")
    for client in (alice, bob):
        assert (await client.next_event("message"))["args"] == ["alice", "hello"]
    # A send repeated with the call's idempotency key arrives once; the answer comes after it.
    assert await alice.invoke("announce", "once") == "done"
    assert (await alice.next_event("message"))["args"] == ["once"]
    assert alice._claim(lambda e: e.get("event") == "message") is None
    sent = [c for c in service.calls if c.method == "sendMessage"][-1]
    assert (sent.method, sent.invocation_id, sent.arguments) == (
        "sendMessage", None, ["room1", "hello"],
    )  # fmt: skip


async def test_errors_and_timeouts_arrive_as_errors(
    deployment: Deployment, clients: list[NodeClient]
) -> None:
    deployment.extra_env["HUBBUB_INVOCATION_TIMEOUT"] = "1.5"
    await deployment.start_gateway()
    deployment.start_worker()
    app = Upstream(deployment.service_settings(invocation_timeout=1.5), name="errors")
    chat = app.hub("chat")

    @chat.on("boom")
    async def boom(call: Call) -> None:
        raise HubError("no such room")

    @chat.on("crash")
    async def crash(call: Call) -> None:
        raise ValueError("a secret detail")

    @chat.on("slow")
    async def slow(call: Call) -> None:
        await asyncio.Event().wait()

    url = f"{deployment.gateways[0].url}/hubs/chat"
    client = await open_client(url, "carol")
    clients.append(client)
    # No service live yet: the gateway answers at once, it does not wait for a timeout.
    with pytest.raises(RuntimeError, match="Method 'boom' does not exist on this hub"):
        await client.invoke("boom", timeout=1.0)

    async with app:
        await deployment.upstream_services_seen()
        with pytest.raises(RuntimeError, match="no such room"):
            await client.invoke("boom")
        with pytest.raises(RuntimeError) as crashed:
            await client.invoke("crash")
        assert "An error occurred invoking 'crash'" in str(crashed.value)
        assert "secret" not in str(crashed.value)
        with pytest.raises(RuntimeError, match="Method 'nope' does not exist on this hub"):
            await client.invoke("nope")
        with pytest.raises(RuntimeError, match=r"No answer within 1\.5 seconds"):
            await client.invoke("slow", timeout=5.0)
        # The stuck handler was cancelled at the same timeout: the connection's next
        # invocations (handled in order) do not wait behind it.
        with pytest.raises(RuntimeError, match="no such room"):
            await client.invoke("boom")
        # Counted: the gateway's outcomes and appends, the consumer's handling.
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{deployment.gateways[0].url}/metrics")).text
        assert 'hubbub_invocations_total{outcome="timeout"} 1.0' in metrics
        assert 'hubbub_invocations_total{outcome="answered"} 4.0' in metrics
        assert 'hubbub_upstream_appended_total{event="invocation"} 5.0' in metrics
        handled = app.metrics.render().decode()
        timeouts = 'hubbub_upstream_handled_seconds_count{event="invocation",outcome="timeout"} '
        assert timeouts + "1.0" in handled
        errors = 'hubbub_upstream_handled_seconds_count{event="invocation",outcome="error"} '
        assert errors + "4.0" in handled, handled  # boom twice, crash, nope
        app.stop()


async def test_connected_and_disconnected_events(
    cluster: Deployment, service: Recorder, clients: list[NodeClient]
) -> None:
    client = await open_client(f"{cluster.gateways[0].url}/hubs/chat", "dave")
    conn = client.connection_id

    await service.wait(lambda: any(e.connection_id == conn for k, e in service.events))
    kind, event = next((k, e) for k, e in service.events if e.connection_id == conn)
    assert (kind, event.user_id, event.hub, event.error) == ("connected", "dave", "chat", None)
    await client.stop()
    await service.wait(
        lambda: any(k == "disconnected" and e.connection_id == conn for k, e in service.events)
    )


async def test_client_results_across_gateways(
    deployment: Deployment, clients: list[NodeClient]
) -> None:
    deployment.extra_env["HUBBUB_INVOCATION_TIMEOUT"] = "1.5"
    await deployment.start_gateway()
    await deployment.start_gateway()
    deployment.start_worker()
    url = f"{deployment.gateways[1].url}/hubs/chat"
    client = NodeClient()
    await client.start(url, client_token("erin"), answer=("ask", "fail", "hang"))
    await client.wait_connected()
    clients.append(client)
    conn = client.connection_id
    assert conn is not None

    base = f"{deployment.gateways[0].url}/api/hubs/chat/connections"
    async with HubbubClient(deployment.gateways[0].url, ACCESS_KEY, "chat") as api:
        http = api.http  # signed requests, on the gateway that does NOT hold the client
        answer = await http.post(
            f"{base}/{conn}/:invoke", json={"target": "ask", "arguments": [7, "x"]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"result": {"echo": [7, "x"]}}

        failed = await http.post(f"{base}/{conn}/:invoke", json={"target": "fail", "arguments": []})
        assert failed.status_code == 502, failed.text
        assert failed.json()["code"] == "Error.Invocation.Failed"
        assert "the client refuses" in failed.json()["message"]

        hung = await http.post(f"{base}/{conn}/:invoke", json={"target": "hang", "arguments": []})
        assert hung.status_code == 504, hung.text
        assert hung.json()["code"] == "Error.Invocation.Timeout"

        missing = await http.post(f"{base}/nope/:invoke", json={"target": "ask", "arguments": []})
        assert missing.status_code == 404, missing.text
        assert missing.json()["code"] == "Error.Connection.NotExisted"


async def test_group_invocations_go_upstream_too_when_configured(
    deployment: Deployment, clients: list[NodeClient]
) -> None:
    deployment.extra_env["HUBBUB_UPSTREAM_GROUP_INVOCATIONS"] = "true"
    await deployment.start_gateway()
    deployment.start_worker()
    seen = Recorder()
    app = Upstream(deployment.service_settings(), name="groups")

    @app.hub("chat").on("JoinGroup")
    async def joined(call: Call, group: str) -> str:
        await seen.add(call)
        return "ignored: the gateway answers JoinGroup itself"

    async with app:
        await deployment.upstream_services_seen()
        client = NodeClient()
        token = client_token("gus", roles=["hubbub.joinLeaveGroup"])
        await client.start(f"{deployment.gateways[0].url}/hubs/chat", token, on=("message",))
        await client.wait_connected()
        clients.append(client)
        assert await client.invoke("JoinGroup", "den") is None  # the built-in answer
        await seen.wait(lambda: bool(seen.calls))
        call = seen.calls[0]
        # Told after the fact, without an invocation id: the service cannot answer it.
        assert (call.method, call.arguments, call.invocation_id) == ("JoinGroup", ["den"], None)
        async with HubbubClient(deployment.gateways[0].url, ACCESS_KEY, "chat") as api:
            await api.send_to_group("den", "message", ["in the den"])
        assert (await client.next_event("message"))["args"] == ["in the den"]
        app.stop()


async def test_a_crashed_gateways_connections_get_their_disconnected_events(
    cluster: Deployment, service: Recorder, clients: list[NodeClient]
) -> None:
    """Nobody else would tell the services: the worker that reaps the dead gateway does."""
    client = await open_client(f"{cluster.gateways[0].url}/hubs/chat", "hank")
    clients.append(client)
    conn = client.connection_id
    await service.wait(lambda: any(e.connection_id == conn for _, e in service.events))
    cluster.gateways[0].signal(signal.SIGKILL)
    await service.wait(
        lambda: any(k == "disconnected" and e.connection_id == conn for k, e in service.events),
        timeout=20,
    )
    gone = next(e for k, e in service.events if k == "disconnected" and e.connection_id == conn)
    assert (gone.user_id, gone.error) == ("hank", "The gateway holding the connection stopped.")
