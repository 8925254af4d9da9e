"""The pure parts of the HTTP upstream (:mod:`hubbub.upstream.webhook`): rules, headers, bodies,
Completions, and the request loop against a real HTTP/1.1 server in this process (limits,
retries, timeouts, redirects, compression, bytes on the wire)."""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import hmac
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from hubbub.settings import Settings
from hubbub.upstream.consumer import Answer
from hubbub.upstream.webhook import (
    InvalidRules,
    Webhooks,
    claims_header,
    parse_completion,
    parse_rules,
    request_body,
    signature,
)
from hubbub.wire.envelopes import Event, UpstreamEntry
from hubbub_fanout.main import parse_mode


def rules(*raw: dict[str, str], url: str | None = None) -> Settings:
    return Settings(upstream_rules=list(raw), upstream_url=url)


def test_rules_in_order_then_the_url_as_a_catch_all() -> None:
    parsed = parse_rules(
        rules(
            {"UrlTemplate": "http://a/{hub}/{category}/{event}", "eventPattern": " x , Y "},
            url="https://b/{event}?q=1",
        )
    )
    assert [r.url_template for r in parsed] == [
        "http://a/{hub}/{category}/{event}", "https://b/{event}?q=1",
    ]  # fmt: skip
    first = parsed[0]
    assert first.matches("Chat", "messages", "y") and first.matches("c", "messages", "X")
    assert not first.matches("c", "messages", "z")
    assert parsed[1].matches("any", "connections", "connected")
    # Values are URL-escaped, like Uri.EscapeDataString.
    assert first.url("my hub", "messages", "a/b?c") == "http://a/my%20hub/messages/a%2Fb%3Fc"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"hubPattern": "*"}, "has no urlTemplate"),
        ({"urlTemplate": "ftp://x/"}, "absolute http:// or https:// URL"),
        ({"urlTemplate": "/relative/{event}"}, "absolute http:// or https:// URL"),
        ({"urlTemplate": "http://x/{connection}"}, "only {hub}, {category} and {event}"),
        ({"urlTemplate": "http://x/", "eventPattern": "a,,b"}, "empty name"),
        ({"urlTemplate": "http://x/", "hubPattern": " "}, "non-empty string"),
        ({"urlTemplate": "http://x/", "typo": "*"}, "unknown key 'typo'"),
    ],
)
def test_invalid_rules_are_refused_with_a_clear_error(raw: dict[str, str], says: str) -> None:
    with pytest.raises(InvalidRules, match="HUBBUB_UPSTREAM_RULES\\[0\\]") as refused:
        parse_rules(rules(raw))
    assert says in str(refused.value)


def test_signature_per_key_comma_joined() -> None:
    header = signature(("k1", "k2"), "conn")
    parts = header.split(",")
    for part, key in zip(parts, ("k1", "k2"), strict=True):
        assert part == "sha256=" + hmac.new(key.encode(), b"conn", hashlib.sha256).hexdigest()


def test_claims_header_as_azure_writes_it() -> None:
    claims = b'{"sub":"u","role":["a","b"],"exp":12,"ok":true,"x":{"y":1},"bad":"1\\n2"}'
    assert claims_header(claims) == (
        'sub: u, role: a, role: b, exp: 12, ok: true, x: {"y":1}, bad: 1 2'
    )
    assert claims_header(b"[]") == claims_header(b"not json") == ""


def test_bodies() -> None:
    def entry(event: Event, **kw: object) -> UpstreamEntry:
        return UpstreamEntry(event, "chat", "c1", "gw", **kw)  # type: ignore[arg-type]

    assert request_body(entry(Event.CONNECTED)) == b'{"type":10}'
    assert request_body(entry(Event.DISCONNECTED)) == b'{"Type":11}'
    assert request_body(entry(Event.DISCONNECTED, error='a "b"')) == (
        b'{"Type":11,"Error":"a \\"b\\""}'
    )
    invocation = entry(Event.INVOCATION, target="go", arguments=b'[1,"x"]', call="4")
    assert request_body(invocation) == (
        b'{"type":1,"invocationId":"4","target":"go","arguments":[1,"x"]}'
    )
    send = entry(Event.INVOCATION, target="go", arguments=b"[]")
    assert request_body(send) == b'{"type":1,"target":"go","arguments":[]}'


