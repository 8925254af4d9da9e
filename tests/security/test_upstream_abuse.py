"""The way back under attack: what a hostile client (or a careless REST caller) can make the
upstream path cost, with real processes (a gateway, a worker, Redis) and an SDK service in this
process (:mod:`hubbub.upstream`).

Each test proves one bound: blocking invocations pending per connection, invocation ids reused
while pending, Completions the client was never asked for (and answers to another
connection's question), REST ``:invoke`` with hostile input or a thousand at once, huge
arguments against the upstream stream's length cap, and identity fields a client cannot forge.
Each refusal is logged once, without a traceback (read in the gateway's own log file).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import orjson
import pytest
from redis.asyncio import Redis

from hubbub.sdk.client import HubbubClient, ServiceAuth
from hubbub.upstream import Call, Upstream
from hubbub.wire.keys import KeySchema
from tests.support.processes import ACCESS_KEY, Deployment, Proc, eventually
from tests.support.rawclient import RS, RawClient, client_token

TIMEOUT = 2.0  # HUBBUB_INVOCATION_TIMEOUT of the gateways here
MAX_PENDING = 5  # HUBBUB_MAX_PENDING_INVOCATIONS
MAXLEN = 10  # HUBBUB_UPSTREAM_STREAM_MAXLEN (one partition)
MAX_MESSAGE = 32 * 1024  # HUBBUB_MAX_MESSAGE_SIZE (the default)
BODY_LIMIT = 64 * 1024  # HUBBUB_MAX_BODY_SIZE
PENDING_ERROR = (
    f"This connection has {MAX_PENDING} invocations waiting for an answer, "
    "the most it may have; wait for one before invoking again."
)
TIMEOUT_ERROR = f"No answer within {TIMEOUT:g} seconds (HUBBUB_INVOCATION_TIMEOUT)."


# ---------------------------------------------------------------- the deployment and service


GATEWAY_ENV = {
    "HUBBUB_INVOCATION_TIMEOUT": str(TIMEOUT),
    "HUBBUB_MAX_PENDING_INVOCATIONS": str(MAX_PENDING),
    "HUBBUB_UPSTREAM_PARTITIONS": "1",
    "HUBBUB_UPSTREAM_STREAM_MAXLEN": str(MAXLEN),
    "HUBBUB_MAX_INVOCATIONS_PER_SECOND": "20",
    "HUBBUB_INVOCATION_BURST": "300",
    "HUBBUB_MAX_BODY_SIZE": str(BODY_LIMIT),
    "HUBBUB_REFUSAL_LOG_BURST": "1000",  # every refusal here is logged: count them
}


@pytest.fixture
async def gateway(deployment: Deployment) -> Proc:
    gw = await deployment.start_gateway(**GATEWAY_ENV)
    deployment.start_worker()
    return gw


class Service:
    """An SDK service in this process: what its handlers saw, and gates the test opens."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.changed = asyncio.Condition()
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    async def add(self, call: Call) -> None:
        async with self.changed:
            self.calls.append(call)
            self.changed.notify_all()

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    def named(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]


@asynccontextmanager
async def running_service(
    deployment: Deployment,
    handler_timeout: float = TIMEOUT,
    concurrency: int = 256,
    burst: int = 1000,
) -> AsyncIterator[Service]:
    """``handler_timeout``: the SDK cancels a handler after it (its HUBBUB_INVOCATION_TIMEOUT);
    ``concurrency``: connections in hand at once; ``burst``: invocations queued per connection
    (its HUBBUB_INVOCATION_BURST)."""
    seen = Service()
    settings = deployment.service_settings(
        upstream_partitions=1,
        invocation_timeout=handler_timeout,
        invocation_burst=burst,
    )
    app = Upstream(settings, name="abuse-service", concurrency=concurrency)
    chat = app.hub("chat")

    @chat.on("echo")
    async def echo(call: Call, *args: Any) -> Any:
        await seen.add(call)
        return {"args": list(args)}

    @chat.on("hang")
    async def hang(call: Call, *args: Any) -> None:
        await seen.add(call)
        await asyncio.Event().wait()  # never answers: the gateway's timeout does

    @chat.on("hold")
    async def hold(call: Call, key: str) -> str:
        await seen.add(call)
        await seen.gate(key).wait()
        return key

    async with app:
        await deployment.upstream_services_seen()
        yield seen


