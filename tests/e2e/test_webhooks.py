"""The HTTP upstream (:mod:`hubbub.upstream.webhook`) end to end: the official JS client, a
gateway, a fan-out worker running the dispatcher, and a real HTTP webhook receiver (uvicorn,
in this test's event loop) that checks what Azure SignalR's upstream protocol promises."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from tests.e2e.nodeclient import NodeClient, ensure_node_modules
from tests.e2e.test_upstream import open_client
from tests.support.processes import ACCESS_KEY, Deployment
from tests.support.rawclient import client_token

pytestmark = pytest.mark.e2e

SECONDARY_KEY = "test-secondary-key-fedcba9876543210"
RS = b"\x1e"


@pytest.fixture(scope="session", autouse=True)
def _js_installed() -> None:
    ensure_node_modules()


@dataclass
class Received:
    method: str
    path: str  # as sent, percent-escapes kept
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> str:
        return self.headers.get("x-asrs-event", "")

    @property
    def connection(self) -> str:
        return self.headers.get("x-asrs-connection-id", "")

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[Received], Awaitable[tuple[int, bytes]]]


async def ok(request: Received) -> tuple[int, bytes]:
    return 200, b""


class Webhook:
    """A webhook receiver: records every request, answers with :attr:`respond`."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.changed = asyncio.Condition()
        self.respond: Responder = ok
        self.release = asyncio.Event()  # lets stalled answers finish at the end
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode() for k, v in scope["headers"]}
        request = Received(scope["method"], scope["raw_path"].decode(), headers, body)
        if request.path.startswith("/v1/traces"):  # the gateway's OTLP exports
            status, answer = 200, b""
        else:
            async with self.changed:
                self.requests.append(request)
                self.changed.notify_all()
            status, answer = await self.respond(request)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(answer)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def wait(
        self, predicate: Callable[[Received], bool], n: int = 1, timeout: float = 15.0
    ) -> list[Received]:
        """The first ``n`` requests matching ``predicate``, once they have arrived."""

        def matching() -> list[Received]:
            return [r for r in self.requests if predicate(r)]

        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(matching()) >= n), timeout)
        return matching()[:n]


