"""The pure parts of the HTTP upstream (:mod:`hubbub.upstream.webhook`): rules, headers, bodies,
Completions, and the request loop against an in-process transport (limits, retries)."""

from __future__ import annotations

import hashlib
import hmac

import httpx
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


def invocation(call: str = "1") -> UpstreamEntry:
    return UpstreamEntry(Event.INVOCATION, "chat", "c1", "gw", target="go", call=call)


async def test_an_answer_larger_than_the_message_limit_is_an_error() -> None:
    big = b'{"type":3,"invocationId":"1","result":"' + b"x" * 2000 + b'"}\x1e'
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, stream=httpx.ByteStream(big))
    )
    hooks = Webhooks(
        Settings(upstream_url="http://hook/", max_message_size=1024), transport=transport
    )
    try:
        answer = await hooks(invocation())
    finally:
        await hooks.aclose()
    assert answer is not None and "larger than the message limit" in (answer.error or "")


async def test_connection_events_retry_then_give_up_by_the_attempt_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("hubbub.upstream.webhook.RETRY_FIRST", 0.001)
    calls: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) % 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(502, stream=httpx.ByteStream(b""))  # as a server's, unread

    hooks = Webhooks(Settings(upstream_url="http://hook/"), transport=httpx.MockTransport(refuse))
    try:
        connected = UpstreamEntry(Event.CONNECTED, "chat", "c1", "gw")
        assert await hooks(connected) is None
        assert len(calls) == 5
        assert hooks.metrics.webhook_retries._value.get() == 4
        # Invocations are never retried: the caller gets the error at once.
        answer = await hooks(invocation())
        assert answer == Answer(error="Invocation failed: the upstream answered 502.")
        assert len(calls) == 6
    finally:
        await hooks.aclose()


async def test_no_matching_rule_no_request_no_answer() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    settings = rules({"urlTemplate": "http://hook/", "hubPattern": "other"})
    hooks = Webhooks(settings, transport=httpx.MockTransport(fail))
    try:
        assert await hooks(invocation()) is None
    finally:
        await hooks.aclose()


def test_fanout_modes() -> None:
    configured = Settings(upstream_url="http://hook/")
    assert parse_mode([], configured) == "both"
    assert parse_mode([], Settings()) == "route"
    assert parse_mode(["--no-upstream"], configured) == "route"
    assert parse_mode(["--upstream-only"], configured) == "upstream"
    with pytest.raises(SystemExit):
        parse_mode(["--upstream-only"], Settings())