def test_completions() -> None:
    assert parse_completion(b'{"type":3,"invocationId":"1","result":[1]}\x1e') == Answer([1])
    assert parse_completion(b'{"type":3,"invocationId":"1","result":"x"}') == Answer("x")
    assert parse_completion(b'{"type":3,"invocationId":"1","error":"no"}\x1e') == Answer(error="no")
    assert parse_completion(b"") == parse_completion(b"\x1e") == Answer()
    assert "not JSON" in (parse_completion(b"<html>").error or "")
    assert "no Completion" in (parse_completion(b'{"type":1}\x1e').error or "")


@dataclass
class Received:
    head: bytes  # the request line and headers, as sent
    body: bytes


# What the server does with the n-th request (from 1): the bytes to answer, or None to close the
# connection without answering.
Responder = Callable[[int, Received], Awaitable[bytes | None]]


@dataclass
class Server:
    url: str
    requests: list[Received] = field(default_factory=list)


def response(status: int, body: bytes = b"", *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def serving(respond: Responder) -> AsyncIterator[Server]:
    """A minimal HTTP/1.1 server on 127.0.0.1 (keep-alive, Content-Length request bodies)."""
    server = Server("")
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = Received(head, await reader.readexactly(length))
                server.requests.append(request)
                answer = await respond(len(server.requests), request)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()
            handlers.discard(task)  # type: ignore[arg-type]

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/"
    try:
        yield server
    finally:
        listener.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await listener.wait_closed()


def answering(data: bytes) -> Responder:
    async def respond(n: int, request: Received) -> bytes | None:
        return data

    return respond


def invocation(call: str = "1", **kw: object) -> UpstreamEntry:
    return UpstreamEntry(Event.INVOCATION, "chat", "c1", "gw", target="go", call=call, **kw)  # type: ignore[arg-type]


async def ask(url: str, entry: UpstreamEntry, **settings: object) -> tuple[Answer | None, Webhooks]:
    hooks = Webhooks(Settings(upstream_url=url, **settings))  # type: ignore[arg-type]
    try:
        return await hooks(entry), hooks
    finally:
        await hooks.aclose()


def responses(hooks: Webhooks, label: str) -> float:
    return hooks.metrics.webhook_responses.labels(label)._value.get()  # type: ignore[no-any-return]


COMPLETION = b'{"type":3,"invocationId":"1","result":"x"}\x1e'


async def test_an_answer_larger_than_the_message_limit_is_an_error() -> None:
    big = b'{"type":3,"invocationId":"1","result":"' + b"x" * 2000 + b'"}\x1e'
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (big[:900], big[900:]))
        + b"0\r\n\r\n"
    )  # no Content-Length: the bound applies as the body is read
    squeezed = gzip.compress(big)  # small on the wire, over the limit once decoded
    assert len(squeezed) < 1024
    for answer in (
        response(200, big),
        chunked,
        response(200, squeezed, "Content-Encoding: gzip"),
    ):
        async with serving(answering(answer)) as server:
            got, hooks = await ask(server.url, invocation(), max_message_size=1024)
        assert got is not None and "larger than the message limit" in (got.error or ""), answer
        assert responses(hooks, "error") == 1
    # Compressed and within the limit once decoded: read as the Completion it is.
    async with serving(
        answering(response(200, gzip.compress(COMPLETION), "Content-Encoding: gzip"))
    ) as server:
        got, _ = await ask(server.url, invocation(), max_message_size=1024)
    assert got == Answer("x")


async def test_connection_events_retry_then_give_up_by_the_attempt_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("hubbub.upstream.webhook.RETRY_FIRST", 0.001)

    async def refuse(n: int, request: Received) -> bytes | None:
        # Odd requests: the connection closed without an answer; even ones: a 502.
        return None if n % 2 else response(502)

    async with serving(refuse) as server:
        hooks = Webhooks(Settings(upstream_url=server.url))
        try:
            connected = UpstreamEntry(Event.CONNECTED, "chat", "c1", "gw")
            assert await hooks(connected) is None
            assert len(server.requests) == 5
            assert hooks.metrics.webhook_retries._value.get() == 4
            assert (responses(hooks, "error"), responses(hooks, "502")) == (3, 2)
            # Invocations are never retried: the caller gets the error at once.
            answer = await hooks(invocation())
            assert answer == Answer(error="Invocation failed: the upstream answered 502.")
            assert len(server.requests) == 6
        finally:
            await hooks.aclose()