# ---------------------------------------------------------------- helpers


def record(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + RS


def invocation(invocation_id: str | None, target: str, *args: Any) -> bytes:
    message: dict[str, Any] = {"type": 1, "target": target, "arguments": list(args)}
    if invocation_id is not None:
        message["invocationId"] = invocation_id
    return record(message)


async def completions(client: RawClient, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next ``n`` records, each of which must be a Completion."""
    got = [await client.recv(timeout=timeout) for _ in range(n)]
    assert all(m.get("type") == 3 for m in got), got
    return got


async def probe(client: RawClient, name: str) -> None:
    """The gateway has handled everything the client sent before: an invocation it answers
    itself, without Redis (JoinGroup without its argument), comes back, and nothing came
    before it."""
    await client.send({"type": 1, "invocationId": name, "target": "JoinGroup", "arguments": []})
    answer = await client.recv()
    assert answer == {
        "type": 3,
        "invocationId": name,
        "error": "JoinGroup and LeaveGroup take one argument: the group name.",
    }, answer


async def nothing_else(client: RawClient, api: HubbubClient) -> None:
    """``client`` got nothing more before a marker sent to it alone (through Redis)."""
    assert client.connection_id is not None
    await api.send_to_connection(client.connection_id, "marker", [])
    assert (await client.recv())["target"] == "marker"


async def metric(gateway: Proc, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 if absent)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{gateway.url}/metrics")).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{want}}}" if want else name) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def refusals(gateway: Proc, text: str) -> int:
    """Lines of the gateway's log holding ``text``; the log must have no traceback."""
    log = gateway.output()
    assert "Traceback" not in log, log[-4000:]
    return sum(text in line for line in log.splitlines())


async def xadds(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xadd", {}).get("calls", 0))


# ---------------------------------------------------------------- pending invocations


async def test_pending_invocations_per_connection_are_bounded_and_freed_by_the_timeout(
    deployment: Deployment, gateway: Proc
) -> None:
    """MAX_PENDING blocking calls to a handler that never answers; the next is refused at
    once (not appended, so it costs no memory or Redis), and after the timeout the slots are
    free again."""
    # The SDK cancels each stuck handler soon, so the connection's later calls are handled.
    async with running_service(deployment, handler_timeout=0.3) as service:
        c = await RawClient.connect(gateway.url, token=client_token("pat"))
        # An id is held while its call is pending: a long one is refused, and takes no slot.
        long_id = "i" * (MAX_MESSAGE - 100)
        await c.send_raw(invocation(long_id, "hang"))
        assert await c.recv() == {
            "type": 3,
            "invocationId": long_id,
            "error": "An invocation id may be at most 128 characters long.",
        }
        started = time.monotonic()
        await c.send_raw(b"".join(invocation(f"h{i}", "hang") for i in range(MAX_PENDING)))
        await service.wait(lambda: len(service.named("hang")) >= 1)
        await c.send_raw(invocation("extra", "hang"))
        refused = await c.recv()
        assert refused == {"type": 3, "invocationId": "extra", "error": PENDING_ERROR}
        assert time.monotonic() - started < TIMEOUT  # at once, not after a timeout

        # A flood of blocking calls while full: each refused, none appended upstream.
        await c.send_raw(b"".join(invocation(f"f{i}", "hang", "x" * 1000) for i in range(200)))
        flood = await completions(c, 200)
        assert [m["invocationId"] for m in flood] == [f"f{i}" for i in range(200)]
        assert all(m["error"] == PENDING_ERROR for m in flood)
        assert await metric(gateway, "hubbub_upstream_appended_total", event="invocation") == 5
        assert await metric(gateway, "hubbub_invocations_total", outcome="refused") == 202

        # The timeout answers each pending call once; then the slots are free.
        timed_out = await completions(c, MAX_PENDING, timeout=TIMEOUT + 10)
        assert sorted(m["invocationId"] for m in timed_out) == [f"h{i}" for i in range(5)]
        assert all(m["error"] == TIMEOUT_ERROR for m in timed_out)
        assert time.monotonic() - started >= TIMEOUT
        await c.send_raw(b"".join(invocation(f"e{i}", "echo", i) for i in range(MAX_PENDING)))
        echoed = await completions(c, MAX_PENDING)
        assert echoed == [
            {"type": 3, "invocationId": f"e{i}", "result": {"args": [i]}} for i in range(5)
        ]
        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            await nothing_else(c, api)
        assert await metric(gateway, "hubbub_invocations_total", outcome="timeout") == 5
        # Each refusal logged once (below the refusal log's burst), without a traceback.
        assert refusals(gateway, "invocation refused: This connection has 5 invocations") == 201
        assert refusals(gateway, "invocation refused: An invocation id may be at most") == 1
        await c.close()


async def test_a_reused_pending_invocation_id_is_refused_and_the_original_answered_once(
    deployment: Deployment, gateway: Proc
) -> None:
    async with running_service(deployment) as service:
        c = await RawClient.connect(gateway.url, token=client_token("rey"))
        await c.send_raw(invocation("dup", "hold", "first"))
        await service.wait(lambda: len(service.named("hold")) == 1)
        await c.send_raw(invocation("dup", "hold", "second"))
        refused = await c.recv()
        assert refused == {
            "type": 3,
            "invocationId": "dup",
            "error": "Invocation id 'dup' is already in use by a pending invocation.",
        }
        service.gate("first").set()
        answered = await c.recv()
        assert answered == {"type": 3, "invocationId": "dup", "result": "first"}
        async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
            await nothing_else(c, api)
        # The reuse never went upstream; once answered, the id may be used again.
        assert [call.arguments for call in service.named("hold")] == [["first"]]
        assert await metric(gateway, "hubbub_upstream_appended_total", event="invocation") == 1
        assert await c.invoke("echo", "again", invocation_id="dup") == {
            "type": 3,
            "invocationId": "dup",
            "result": {"args": ["again"]},
        }
        assert refusals(gateway, "invocation refused: Invocation id 'dup' is already") == 1
        await c.close()


async def test_refusals_show_client_text_bounded_and_escaped(gateway: Proc) -> None:
    """No service is live: the gateway answers at once that the method does not exist. A
    32 KB target with a newline is shown in 128 characters, escaped: one short log line, no
    line forged in the log. Nor can a group name or a handshake's protocol name forge one."""
    c = await RawClient.connect(gateway.url, token=client_token("tom"))
    forged = "x\n2026-01-01 00:00:00,000 WARNING gateway[gw1] hubbub.refused: forged"
    target = forged + "m" * (MAX_MESSAGE - 200)
    await c.send_raw(invocation("1", target))
    answer = await c.recv()
    escaped = forged.replace("\n", "\\n")
    shown = (escaped + "m" * 128)[: 128 + len(escaped) - len(forged)]
    assert answer == {
        "type": 3,
        "invocationId": "1",
        "error": f"Method '{shown}' does not exist on this hub.",
    }, answer
    # A group this client's token does not allow: the answer names it as it is, the log line
    # escapes it.
    assert await c.invoke("JoinGroup", forged, invocation_id="2") == {
        "type": 3,
        "invocationId": "2",
        "error": f"This connection is not permitted to join or leave group '{forged}'.",
    }
    await c.close()
    h = await RawClient.connect(gateway.url, token=client_token("tom"), handshake=False)
    await h.send_raw(record({"protocol": forged, "version": 1}))
    assert await h.recv() == {"error": f"The protocol '{forged}' is not supported."}
    await h.close()
    lines = [line for line in gateway.output().splitlines() if "hubbub.refused" in line]
    assert len(lines) == 3 and all(len(line) < 400 for line in lines), lines
    assert refusals(gateway, "forged") == 3
    assert not [line for line in gateway.output().splitlines() if line.startswith("2026-01-01")]


# ---------------------------------------------------------------- completions never asked for


async def test_completions_never_asked_for_are_dropped_where_they_are_parsed(
    deployment: Deployment, gateway: Proc, redis: Redis
) -> None:
    """Spam and huge Completions with ids the client was not asked, and an answer to ANOTHER
    connection's question: no Redis call, nothing reaches any REST caller, the connections
    keep working, and each question is answered by its own connection only."""
    alice = await RawClient.connect(gateway.url, token=client_token("alice"))
    bob = await RawClient.connect(gateway.url, token=client_token("bob"))
    carol = await RawClient.connect(gateway.url, token=client_token("carol"))  # never asked
    base = "/api/hubs/chat/connections"
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        ask_alice = asyncio.create_task(
            api.http.post(f"{base}/{alice.connection_id}/:invoke", json={"target": "where"})
        )
        ask_bob = asyncio.create_task(
            api.http.post(f"{base}/{bob.connection_id}/:invoke", json={"target": "where"})
        )
        to_alice, to_bob = await alice.recv(), await bob.recv()
        for question in (to_alice, to_bob):
            assert question["type"] == 1 and question["target"] == "where", question
            assert len(question["invocationId"]) >= 20  # 128 random bits
        alice_id, bob_id = to_alice["invocationId"], to_bob["invocationId"]
        before = await xadds(redis)

        huge = "r" * (MAX_MESSAGE - 200)
        spam = [{"type": 3, "invocationId": f"{alice_id}{i}", "result": i} for i in range(300)]
        spam += [{"type": 3, "invocationId": alice_id[:-1], "result": huge}]
        spam += [{"type": 3, "invocationId": "", "error": "e"}, {"type": 3, "invocationId": "1"}]
        for client in (alice, carol):
            await client.send_raw(b"".join(record(m) for m in spam[:300]))
            for message in spam[300:]:
                await client.send_raw(record(message))
        # Each answers the other's question, with a huge result.
        await bob.send({"type": 3, "invocationId": alice_id, "result": {"forged": huge[:-100]}})
        await alice.send({"type": 3, "invocationId": bob_id, "error": "forged"})
        await carol.send({"type": 3, "invocationId": alice_id, "result": "forged"})
        for n, client in enumerate((alice, bob, carol)):
            await probe(client, f"probe{n}")
        assert await xadds(redis) == before  # no Redis write for any of it
        assert not ask_alice.done() and not ask_bob.done()

        # The real answers, each from the connection asked: one XADD each, to the caller.
        await alice.send({"type": 3, "invocationId": alice_id, "result": "alice here"})
        await bob.send({"type": 3, "invocationId": bob_id, "result": "bob here"})
        answers = [await asyncio.wait_for(t, TIMEOUT + 5) for t in (ask_alice, ask_bob)]
        assert [(r.status_code, r.json()) for r in answers] == [
            (200, {"result": "alice here"}),
            (200, {"result": "bob here"}),
        ]
        assert await xadds(redis) == before + 2
        # A second answer to an answered question goes nowhere either.
        await alice.send({"type": 3, "invocationId": alice_id, "result": "again"})
        await probe(alice, "probe-again")
        assert await xadds(redis) == before + 2
        for client in (alice, bob, carol):
            await nothing_else(client, api)
            await client.close()
    assert refusals(gateway, "closing connection") == 0


# ---------------------------------------------------------------- REST :invoke


async def test_rest_invoke_refuses_hostile_input(gateway: Proc) -> None:
    c = await RawClient.connect(gateway.url, token=client_token("ivy"))
    conn = c.connection_id
    assert conn is not None
    async with HubbubClient(gateway.url, ACCESS_KEY, "chat") as api:
        http = api.http

        async def invoke(connection: str, body: Any, hub: str = "chat") -> httpx.Response:
            return await http.post(f"/api/hubs/{hub}/connections/{connection}/:invoke", json=body)

        for bad in ("a.b", "x" * 129, "a%20b", "%00", "ünï"):
            r = await invoke(bad, {"target": "t"})
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["code"] == "Error.InvalidName", r.text
        r = await invoke("nobody", {"target": "t"})
        assert (r.status_code, r.json()["code"]) == (404, "Error.Connection.NotExisted")
        r = await invoke(conn, {"target": "t"}, hub="bad hub")
        assert r.status_code == 400, r.text
        for body in ({"target": ""}, {"target": "t" * 1025}, {"target": 5}, {}, []):
            r = await invoke(conn, body)
            assert r.status_code == 400, (body, r.text)
        r = await invoke(conn, {"target": "t", "arguments": "not a list"})
        assert r.status_code == 400, r.text
        r = await invoke(conn, {"target": "t", "arguments": ["x" * BODY_LIMIT]})
        assert (r.status_code, r.json()["code"]) == (413, "Error.PayloadTooLarge")
        # Unsigned: refused before anything else.
        async with httpx.AsyncClient(base_url=gateway.url) as bare:
            r = await bare.post(f"/api/hubs/chat/connections/{conn}/:invoke", json={"target": "t"})
            assert r.status_code == 401, r.text

        # None of it reached the client; a target with the record separator and control
        # characters arrives whole, as one record, and its answer is the REST answer.
        odd = 'a\x1eb\x00{}"\\'
        ask = asyncio.create_task(invoke(conn, {"target": odd, "arguments": [None]}))
        question = await c.recv()
        assert (question["type"], question["target"], question["arguments"]) == (1, odd, [None])
        await c.send({"type": 3, "invocationId": question["invocationId"], "result": odd})
        r = await ask
        assert (r.status_code, r.json()) == (200, {"result": odd})
        await nothing_else(c, api)
        # A newline in the path (signed or not) does not start a forged line in the log.
        forged = "x%0A2026-01-01%2000:00:00,000%20WARNING%20forged"
        r = await invoke(forged, {"target": "t"})
        assert (r.status_code, r.json()["code"]) == (400, "Error.InvalidName"), r.text
        async with httpx.AsyncClient(base_url=gateway.url) as bare:
            r = await bare.post(f"/api/hubs/chat/connections/{forged}/:invoke", json={})
            assert r.status_code == 401, r.text
    await c.close()
    lines = gateway.output().splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")], lines[-5:]
    assert refusals(gateway, "/connections/x\\n2026-01-01 00:00:00,000 WARNING forged/") == 2
    # Each refusal once: 5 names, a hub, 6 bodies, 1 too large, 1 unsigned, 2 forged.
    assert refusals(gateway, "hubbub.refused: refused POST /api/hubs/") == 16


async def test_a_thousand_concurrent_invokes_to_one_connection_are_bounded(
    deployment: Deployment,
) -> None:
    """1,000 concurrent ``:invoke`` to one connection, half through the gateway holding it,
    half through another: each gateway lets MAX_PENDING of its callers wait for the client
    and answers the others 429 at once; the holding gateway sends the client MAX_PENDING
    questions of the 2 x MAX_PENDING that reach it. Every caller gets an answer, the last
    ones a 504 after the timeout: none hangs. (A long timeout here, so that no call times out
    while the 1,000 requests are still arriving: the counts are then exact.)"""
    timeout = 20.0
    holder = await deployment.start_gateway(**{**GATEWAY_ENV, "HUBBUB_INVOCATION_TIMEOUT": "20"})
    other = await deployment.start_gateway(**{**GATEWAY_ENV, "HUBBUB_INVOCATION_TIMEOUT": "20"})
    deployment.start_worker()
    c = await RawClient.connect(holder.url, token=client_token("quin"))
    path = f"/api/hubs/chat/connections/{c.connection_id}/:invoke"
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    auth = ServiceAuth(ACCESS_KEY)
    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=timeout + 30, auth=auth) as http:

        async def ask(n: int) -> tuple[httpx.Response, float]:
            base = (holder, other)[n % 2].url
            r = await http.post(f"{base}{path}", json={"target": "t", "arguments": [n]})
            return r, time.monotonic() - started

        tasks = [asyncio.create_task(ask(n)) for n in range(1000)]

        async def refused() -> bool:
            return sum(t.done() for t in tasks) >= 1000 - 2 * MAX_PENDING

        await eventually(refused, timeout=timeout - 5)
        finished = {t for t in tasks if t.done()}
        early = [t.result() for t in finished]
        assert all(r.status_code == 429 for r, _ in early), {r.status_code for r, _ in early}
        assert all(r.json()["code"] == "Error.Invocation.TooMany" for r, _ in early)
        print(f"990 x 429 within {max(at for _, at in early):.1f} s")
        # The client is asked MAX_PENDING questions, no more; it answers them.
        questions = [await c.recv() for _ in range(MAX_PENDING)]
        assert all(q["type"] == 1 and q["target"] == "t" for q in questions), questions
        async with HubbubClient(holder.url, ACCESS_KEY, "chat") as api:
            await nothing_else(c, api)
            for q in questions:
                await c.send(
                    {"type": 3, "invocationId": q["invocationId"], "result": q["arguments"]}
                )
            late = [await t for t in tasks if t not in finished]
        answered = {r.json()["result"][0] for r, _ in late if r.status_code == 200}
        assert answered == {q["arguments"][0] for q in questions}
        timed_out = [(r, at) for r, at in late if r.status_code != 200]
        assert len(timed_out) == MAX_PENDING  # the holding gateway's bound
        assert all(r.status_code == 504 for r, _ in timed_out)
        assert all(timeout <= at < timeout + 10 for _, at in timed_out), timed_out
    assert await metric(holder, "hubbub_drops_total", reason="too_many_asked") == MAX_PENDING
    await c.close()


# ---------------------------------------------------------------- the stream's length cap


async def test_huge_arguments_at_the_rate_limit_keep_the_upstream_stream_capped(
    deployment: Deployment, gateway: Proc, redis: Redis, prefix: str
) -> None:
    """The burst of the rate limit, each invocation just under the message size limit, while
    a second service (a consumer group) reads none of them, so consumers trim nothing: the
    gateway's append keeps the partition at HUBBUB_UPSTREAM_STREAM_MAXLEN entries. (They
    are counted, not weighed: see docs/security.md for what that lets Redis hold.)"""
    stream = KeySchema(prefix).upstream_partition(0)
    # A group that reads nothing: the service's consumer may not trim what it has not read,
    # so only the gateway's cap on its appends keeps the partition short.
    await redis.xgroup_create(stream, "audit", id="0", mkstream=True)
    async with running_service(deployment):
        c = await RawClient.connect(gateway.url, token=client_token("hugo"))
        first = invocation(None, "nohandler", "")
        big = invocation(None, "nohandler", "x" * (MAX_MESSAGE - len(first)))
        assert len(big) == MAX_MESSAGE  # the record one byte short of the limit, and its RS
        for _ in range(290):  # the burst (300), less what the probes take
            await c.send_raw(big)
        await probe(c, "after")

        async def appended() -> bool:
            n = await metric(gateway, "hubbub_upstream_appended_total", event="invocation")
            return n == 290

        await eventually(appended)
        length = await redis.xlen(stream)
        memory = await redis.memory_usage(stream)
        print(f"upstream partition: {length} entries, {memory} bytes, after 290 x 32 KiB")
        assert MAXLEN <= length <= MAXLEN + 2, length
        # About 58 KB per 32 KiB entry (allocator rounding); uncapped, 290 would take 17 MB.
        assert memory is not None and memory < (MAXLEN + 2) * 2 * MAX_MESSAGE, memory
        await probe(c, "still open")  # within the limit, the client stays connected
        await c.close()


# ---------------------------------------------------------------- identity and claims


async def test_claims_reach_the_service_and_nothing_else_can_be_forged(
    deployment: Deployment, gateway: Proc, redis: Redis, prefix: str
) -> None:
    stream = KeySchema(prefix).upstream_partition(0)
    # A group that reads nothing: the consumer's trimming keeps every entry for us to read.
    await redis.xgroup_create(stream, "audit", id="0", mkstream=True)
    now = int(time.time())
    claims = {
        "aud": "http://test/client",
        "iat": now,
        "exp": now + 600,
        "sub": "mallory",
        "role": ["reader"],
        "tenant": {"id": 7, "name": "acme"},
    }
    token = jwt.encode(claims, ACCESS_KEY.encode(), algorithm="HS256")
    async with running_service(deployment) as service:
        c = await RawClient.connect(gateway.url, token=token)
        conn = c.connection_id
        assert conn is not None
        forged = {
            "type": 1,
            "invocationId": "a\r\n$2\r\ncn",
            "target": "echo",
            "arguments": ["x"],
            "headers": {"user": "admin", "connectionId": "other", "cl": "{}", "u": "admin",
                        "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
            "userId": "admin",
            "connectionId": "other",
            "claims": {"sub": "admin"},
            "user": "admin",
            "u": "admin",
            "cn": "other",
            "cl": '{"sub":"admin"}',
            "gw": "evil",
            "ci": "zzz",
            "tp": "00-" + "3" * 32 + "-" + "4" * 16 + "-01",
        }  # fmt: skip
        await c.send(forged)
        answer = await c.recv()
        assert answer == {"type": 3, "invocationId": forged["invocationId"],
                          "result": {"args": ["x"]}}  # fmt: skip
        call = service.named("echo")[-1]
        assert (call.hub, call.connection_id, call.user_id, call.method) == (
            "chat", conn, "mallory", "echo",
        )  # fmt: skip
        assert (call.invocation_id, call.arguments) == (forged["invocationId"], ["x"])
        assert call.claims == claims

        entries = [f for _, f in await redis.xrange(stream) if f[b"k"] == b"i"]
        assert len(entries) == 1, entries
        entry = entries[0]
        assert set(entry) == {b"k", b"h", b"cn", b"gw", b"cl", b"u", b"t", b"a", b"ci"}, entry
        assert entry[b"cn"] == conn.encode()
        assert entry[b"u"] == b"mallory"
        assert entry[b"gw"] == f"{prefix}-gw1".encode()
        assert orjson.loads(entry[b"cl"]) == claims
        assert entry[b"ci"] == forged["invocationId"].encode()
        assert entry[b"a"] == b'["x"]'
        await c.close()


async def test_one_clients_slow_calls_do_not_stall_the_service_for_others(
    deployment: Deployment, gateway: Proc
) -> None:
    """A client floods a slow handler: it holds one of the service's slots (not all of them),
    its queue is capped (the excess shed, a blocking one answered 'busy' at once), and
    another client's call is answered meanwhile."""
    busy = "The service is busy with this connection's earlier invocations."
    async with running_service(deployment, concurrency=2, burst=3) as seen:
        flooder = await RawClient.connect(gateway.url, token=client_token("flood"))
        other = await RawClient.connect(gateway.url, token=client_token("other"))
        try:
            for _ in range(10):  # fire-and-forget, to a handler that waits for its gate
                await flooder.send_raw(invocation(None, "hold", "a"))
            # A blocking call behind them finds the queue full (1 running + 2 queued): it is
            # answered at once, after the 10 were taken (one connection's entries in order).
            await flooder.send_raw(invocation("p", "echo", "probe"))
            (shed,) = await completions(flooder, 1, timeout=TIMEOUT)
            assert shed == {"type": 3, "invocationId": "p", "error": busy}, shed
            started = time.monotonic()
            answer = await other.invoke("echo", "still here", invocation_id="o1")
            assert answer.get("result") == {"args": ["still here"]}, answer
            assert time.monotonic() - started < TIMEOUT

            seen.gate("a").set()
            await seen.wait(lambda: len(seen.named("hold")) == 3)
            await flooder.send_raw(invocation("m1", "echo", "marker"))
            (marker,) = await completions(flooder, 1)
            assert marker["invocationId"] == "m1" and "result" in marker, marker
            assert len(seen.named("hold")) == 3  # the other 7 were shed, never handled
        finally:
            await flooder.close()
            await other.close()
