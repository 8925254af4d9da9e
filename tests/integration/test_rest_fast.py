"""The send and batch endpoints (``hubbub_gateway.ingest``'s ASGI apps, reached through the
shortcut in ``hubbub_gateway.endpoints``) against a real gateway process and a real Redis: what
they store, what they refuse and how, and that CORS and the body limit apply to them as to any
route."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from hubbub.dev.embedded import RedisProcess
from hubbub.protocol.names import InvalidName
from hubbub.protocol.signalr import encode_invocation
from hubbub.sdk.client import ServiceAuth
from hubbub.sdk.publisher import Publisher
from hubbub.settings import Settings
from hubbub.tokens import mint_token
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.keys import KeySchema
from hubbub.wire.messages import InvalidArguments
from tests.integration.test_rest import published
from tests.support.processes import ACCESS_KEY, Deployment

PREFIX = "fastpath"
LIMIT = 4096  # the gateway's max body size here: small, so that the limit is cheap to reach
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
async def gateway(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """One gateway for the whole module (no worker: these tests read the publish stream)."""
    deployment = Deployment(redis_server.url, tmp_path_factory.mktemp("fast"), PREFIX)
    proc = await deployment.start_gateway(
        HUBBUB_MAX_BODY_SIZE=str(LIMIT), HUBBUB_CORS_ORIGINS='["http://app.test"]'
    )
    yield proc.url
    deployment.stop()


@pytest.fixture
async def http(gateway: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway, auth=ServiceAuth(ACCESS_KEY)) as client:
        yield client


async def stored(redis: Redis, message_id: str) -> MessageEntry:
    """The publish-stream entry a ``messageId`` names."""
    partition, _, entry = message_id.partition(":")
    key = KeySchema(PREFIX).publish_partition(int(partition))
    [(_, fields)] = await redis.xrange(key, entry, entry)
    return MessageEntry.decode(fields)


async def count(redis: Redis) -> int:
    return await published(redis, PREFIX)


def assert_error(r: httpx.Response, status: int, code: str, message: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-ms-error-code"] == code
    body = r.json()
    assert body["code"] == code
    if message is not None:
        assert body["message"] == message


SENDS = [
    ("/:send", Kind.ALL, ""),
    ("/users/alice/:send", Kind.USER, "alice"),
    ("/groups/room%201/:send", Kind.GROUP, "room 1"),
    ("/connections/c-1_x/:send", Kind.CONNECTION, "c-1_x"),
]


@pytest.mark.parametrize("prefix", ["/api/hubs", "/api/v1/hubs"])
@pytest.mark.parametrize(("tail", "kind", "target"), SENDS)
async def test_each_send_path_stores_its_message_under_both_prefixes(
    http: httpx.AsyncClient, redis: Redis, prefix: str, tail: str, kind: Kind, target: str
) -> None:
    body = {"target": "news", "arguments": [1, "two", {"three": [3.5, None, True]}]}
    r = await http.post(f"{prefix}/Chat{tail}", params={"api-version": "2024-12-01"}, json=body)
    assert r.status_code == 202, r.text
    assert r.headers["content-type"] == "application/json"
    message = await stored(redis, r.json()["messageId"])
    assert (message.kind, message.hub, message.target) == (kind, "chat", target)
    assert message.frame == encode_invocation("news", body["arguments"])  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["/api/hubs", "/api/v1/hubs"])
async def test_batch_under_both_prefixes_stores_every_message_in_order(
    http: httpx.AsyncClient, redis: Redis, prefix: str
) -> None:
    messages = [
        {"to": "all", "target": "t", "arguments": [0], "excluded": ["a", "b"]},
        {"to": "group", "name": "g", "target": "t", "arguments": [1]},
        {"to": "user", "name": "u", "target": "t", "arguments": [2]},
        {"to": "connection", "name": "c", "target": "t", "arguments": [3]},
    ]
    r = await http.post(
        f"{prefix}/chat/:batch", params={"api-version": "1"}, json={"messages": messages}
    )
    assert r.status_code == 202, r.text
    got = [await stored(redis, i) for i in r.json()["messageIds"]]
    assert [(m.kind, m.target, m.excluded) for m in got] == [
        (Kind.ALL, "", ("a", "b")),
        (Kind.GROUP, "g", ()),
        (Kind.USER, "u", ()),
        (Kind.CONNECTION, "c", ()),
    ]
    assert [m.frame for m in got] == [encode_invocation("t", [i]) for i in range(4)]


async def test_queries_excluded_application_and_api_version(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    query = "api-version=2022-06-01&excluded=a&application=App&excluded=b_2&other=x"
    r = await http.post(f"/api/hubs/chat/:send?{query}", json={"target": "t"})
    assert r.status_code == 202, r.text
    message = await stored(redis, r.json()["messageId"])
    assert (message.hub, message.excluded) == ("app_chat", ("a", "b_2"))
    # Sends to a user or a connection take no ``excluded``: ignored, as by the FastAPI routes.
    r = await http.post("/api/hubs/chat/users/u/:send?excluded=not%20an%20id", json={"target": "t"})
    assert r.status_code == 202, r.text
    assert (await stored(redis, r.json()["messageId"])).excluded == ()


async def test_trace_context_travels_in_the_stream_entry(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await http.post(
        "/api/hubs/chat/:send", json={"target": "t"}, headers={"traceparent": traceparent}
    )
    assert (await stored(redis, r.json()["messageId"])).traceparent == traceparent


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body.0: JSON decode error"),
        (b'{"target": "x",', "body.15: JSON decode error"),
        (b"", "body: Field required"),
        (b"{}", "body.target: Field required"),
        (b"[1]", "body: Input should be a valid dictionary or object to extract fields from"),
        (b"null", "body: Input should be a valid dictionary or object to extract fields from"),
        (b'{"target": ""}', "body.target: String should have at least 1 character"),
        (b'{"target": "' + b"x" * 1025 + b'"}',
         "body.target: String should have at most 1024 characters"),
        (b'{"target": 5, "arguments": {}}',
         "body.target: Input should be a valid string; "
         "body.arguments: Input should be a valid list"),
    ],
)  # fmt: skip
async def test_bad_bodies_are_400_and_store_nothing(
    http: httpx.AsyncClient, redis: Redis, body: bytes, message: str
) -> None:
    before = await count(redis)
    r = await http.post("/api/hubs/chat/:send", content=body, headers=JSON)
    assert_error(r, 400, "Error.InvalidRequest", message)
    assert await count(redis) == before


async def test_json_that_only_the_standard_library_reads_is_accepted(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """NaN and a UTF-8 BOM: orjson refuses them, FastAPI's json.loads did not; neither do we."""
    for body in (b'{"target": "t", "arguments": [NaN]}', b'\xef\xbb\xbf{"target": "t"}'):
        r = await http.post("/api/hubs/chat/:send", content=body, headers=JSON)
        assert r.status_code == 202, r.text
    r = await http.post("/api/hubs/chat/:send", content=b'{"target": "\xff"}', headers=JSON)
    assert_error(r, 400, "Error.Http400", "There was an error parsing the body")