async def test_no_matching_rule_no_request_no_answer() -> None:
    async with serving(answering(response(200))) as server:
        settings = rules({"urlTemplate": server.url, "hubPattern": "other"})
        hooks = Webhooks(settings)
        try:
            assert await hooks(invocation()) is None
        finally:
            await hooks.aclose()
        assert server.requests == []


async def test_headers_are_utf8_on_the_wire_and_redirects_are_not_followed() -> None:
    async with serving(answering(response(307, b"", "Location: http://127.0.0.1:1/"))) as server:
        entry = invocation(user="jöhn 日本", claims='{"name":"Zoë"}'.encode())
        got, hooks = await ask(server.url, entry)
    assert got == Answer(error="Invocation failed: the upstream answered 307.")
    (request,) = server.requests
    lines = request.head.split(b"\r\n")
    assert lines[0] == b"POST / HTTP/1.1"
    headers = {
        k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)
    }
    assert headers[b"x-asrs-user-id"] == "jöhn 日本".encode()
    assert headers[b"x-asrs-user-claims"] == "name: Zoë".encode()
    assert headers[b"content-type"] == b"application/json"
    assert (headers[b"x-asrs-hub"], headers[b"x-asrs-category"]) == (b"chat", b"messages")
    assert (headers[b"x-asrs-event"], headers[b"x-asrs-connection-id"]) == (b"go", b"c1")
    assert headers[b"x-asrs-signature"] == signature(hooks.keys, "c1").encode()
    assert request.body == b'{"type":1,"invocationId":"1","target":"go","arguments":[]}'


async def test_timeouts_and_unreachable_upstreams_are_errors_for_the_caller() -> None:
    async def stall(n: int, request: Received) -> bytes | None:
        await asyncio.Event().wait()  # never answers
        return None

    async with serving(stall) as server:
        got, hooks = await ask(server.url, invocation(), upstream_timeout=0.2)
    assert got == Answer(error="Invocation failed: the upstream did not answer within 0.2 s.")
    assert responses(hooks, "timeout") == 1

    # Headers sent, then the body stalls: the timeout covers the body too.
    async def half(n: int, request: Received) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"

    async with serving(half) as server:
        got, hooks = await ask(server.url, invocation(), upstream_timeout=0.2)
    assert got == Answer(error="Invocation failed: the upstream did not answer within 0.2 s.")

    async with serving(answering(response(200))) as server:
        url = server.url  # closed when this ends: nothing listens there any more
    got, hooks = await ask(url, invocation())
    assert got == Answer(error="Invocation failed: the upstream could not be reached.")
    assert responses(hooks, "error") == 1


def test_made_outside_a_loop_and_closed_nothing_left_unclosed() -> None:
    async def main(hooks: Webhooks) -> Answer | None:
        async with serving(answering(response(200, COMPLETION))) as server:
            hooks.rules = parse_rules(Settings(upstream_url=server.url))
            try:
                return await hooks(invocation())
            finally:
                await hooks.aclose()

    hooks = Webhooks(Settings(upstream_url="http://127.0.0.1:1/"))  # no loop running
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(main(hooks)) == Answer("x")
        del hooks
        gc.collect()
    assert not [w for w in caught if "nclosed" in str(w.message)], [str(w.message) for w in caught]


def test_fanout_modes() -> None:
    configured = Settings(upstream_url="http://hook/")
    assert parse_mode([], configured) == "both"
    assert parse_mode([], Settings()) == "route"
    assert parse_mode(["--no-upstream"], configured) == "route"
    assert parse_mode(["--upstream-only"], configured) == "upstream"
    with pytest.raises(SystemExit):
        parse_mode(["--upstream-only"], Settings())


async def test_cookies_a_webhook_sets_are_not_sent_with_the_next_request() -> None:
    """One client serves every user's requests: no cookie carries over between them."""

    async def set_cookie(n: int, request: Received) -> bytes | None:
        return response(200, COMPLETION, "Set-Cookie: session=alice-secret; Path=/")

    async with serving(set_cookie) as server:
        # A host name, not an address: aiohttp's default jar keeps no cookie of an IP address.
        url = server.url.replace("127.0.0.1", "localhost")
        hooks = Webhooks(Settings(upstream_url=url))
        try:
            for call in ("1", "2"):
                assert await hooks(invocation(call)) == Answer(result="x")
        finally:
            await hooks.aclose()
    assert len(server.requests) == 2
    assert b"cookie:" not in server.requests[1].head.lower()
