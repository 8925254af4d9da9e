"""The HTTP edge before authentication (issue 9): what a peer that never authenticates may cost.

A real gateway process and raw TCP clients: an endless request head is answered 431 and cut off
without the gateway's memory growing, heads must arrive in time (a slow one, or a socket that
sends nothing, is closed at the deadline and not before), sockets without a request are capped,
and WebSocket connections beyond ``HUBBUB_MAX_CONNECTIONS`` are refused with 503 while health
answers. Normal keep-alive traffic, large bodies and pipelined requests are not affected.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hubbub.tokens import mint_token
from tests.support.processes import ACCESS_KEY, Deployment, Proc, eventually
from tests.support.rawclient import RawClient, client_token

HEAD_TIMEOUT = 2.0
MiB = 1024 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        value = orjson.loads(self.body)
        assert isinstance(value, dict)
        return value


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10.0) -> Answer:
    """One HTTP/1.1 response with a Content-Length body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return Answer(int(status_line.split()[1]), headers, body)


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``timeout`` seconds;
    anything it writes meanwhile is an error."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    assert data == b"", data[:200]
    return True


def rss_kib(proc: Proc) -> int:
    with open(f"/proc/{proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def get(http: httpx.AsyncClient, url: str) -> int:
    return (await http.get(url)).status_code


def warnings(deployment: Deployment, text: str) -> list[str]:
    return [line for line in deployment.logs().splitlines() if "WARNING" in line and text in line]


@pytest.fixture
async def gateway(deployment: Deployment) -> Proc:
    return await deployment.start_gateway(HUBBUB_HEAD_TIMEOUT=str(HEAD_TIMEOUT))


# ---------------------------------------------------------------- head size


async def test_a_head_over_the_cap_is_answered_431(gateway: Proc, deployment: Deployment) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(b"GET /api/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 * 1024))
    await writer.drain()
    answer = await read_answer(reader)
    assert answer.status == 431
    assert answer.headers["connection"] == "close"
    assert answer.json() == {
        "code": "Error.RequestHeaderTooLarge",
        "message": "the request head exceeds 16384 bytes",
    }
    assert await closed_within(reader, 5)
    writer.close()
    assert len(warnings(deployment, "request head over 16384 bytes")) == 1
    assert "Traceback" not in deployment.logs()


async def test_an_endless_head_is_cut_off_without_memory_growth(gateway: Proc) -> None:
    """64 MiB of one header value, sent as fast as the gateway reads: it stops reading after
    16 KiB; before the edge, it read and kept all of it (+148 MB for 150 MiB)."""
    async with httpx.AsyncClient() as http:  # warm up: what any request allocates once
        for _ in range(20):
            assert await get(http, f"{gateway.url}/api/live") == 200
    before = rss_kib(gateway)
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(b"GET /api/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk = b"a" * MiB
    sent = 0
    started = time.monotonic()
    try:
        while sent < 64 * MiB:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(chunk)
    except ConnectionError:
        closed = True  # the gateway closed: what was in flight was reset
    else:
        # All written (into socket buffers, at most): the gateway must close it now.
        closed = await closed_within(reader, 5)
    elapsed = time.monotonic() - started
    grown = rss_kib(gateway) - before
    writer.close()
    print(f"sent {sent / MiB:.0f} MiB in {elapsed:.2f} s; gateway RSS grew {grown} KiB")
    assert closed, "the gateway kept reading the head"
    assert sent < 32 * MiB  # cut off long before the end (kernel buffers hold a few MiB)
    assert grown < 4 * 1024, f"gateway RSS grew {grown} KiB"
    async with httpx.AsyncClient() as http:
        assert await get(http, f"{gateway.url}/api/live") == 200


# ---------------------------------------------------------------- head time


@pytest.mark.parametrize("earlier", [0, 1], ids=["first-request", "after-a-request"])
async def test_a_slow_head_is_closed_at_the_deadline(
    gateway: Proc, deployment: Deployment, earlier: int
) -> None:
    """A header line every 0.4 s: open until the head timeout (2 s), closed right after. On
    a keep-alive connection the deadline runs from the first byte of that request; idle
    between requests, the connection is left to uvicorn's keep-alive timeout (5 s)."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    for _ in range(earlier):
        writer.write(b"GET /api/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_answer(reader)).status == 200
        assert not await closed_within(reader, 1.25 * HEAD_TIMEOUT)
    started = time.monotonic()
    writer.write(b"GET /api/live HTTP/1.1\r\n")
    closed_at = None
    for n in range(20):
        if await closed_within(reader, 0.4):
            closed_at = time.monotonic() - started
            break
        writer.write(b"X-Line-%d: 1\r\n" % n)
    writer.close()
    assert closed_at is not None, "a slow head was never closed"
    assert 0.9 * HEAD_TIMEOUT <= closed_at <= HEAD_TIMEOUT + 1.0, closed_at
    assert len(warnings(deployment, "sent part of a request head within 2 s")) == 1


async def test_a_silent_socket_is_closed_at_the_deadline(
    gateway: Proc, deployment: Deployment
) -> None:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    assert not await closed_within(reader, 0.9 * HEAD_TIMEOUT)
    assert await closed_within(reader, 1.5)
    closed_at = time.monotonic() - started
    writer.close()
    assert closed_at <= HEAD_TIMEOUT + 1.0, closed_at
    assert len(warnings(deployment, "sent nothing within 2 s")) == 1
    assert "Traceback" not in deployment.logs()


async def test_sockets_without_a_request_are_capped(deployment: Deployment) -> None:
    """Beyond HUBBUB_MAX_PENDING_SOCKETS idle sockets, the oldest is closed: idle sockets can
    never hold every file descriptor, and health keeps answering."""
    gateway = await deployment.start_gateway(HUBBUB_MAX_PENDING_SOCKETS="5")
    idle = [await asyncio.open_connection(gateway.host, gateway.port) for _ in range(5)]
    for reader, _ in idle:
        assert not await closed_within(reader, 0.05)
    newer = [await asyncio.open_connection(gateway.host, gateway.port) for _ in range(3)]
    for reader, _ in idle[:3]:  # the three oldest, one per newcomer
        assert await closed_within(reader, 5)
    for reader, _ in idle[3:] + newer:
        assert not await closed_within(reader, 0.05)
    # A health probe is one more socket: it sheds the oldest idle one and is answered.
    async with httpx.AsyncClient() as http:
        assert await get(http, f"{gateway.url}/api/health") == 200
    assert await closed_within(idle[3][0], 5)
    for reader, _ in idle[4:] + newer:
        assert not await closed_within(reader, 0.05)
    for _, writer in idle + newer:
        writer.close()
    assert len(warnings(deployment, "sockets without a request")) == 4


# ---------------------------------------------------------------- connections per gateway


async def test_connections_beyond_the_gateway_cap_get_503(deployment: Deployment) -> None:
    gateway = await deployment.start_gateway(HUBBUB_MAX_CONNECTIONS="2")
    first, second = [await RawClient.connect(gateway.url) for _ in "ab"]
    token = client_token("late")
    full = {
        "code": "Error.Gateway.Full",
        "message": "this gateway serves 2 connections; retry later",
    }

    async def negotiate(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(
            f"{gateway.url}/hubs/chat/negotiate?negotiateVersion=1",
            headers={"Authorization": f"Bearer {token}"},
        )

    async with httpx.AsyncClient() as http:
        refused = await negotiate(http)
        assert refused.status_code == 503, refused.text
        assert refused.json() == full
        assert refused.headers["x-ms-error-code"] == "Error.Gateway.Full"
        ws_url = gateway.url.replace("http://", "ws://") + f"/hubs/chat?access_token={token}"
        with pytest.raises(InvalidStatus) as upgrade:
            await websockets.connect(ws_url, ping_interval=None)
        assert upgrade.value.response.status_code == 503
        assert orjson.loads(upgrade.value.response.body or b"") == full
        assert await get(http, f"{gateway.url}/api/live") == 200
        assert await get(http, f"{gateway.url}/api/health") == 200
        assert len(warnings(deployment, "Error.Gateway.Full")) == 2  # one refusal line each

        await first.close()

        async def admitted() -> bool:  # the close is unregistered in the background
            r = await negotiate(http)
            assert r.status_code in (200, 503), r.text
            return r.status_code == 200

        await eventually(admitted)
    third = await RawClient.connect(gateway.url, token=token)
    assert third.connection_id
    for client in (second, third):
        await client.close()
    assert "Traceback" not in deployment.logs()


# ---------------------------------------------------------------- normal traffic


async def test_keep_alive_clients_large_bodies_and_pipelining_are_not_affected(
    gateway: Proc, deployment: Deployment
) -> None:
    path = "/api/hubs/chat/:send"
    token = mint_token(ACCESS_KEY, f"{gateway.url}{path}")
    host = f"{gateway.host}:{gateway.port}".encode()

    def send(size: int) -> tuple[bytes, bytes]:
        body = orjson.dumps({"target": "t", "arguments": ["x" * size]})
        head = (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (path.encode(), host, token.encode(), len(body))
        )
        return head, body

    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    # Many requests on one connection, each well within the head timeout of the previous.
    for _ in range(200):
        writer.write(b"".join(send(10)))
        answer = await read_answer(reader)
        assert answer.status == 202, answer
    # A 500 KiB body, arriving in many reads after its head: no head is counted there.
    head, body = send(500 * 1024)
    writer.write(head)
    await writer.drain()
    for i in range(0, len(body), 16 * 1024):
        writer.write(body[i : i + 16 * 1024])
        await writer.drain()
    answer = await read_answer(reader)
    assert answer.status == 202, answer
    # Pipelined: a request with a 10 KiB body and most of the next head in one write (one
    # read in the gateway), the rest of the head once the first is answered: that head is
    # under the cap, though the read it began in is not.
    live = b"GET /api/live HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 15000 + b"\r\n\r\n"
    writer.write(b"".join(send(10 * 1024)) + live[:12000])
    await writer.drain()
    assert (await read_answer(reader)).status == 202
    writer.write(live[12000:])
    assert (await read_answer(reader)).status == 200
    # A head just under the cap is served.
    writer.write(b"GET /api/live HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 16000 + b"\r\n\r\n")
    assert (await read_answer(reader)).status == 200
    writer.close()
    assert warnings(deployment, "connection closed") == []
    assert "Traceback" not in deployment.logs()