async def test_bodies_over_the_limit_are_413_whether_announced_or_chunked(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    def body(size: int) -> bytes:
        head, tail = b'{"target": "t", "arguments": ["', b'"]}'
        return head + b"a" * (size - len(head) - len(tail)) + tail

    r = await http.post("/api/hubs/chat/:send", content=body(LIMIT), headers=JSON)
    assert r.status_code == 202, r.text

    before = await count(redis)
    for path in ("/api/hubs/chat/:send", "/api/hubs/chat/:batch"):
        r = await http.post(path, content=body(LIMIT + 1), headers=JSON)
        assert_error(r, 413, "Error.PayloadTooLarge", f"request body exceeds {LIMIT} bytes")

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: found while reading
        data = body(LIMIT + 1)
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    r = await http.post("/api/hubs/chat/:send", content=chunks(), headers=JSON)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "Error.PayloadTooLarge")
    assert await count(redis) == before


async def test_tokens_are_checked_with_the_request_url_as_audience(
    gateway: str, redis: Redis
) -> None:
    url = f"{gateway}/api/hubs/chat/:send"
    body = {"target": "x"}
    before = await count(redis)
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "missing 'Authorization: Bearer <token>'"),
        ({"authorization": "Basic abc"}, "missing 'Authorization: Bearer <token>'"),
        ({"authorization": "Bearer abc"}, "invalid token: Not enough segments"),
        (
            {"authorization": "Bearer " + mint_token("another-key-of-enough-length-000000", url)},
            "invalid token: Signature verification failed",
        ),
        (
            {"authorization": "Bearer " + mint_token(ACCESS_KEY, f"{gateway}/api/hubs/b/:send")},
            "token audience does not match the request URL",
        ),
        (
            {"authorization": "Bearer " + mint_token(ACCESS_KEY, url, minutes=-5)},
            "token has expired",
        ),
    ]
    async with httpx.AsyncClient() as client:
        for headers, message in cases:
            r = await client.post(url, json=body, headers=headers)
            assert_error(r, 401, "Error.Unauthorized", message)
        # Checked after the JSON is read and before the body and the hub name are validated.
        r = await client.post(url, content=b"nope", headers=JSON)
        assert_error(r, 400, "Error.InvalidRequest", "body.0: JSON decode error")
        r = await client.post(f"{gateway}/api/hubs/1bad/:send", content=b"{}", headers=JSON)
        assert_error(r, 401, "Error.Unauthorized")
        # The path is exact (only the hub ignores case): no case or trailing-slash leniency.
        for audience in ("http://127.0.0.1/API/hubs/chat/:send", f"{url}/"):
            token = mint_token(ACCESS_KEY, audience)
            r = await client.post(url, json=body, headers={"authorization": f"bearer {token}"})
            assert_error(
                r, 401, "Error.Unauthorized", "token audience does not match the request URL"
            )
        # The Azure SDK's audience: no port, the query signed (and ignored), any origin.
        sdk = mint_token(ACCESS_KEY, "HTTP://127.0.0.1/api/hubs/CHAT/:send?api-version=1")
        r = await client.post(
            url + "?api-version=1", json=body, headers={"authorization": f"bearer {sdk}"}
        )
        assert r.status_code == 202, r.text
    assert await count(redis) == before + 1


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/hubs/1bad/:send", {"target": "t"}, "invalid hub name '1bad': start with a "
         "letter, then up to 127 of letters, digits and _`,.[]"),
        ("/api/hubs/chat/:send?application=1-x", {"target": "t"}, "invalid hub name "
         "'1-x_chat': start with a letter, then up to 127 of letters, digits and _`,.[]"),
        ("/api/hubs/chat/users/%20%20/:send", {"target": "t"},
         "user id must be 1-1024 characters and not all whitespace"),
        ("/api/hubs/chat/groups/%20/:send", {"target": "t"},
         "group name must be 1-1024 characters and not all whitespace"),
        ("/api/hubs/chat/connections/bad%20id/:send", {"target": "t"},
         "connection id must be 1-128 characters of A-Z a-z 0-9 _ -"),
        ("/api/hubs/chat/:send?excluded=ok&excluded=", {"target": "t"},
         "connection id must be 1-128 characters of A-Z a-z 0-9 _ -"),
        ("/api/hubs/chat/groups/g/:send?excluded=a,b", {"target": "t"},
         "connection id must be 1-128 characters of A-Z a-z 0-9 _ -"),
        ("/api/hubs/chat/:batch", {"messages": [{"to": "all", "target": "t"},
                                                {"to": "user", "name": " ", "target": "t"}]},
         "messages[1]: user id must be 1-1024 characters and not all whitespace"),
        ("/api/hubs/chat/:batch", {"messages": [{"to": "user", "name": "u", "target": "t",
                                                 "excluded": ["c"]}]},
         "messages[0]: 'excluded' applies to 'all' and 'group' only"),
    ],
)  # fmt: skip
async def test_bad_names_are_400_and_store_nothing(
    http: httpx.AsyncClient, redis: Redis, path: str, body: dict[str, Any], message: str
) -> None:
    before = await count(redis)
    r = await http.post(path, json=body)
    assert_error(r, 400, "Error.InvalidName", message)
    assert await count(redis) == before


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/api/hubs/chat/:send", "/api/v1/hubs/chat/users/u/:send",
                                  "/api/hubs/chat/:batch"])  # fmt: skip