@pytest.fixture
async def hook() -> AsyncIterator[Webhook]:
    receiver = Webhook()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # bound and listening before the server runs: no wait for it to start
    receiver.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # log_config / log_level None: this process's logging is left alone (uvicorn's own
    # configuration would change the uvicorn loggers for every later test).
    config = uvicorn.Config(
        receiver,
        lifespan="off",
        log_config=None,
        log_level=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield receiver
    receiver.release.set()
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
async def clients() -> AsyncIterator[list[NodeClient]]:
    opened: list[NodeClient] = []
    yield opened
    for client in opened:
        await client.aclose()


async def start(deployment: Deployment, **env: str) -> str:
    """A gateway and a worker (running the dispatcher) with ``env``; the client URL."""
    deployment.extra_env.update(env)
    await deployment.start_gateway()
    deployment.start_worker()
    await deployment.upstream_services_seen()
    return f"{deployment.gateways[0].url}/hubs/chat"


def completion(request: Received, *, separator: bool = True, **fields: Any) -> bytes:
    """The framed Completion answering ``request``'s invocation."""
    call = request.json()["invocationId"]
    frame = json.dumps({"type": 3, "invocationId": call, **fields}).encode()
    return frame + RS if separator else frame


def signed_by(header: str, key: str, connection_id: str) -> bool:
    digest = hmac.new(key.encode(), connection_id.encode(), hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(part.lower(), f"sha256={digest}") for part in header.split(","))


async def test_invoke_and_send_reach_the_webhook_and_its_answers_come_back(
    hook: Webhook, deployment: Deployment, clients: list[NodeClient]
) -> None:
    async def respond(request: Received) -> tuple[int, bytes]:
        event = request.event
        if event == "echo":
            args = request.json()["arguments"]
            return 200, completion(request, result={"args": args, "user": request.headers.get(
                "x-asrs-user-id")})  # fmt: skip
        if event == "bare":  # no record separator after the frame: tolerated
            return 200, completion(request, separator=False, result="no separator")
        if event == "refuse":
            return 200, completion(request, error="not in this room")
        if event == "fail":
            return 500, b"secret stack trace"
        if event == "slow":
            await hook.release.wait()
        return 200, b""

    hook.respond = respond
    url = await start(
        deployment,
        HUBBUB_UPSTREAM_URL=f"{hook.url}/{{hub}}/api/{{category}}/{{event}}",
        HUBBUB_UPSTREAM_TIMEOUT="1",
    )
    client = await open_client(url, "alice")
    clients.append(client)

    assert await client.invoke("echo", 1, "two", {"three": 3}) == {
        "args": [1, "two", {"three": 3}], "user": "alice",
    }  # fmt: skip
    assert await client.invoke("bare") == "no separator"
    assert await client.invoke("nothing") is None  # 200, empty body: a null result
    with pytest.raises(RuntimeError, match="not in this room"):
        await client.invoke("refuse")
    with pytest.raises(RuntimeError, match="upstream answered 500") as failed:
        await client.invoke("fail")
    assert "secret" not in str(failed.value) and hook.url not in str(failed.value)
    with pytest.raises(RuntimeError, match="did not answer within 1 s"):
        await client.invoke("slow")
    # send(): no answer expected, but the webhook gets it.
    await client.send("note", "hello")
    (note,) = await hook.wait(lambda r: r.event == "note")
    assert note.path == "/chat/api/messages/note"
    assert note.json() == {"type": 1, "target": "note", "arguments": ["hello"]}
    # The connection's next invocation is not stuck behind the one that timed out.
    assert (await client.invoke("echo", "after"))["args"] == ["after"]


async def test_headers_signatures_and_bodies_are_azures(
    hook: Webhook, deployment: Deployment, clients: list[NodeClient]
) -> None:
    url = await start(
        deployment,
        HUBBUB_UPSTREAM_URL=f"{hook.url}/{{hub}}/api/{{category}}/{{event}}",
        HUBBUB_ACCESS_KEY_SECONDARY=SECONDARY_KEY,
        # Both trace (exporting to the receiver): entries carry a traceparent.
        OTEL_EXPORTER_OTLP_ENDPOINT=hook.url,
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",  # the receiver is not served while processes stop
    )
    client = NodeClient()
    clients.append(client)
    await client.start(url, client_token("bob", roles=["admin", "ops"]))
    conn = await client.wait_connected()
    assert conn is not None

    (connected,) = await hook.wait(lambda r: r.connection == conn and r.event == "connected")
    assert await client.invoke("whoAmI", 7, {"k": "v"}) is None
    (invoked,) = await hook.wait(lambda r: r.connection == conn and r.event == "whoAmI")
    await client.stop()
    (closed,) = await hook.wait(lambda r: r.connection == conn and r.event == "disconnected")

    for request, category in ((connected, "connections"), (invoked, "messages"),
                              (closed, "connections")):  # fmt: skip
        h = request.headers
        assert request.method == "POST"
        assert request.path == f"/chat/api/{category}/{request.event}"
        assert h["content-type"] == "application/json"
        assert (h["x-asrs-hub"], h["x-asrs-category"]) == ("chat", category)
        assert (h["x-asrs-connection-id"], h["x-asrs-user-id"]) == (conn, "bob")
        claims = h["x-asrs-user-claims"].split(", ")
        assert {"sub: bob", "role: admin", "role: ops"} <= set(claims), claims
        # One signature per access key, comma-joined without spaces: a receiver holding either
        # key (key rotation) verifies it.
        signature = h["x-asrs-signature"]
        assert " " not in signature and len(signature.split(",")) == 2, signature
        assert signed_by(signature, ACCESS_KEY, conn)
        assert signed_by(signature, SECONDARY_KEY, conn)
        assert not signed_by(signature, "some-other-key", conn)

    assert connected.body == b'{"type":10}'
    assert closed.json() == {"Type": 11}  # closed without an error: no Error field
    # The invocation as the client sent it, in the JSON hub protocol, without the separator.
    assert not invoked.body.endswith(RS)
    assert invoked.json() == {
        "type": 1, "invocationId": "0", "target": "whoAmI", "arguments": [7, {"k": "v"}],
    }  # fmt: skip

    # traceparent: each request a span of the dispatcher's (its own span id), continuing the
    # trace of the gateway's entry, here the connection's trace (no client trace was sent).
    parents = [r.headers["traceparent"].split("-") for r in (connected, invoked, closed)]
    for version, _trace, _span, _flags in parents:
        assert version == "00" and re.fullmatch(r"[0-9a-f]{32}", _trace), parents
    assert len({trace for _, trace, _, _ in parents}) == 1, parents
    assert len({span for _, _, span, _ in parents}) == 3, parents


async def test_rules_route_events_to_their_urls(
    hook: Webhook, deployment: Deployment, clients: list[NodeClient]
) -> None:
    async def respond(request: Received) -> tuple[int, bytes]:
        if request.headers["x-asrs-category"] == "messages":
            return 200, completion(request, result=request.path)
        return 200, b""

    hook.respond = respond
    rules = [
        {"urlTemplate": f"{hook.url}/conn/{{event}}", "categoryPattern": "connections"},
        {
            "urlTemplate": f"{hook.url}/msg/{{hub}}/{{event}}",
            "hubPattern": "CHAT",
            "eventPattern": "echo, Shout",
        },
        # Also matches echo, but comes later: the first matching rule wins.
        {"urlTemplate": f"{hook.url}/late/{{event}}", "eventPattern": "echo"},
    ]
    url = await start(
        deployment, HUBBUB_UPSTREAM_RULES=json.dumps(rules), HUBBUB_INVOCATION_TIMEOUT="2"
    )
    client = await open_client(url, "carol")
    clients.append(client)
    conn = client.connection_id

    (connected,) = await hook.wait(lambda r: r.connection == conn and r.event == "connected")
    assert connected.path == "/conn/connected"
    assert await client.invoke("echo") == "/msg/chat/echo"
    assert await client.invoke("shout") == "/msg/chat/shout"  # patterns ignore case
    # No rule matches: nobody answers, the gateway's own timeout does.
    with pytest.raises(RuntimeError, match="No answer within 2 seconds"):
        await client.invoke("whisper")
    assert not [r for r in hook.requests if r.event == "whisper"]


async def test_connection_events_are_retried_until_delivered(
    hook: Webhook, deployment: Deployment, clients: list[NodeClient]
) -> None:
    refused: set[str] = set()

    async def respond(request: Received) -> tuple[int, bytes]:
        if request.event == "connected" and request.connection not in refused:
            refused.add(request.connection)
            return 503, b""
        return 200, b""

    hook.respond = respond
    url = await start(deployment, HUBBUB_UPSTREAM_URL=f"{hook.url}/{{category}}/{{event}}")
    client = await open_client(url, "dave")
    clients.append(client)
    conn = client.connection_id

    first, second = await hook.wait(lambda r: r.connection == conn and r.event == "connected", 2)
    assert first.body == second.body == b'{"type":10}'
    assert second.headers["x-asrs-signature"] == first.headers["x-asrs-signature"]
    await client.stop()
    await hook.wait(lambda r: r.connection == conn and r.event == "disconnected")