async def test_other_methods_are_405(http: httpx.AsyncClient, method: str, path: str) -> None:
    r = await http.request(method, path, json={"target": "t"})
    assert_error(r, 405, "Error.Http405", "Method Not Allowed")


async def test_paths_that_are_not_send_endpoints_are_left_to_the_routes(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/api/hubs/chat/users/u/:batch", "/api/hubs/chat/:sendx", "/api/hubs/chat//:send",
                 "/api/hubs/chat/users/a/b/:send"):  # fmt: skip
        assert_error(await http.post(path, json={"target": "t"}), 404, "Error.Http404")
    # An encoded slash stays in its segment: the user "a/b" (tests/security/test_audience.py).
    r = await http.post("/api/hubs/chat/users/a%2Fb/:send", json={"target": "t"})
    assert r.status_code == 202, r.text
    r = await http.post("/api/hubs/chat/:send/", json={"target": "t"})
    assert r.status_code == 307  # FastAPI's trailing-slash redirect


BAD_REQUESTS: list[tuple[str, bytes]] = [
    ("/api/hubs/chat/:send", b"not json"),
    ("/api/hubs/chat/:send", b'{"target": "", "arguments": 5}'),
    ("/api/hubs/chat/:send", b'"just a string"'),
    ("/api/hubs/1bad/:send", b'{"target": "t"}'),
    ("/api/hubs/chat/groups/%20/:send", b'{"target": "t"}'),
    ("/api/hubs/chat/:send?excluded=bad%20id", b'{"target": "t"}'),
    ("/api/v1/hubs/chat/connections/bad%20id/:send?api-version=1", b'{"target": "t"}'),
    ("/api/hubs/chat/:batch", b'{"messages": []}'),
    ("/api/hubs/chat/:batch", b'{"messages": [{"to": "everyone", "target": "t"}]}'),
    ("/api/hubs/chat/:batch", b'{"messages": [{"to": "user", "name": 5, "target": "t"}]}'),
    ("/api/hubs/chat/:batch", b'{"messages": [{"to": "connection", "name": "a b", "target": 1}]}'),
    ("/api/hubs/chat/:batch", b'{"messages": [{"to": "group", "name": "a b", "target": "t",'
                              b' "excluded": ["bad id"]}]}'),
    ("/api/hubs/chat/:send", b'{"target": "t", "arguments": ["' + b"a" * LIMIT + b'"]}'),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body"), BAD_REQUESTS)
async def test_fast_path_and_fastapi_routes_refuse_alike(
    http: httpx.AsyncClient, redis: Redis, path: str, body: bytes
) -> None:
    """With an ``Origin`` header a send gets the same status, body and error code, plus the
    CORS headers (CORS wraps the send endpoints like every route)."""
    before = await count(redis)
    fast = await http.post(path, content=body, headers=JSON)
    routed = await http.post(path, content=body, headers={**JSON, "origin": "http://app.test"})
    assert fast.status_code in (400, 413)
    assert (routed.status_code, routed.content) == (fast.status_code, fast.content)
    for name in ("content-type", "x-ms-error-code", "vary"):
        assert routed.headers[name] == fast.headers[name]
    assert "access-control-allow-origin" not in fast.headers
    assert routed.headers["access-control-allow-origin"] == "http://app.test"
    assert await count(redis) == before


async def test_cors_requests_are_still_served(http: httpx.AsyncClient, redis: Redis) -> None:
    origin = {"origin": "http://app.test"}
    preflight = await http.options(
        "/api/hubs/chat/:send", headers={**origin, "access-control-request-method": "POST"}
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.test"
    r = await http.post("/api/hubs/chat/:send", json={"target": "cors"}, headers=origin)
    assert r.status_code == 202, r.text
    assert r.headers["access-control-allow-origin"] == "http://app.test"
    assert (await stored(redis, r.json()["messageId"])).frame == encode_invocation("cors", [])


async def test_content_types_other_than_json_get_fastapis_answer(
    http: httpx.AsyncClient,
) -> None:
    body = orjson.dumps({"target": "t"})
    for headers in ({"content-type": "application/json; charset=utf-8"},
                    {"content-type": "application/vnd.api+json"}):  # fmt: skip
        r = await http.post("/api/hubs/chat/:send", content=body, headers=headers)
        assert r.status_code == 202, r.text
    no_json = "body: Input should be a valid dictionary or object to extract fields from"
    for headers in ({}, {"content-type": "text/plain"}):
        r = await http.post("/api/hubs/chat/:send", content=body, headers=headers)
        assert_error(r, 400, "Error.InvalidRequest", no_json)


async def test_openapi_still_documents_the_send_endpoints(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    bodies = {
        path: op["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for path, op in spec["paths"].items()
        if path.endswith((":send", ":batch"))
    }
    assert bodies == {
        "/api/hubs/{hub}/:send": "#/components/schemas/SendBody",
        "/api/hubs/{hub}/users/{user}/:send": "#/components/schemas/SendBody",
        "/api/hubs/{hub}/groups/{group}/:send": "#/components/schemas/SendBody",
        "/api/hubs/{hub}/connections/{connection}/:send": "#/components/schemas/SendBody",
        "/api/hubs/{hub}/:batch": "#/components/schemas/BatchBody",
    }
    assert (await http.get("/docs")).status_code == 200


PARITY: list[tuple[str, bytes, Callable[[Publisher], Awaitable[str]]]] = [
    ("/api/hubs/chat/users/%20%20/:send", b'{"target": "t"}',
     lambda p: p.send_to_user("  ", "t")),
    ("/api/hubs/chat/groups/%20/:send", b'{"target": "t"}', lambda p: p.send_to_group(" ", "t")),
    ("/api/hubs/chat/connections/bad%20id/:send", b'{"target": "t"}',
     lambda p: p.send_to_connection("bad id", "t")),
    ("/api/hubs/chat/:send?excluded=ok&excluded=bad%20id", b'{"target": "t"}',
     lambda p: p.send_to_all("t", excluded=["ok", "bad id"])),
    ("/api/hubs/chat/groups/g/:send?excluded=a,b", b'{"target": "t"}',
     lambda p: p.send_to_group("g", "t", excluded=["a,b"])),
    ("/api/hubs/chat/:send", b'{"target": "t", "arguments": [NaN, 123456789012345678901234]}',
     lambda p: p.send_to_all("t", [float("nan"), 123456789012345678901234])),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "publish"), PARITY)
async def test_the_publisher_refuses_what_rest_refuses(
    http: httpx.AsyncClient,
    redis: Redis,
    redis_server: RedisProcess,
    path: str,
    body: bytes,
    publish: Callable[[Publisher], Awaitable[str]],
) -> None:
    """Both build messages with ``build_message``: same refusal, same text, nothing stored."""
    before = await count(redis)
    r = await http.post(path, content=body, headers=JSON)
    settings = Settings(redis_url=redis_server.url, key_prefix=PREFIX)
    async with Publisher.from_settings(settings, "chat") as publisher:
        with pytest.raises((InvalidName, InvalidArguments)) as raised:
            await publish(publisher)
    code = "Error.InvalidName" if raised.type is InvalidName else "Error.InvalidRequest"
    assert_error(r, 400, code, str(raised.value))
    assert await count(redis) == before
