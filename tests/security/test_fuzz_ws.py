"""Fuzzing the WebSocket edge (issue 9, "Fuzzing in CI"): hypothesis against a live gateway.

Two layers, each on a fresh socket per example against one gateway process (with a worker
and the session's real Redis) for the whole module:

- SignalR records after a valid handshake (or instead of it): random JSON values, message
  types, invocation fields, record separators missing or split across frames, invalid UTF-8,
  huge numbers, deep nesting, records over the size limit, as text or binary frames;
- raw WebSocket frames on a TCP socket after the HTTP upgrade: any opcode (reserved ones
  too), RSV bits, masked or not, fragments, length claims beyond the frame limit, control
  frames over 125 bytes, Close frames with bad codes or reasons that are not UTF-8.

After the fuzz input, each example sends a probe invocation. The gateway must either still
serve the connection (the probe's Completion comes back) or have closed it properly: a Close
frame, never 1011 (an internal error), never a dropped socket, within a few seconds (never a
hang). Its log must show no traceback, and afterwards a normal client still connects and
receives a REST send, and ``/api/health`` is 200.

Each example runs in its own event loop (``asyncio.run``) under a timeout, so whatever fails
in it surfaces in that example. Bounded for CI: a fixed number of examples, derandomized,
no shrinking (each failure is reported as found), explicit examples for the known-nasty
inputs.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import struct
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import strategies as st

from hubbub.dev.embedded import RedisProcess
from hubbub.sdk.client import HubbubClient
from tests.support.processes import ACCESS_KEY, Deployment, Proc
from tests.support.rawclient import RS, RawClient, client_token

pytestmark = pytest.mark.fuzz

EXAMPLE_TIMEOUT = 10.0  # seconds for one example, connect to verdict: beyond it, a hang
PROBE_ID = "fuzz-probe"
PROBE = orjson.dumps({"type": 1, "invocationId": PROBE_ID, "target": "Probe", "arguments": []}) + RS
HANDSHAKE = b'{"protocol":"json","version":1}' + RS
JOINER = ["hubbub.joinLeaveGroup"]  # so JoinGroup/LeaveGroup reach Redis
MAX_MESSAGE_SIZE = 32 * 1024  # the gateway's default HUBBUB_MAX_MESSAGE_SIZE
MAX_FRAME_SIZE = 1024 * 1024  # the gateway's frame limit for that message size


def fuzz_settings(examples: int) -> hypothesis.settings:
    """Reproducible and bounded: derandomized, no example database, no deadline (CI
    machines are slow), no shrinking (minutes of re-runs against a live server)."""
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


@dataclass
class Gateway:
    deployment: Deployment
    proc: Proc
    log_seen: int = 0  # how much of the log earlier examples checked

    def run(self, example: Coroutine[Any, Any, Verdict]) -> None:
        """Run one example in its own event loop and check its verdict and the log; a
        failure carries what the gateway logged meanwhile."""
        try:
            check(asyncio.run(example))
            self.check_log()
        except BaseException as exc:
            exc.add_note("gateway log since the previous example:\n" + self.output_since())
            raise

    def output_since(self) -> str:
        return self.proc.output()[self.log_seen :][-4000:]

    def check_log(self) -> None:
        """The process is alive and logged no traceback since the last check."""
        assert self.proc.returncode is None, self.deployment.logs()
        log = self.proc.output()
        new, self.log_seen = log[self.log_seen :], len(log)
        assert "Traceback" not in new, new[-6000:]


@pytest.fixture(scope="module")
def gateway(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One gateway and one worker (for the REST send afterwards) for the whole module."""
    deployment = Deployment(redis_server.url, tmp_path_factory.mktemp("fuzz-ws"), "fuzzws")
    try:
        proc = deployment.launch_gateway()
        deployment.start_worker()
        proc.wait_healthy_sync(30)
        yield Gateway(deployment, proc)
    finally:
        deployment.stop()


async def still_serves(gw: Gateway) -> None:
    """A normal client connects and receives a REST send; health is 200."""
    client = await RawClient.connect(gw.proc.url, token=client_token("after-fuzz"))
    try:
        async with HubbubClient(gw.proc.url, ACCESS_KEY, "chat") as api:
            await api.send_to_user("after-fuzz", "still", ["here"])
            message = await client.recv(timeout=10)
            assert message["target"] == "still" and message["arguments"] == ["here"], message
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{gw.proc.url}/api/health")).status_code == 200
    finally:
        await client.close()


# ---------------------------------------------------------------- SignalR records

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: past 64 bits too
    | st.floats()  # NaN and infinities: not JSON at all once encoded
    | st.text(max_size=20),  # lone surrogates too
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
TARGETS = st.sampled_from(["JoinGroup", "LeaveGroup", "joingroup", "Probe", ""]) | st.text(
    max_size=30
)
GROUP_ARGUMENTS = st.lists(st.text(max_size=20) | JSON_VALUES, max_size=3)
FIELDS = {
    "invocationId": st.text(max_size=10) | JSON_VALUES,
    "target": TARGETS | JSON_VALUES,
    "arguments": GROUP_ARGUMENTS | JSON_VALUES,
    "streamIds": st.lists(st.text(max_size=5), max_size=2) | JSON_VALUES,
    "error": st.text(max_size=20) | JSON_VALUES,
    "result": JSON_VALUES,
    "item": JSON_VALUES,
    "allowReconnect": st.booleans() | JSON_VALUES,
    "sequenceId": st.integers() | JSON_VALUES,
    "protocol": st.just("json") | JSON_VALUES,
    "version": st.integers(-1, 2) | JSON_VALUES,
}
RECORDS = st.fixed_dictionaries(
    {"type": st.integers(1, 9) | st.integers() | JSON_VALUES},
    optional=FIELDS,
)
NASTY = [
    b"[" * 5000,  # deeper than any JSON parser's nesting limit
    b'{"type":1,"target":"JoinGroup","arguments":[' + b"[" * 2000 + b"]" * 2000 + b"]}",
    b'{"type":' + b"9" * 400 + b"}",  # a huge integer
    b'{"type":1e999}',
    b'{"type":1,"invocationId":"1","target":"JoinGroup","arguments":[1e999999]}',
    b'{"type":-9223372036854775809}',
    b'{"type":1,"target":"\xc3\x28","arguments":[]}',  # invalid UTF-8
    b'{"type":1,"target":"\\ud800","arguments":["\\udfff"]}',  # lone surrogates, escaped
    b"\xff\xfe\xfd",
    b"\x00",
    b"",
    b'{"type":7,"error":"bye","allowReconnect":true}',
    b"[" * (MAX_MESSAGE_SIZE + 10),  # over the message size
]


def _encode(record: dict[str, Any], ascii_only: bool) -> bytes:
    """The stdlib encoder: it writes any integer, NaN/Infinity (not JSON) and, unescaped,
    lone surrogates as the bytes Python would (not UTF-8)."""
    text = json.dumps(record, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


GROUP = st.text(max_size=12)
WELL_FORMED = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just(1),
            "target": st.sampled_from(["JoinGroup", "LeaveGroup", "leavegroup", "Other"]),
            "arguments": st.lists(GROUP, max_size=2),
        },
        optional={"invocationId": st.text(max_size=6)},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just(4),
            "invocationId": st.text(max_size=6),
            "target": GROUP,
            "arguments": st.lists(JSON_VALUES, max_size=2),
        }
    ),
    st.fixed_dictionaries({"type": st.sampled_from([2, 3, 5]), "invocationId": GROUP}),
    st.fixed_dictionaries({"type": st.sampled_from([8, 9]), "sequenceId": st.integers()}),
    st.just({"type": 6}),
)


@st.composite
def record_bytes(draw: st.DrawFn) -> bytes:
    """Known-nasty input, random bytes, random records, and well-formed ones (so that
    later records meet a connection in some state: in groups, after a refused stream)."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.sampled_from(NASTY))
    if choice == 1:
        return draw(st.binary(max_size=64))
    if choice in (2, 3):
        return _encode(draw(RECORDS), ascii_only=draw(st.booleans()))
    return _encode(draw(WELL_FORMED), ascii_only=True)


@st.composite
def signalr_frames(draw: st.DrawFn) -> list[tuple[bytes, bool]]:
    """Records (each with its separator, or not), cut into frames anywhere; each frame
    text or binary. A text frame may carry invalid UTF-8 (the gateway must close 1007)."""
    stream = b"".join(
        record + (RS if draw(st.integers(0, 5)) else b"")
        for record in draw(st.lists(record_bytes(), min_size=1, max_size=5))
    )
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=4))))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return [(chunk, draw(st.booleans())) for chunk in chunks or [stream]]


# ---------------------------------------------------------------- a raw client


class RawSocket(asyncio.Protocol):
    """A TCP client that keeps every byte the server sent, even after the connection broke
    (a stream reader raises its error before returning what it had buffered), and never
    fails on a write to a connection the server has ended."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.changed = asyncio.Event()
        self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.changed.set()

    def eof_received(self) -> bool | None:
        self.lost = True
        self.changed.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.changed.set()

    async def wait(self) -> None:
        """Until more data arrives or the connection ends."""
        await self.changed.wait()
        self.changed.clear()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def read_until(self, separator: bytes) -> bytes:
        while (end := self.buffer.find(separator)) < 0:
            if self.lost:
                raise AssertionError(f"connection closed; got {bytes(self.buffer)!r}")
            await self.wait()
        head = bytes(self.buffer[: end + len(separator)])
        del self.buffer[: end + len(separator)]
        return head

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete frame from the server (opcode, payload), if it has arrived.
        The server's frames are unmasked, unfragmented and have no RSV bits."""
        buf = self.buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        assert first & 0xF0 == 0x80 and not second & 0x80, f"bad server frame {bytes(buf[:4])!r}"
        length, start = second & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,), start = struct.unpack("!H", buf[2:4]), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,), start = struct.unpack("!Q", buf[2:10]), 10
        if len(buf) < start + length:
            return None
        payload = bytes(buf[start : start + length])
        del buf[: start + length]
        return first & 0x0F, payload


async def upgrade(gw: Gateway, token: str) -> RawSocket:
    """A raw TCP connection, upgraded to a WebSocket on the chat hub (skipping negotiate)."""
    host, port = gw.proc.host, gw.proc.port
    assert port is not None
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_connection(RawSocket, host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.write(
        f"GET /hubs/chat?access_token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await sock.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    length_form: int = 7,
    mask_key: bytes = b"\x12\x34\x56\x78",
) -> bytes:
    """A client frame, right or wrong: ``length`` may claim more than ``payload`` holds,
    ``length_form`` forces a 16- or 64-bit length field for a small payload."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    mask_bit = 0x80 if masked else 0
    if n < 126 and length_form == 7:
        head += bytes([mask_bit | n])
    elif n < 65536 and length_form in (7, 16):
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    body = bytes(b ^ mask_key[i % 4] for i, b in enumerate(payload))
    return head + mask_key + body


TEXT, BINARY, CLOSE = 1, 2, 8


@dataclass
class Verdict:
    kept: bool  # the probe was answered: the connection still works
    close_code: int | None = None  # the code of the server's Close frame
    records: list[bytes] | None = None  # the SignalR records received


async def verdict(sock: RawSocket) -> Verdict:
    """Read until the probe's Completion (kept) or the server's Close frame (closed); a
    connection that ends without a Close frame is a failure, and so is waiting forever
    (the caller's timeout)."""
    records: list[bytes] = []
    while True:
        while (frame := sock.next_frame()) is not None:
            opcode, payload = frame
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return Verdict(False, code, records)
            if opcode == TEXT:
                for record in payload.split(RS)[:-1]:
                    records.append(record)
                    message = orjson.loads(record)  # the server writes only valid JSON
                    if message.get("type") == 3 and message.get("invocationId") == PROBE_ID:
                        return Verdict(True, None, records)
            else:
                assert opcode in (9, 10), f"unexpected server frame opcode {opcode}"
        if sock.lost:
            raise AssertionError(
                f"the gateway ended the connection without a Close frame; records {records}"
            )
        await sock.wait()


def check(outcome: Verdict) -> None:
    """Kept, or closed with a Close frame whose code is a protocol verdict, never 1011
    (an internal error): 1000 (SignalR Close or refused handshake), 1002 (protocol error),
    1007 (invalid UTF-8), 1009 (too big), or the client's own code echoed back."""
    if outcome.kept:
        return
    assert outcome.close_code != 1011, outcome


async def finish(sock: RawSocket, outcome: Verdict) -> None:
    """Leave politely after a kept connection (our Close), then drop the socket."""
    if outcome.kept:
        sock.write(encode_frame(CLOSE, struct.pack("!H", 1000)))
    sock.close()


async def signalr_example(
    gw: Gateway, frames: list[tuple[bytes, bool]], handshake: bool
) -> Verdict:
    sock = await upgrade(gw, client_token("fuzzer", JOINER))
    try:
        if handshake:
            sock.write(encode_frame(TEXT, HANDSHAKE))
            answer = await verdict_of_handshake(sock)
            assert answer == b"{}" + RS, answer
        for data, text in frames:
            sock.write(encode_frame(TEXT if text else BINARY, data))
        sock.write(encode_frame(TEXT, PROBE))
        outcome = await verdict(sock)
        await finish(sock, outcome)
        return outcome
    finally:
        sock.close()


async def verdict_of_handshake(sock: RawSocket) -> bytes:
    while (frame := sock.next_frame()) is None:
        assert not sock.lost, "connection closed during the SignalR handshake"
        await sock.wait()
    return frame[1]


@fuzz_settings(200)
@given(frames=signalr_frames(), handshake=st.integers(0, 7).map(lambda n: n < 7))
@example(frames=[(b"[" * 5000 + RS, True)], handshake=True)
@example(frames=[(b'{"type":' + b"9" * 400 + b"}" + RS, True)], handshake=True)
@example(frames=[(b'{"type":1,"target":"\xc3\x28","arguments":[]}' + RS, True)], handshake=True)
@example(frames=[(b'{"type":1,"target":"\xc3\x28","arguments":[]}' + RS, False)], handshake=True)
@example(frames=[(b'{"type":6}', True), (RS, True)], handshake=True)
@example(frames=[(b"[" * (MAX_MESSAGE_SIZE + 10) + RS, False)], handshake=True)
@example(
    frames=[(b'{"type":1,"target":"JoinGroup","arguments":["g"]}' + RS, True)], handshake=False
)
@example(frames=[(b'{"type":7}' + RS, True)], handshake=True)
def test_signalr_records(
    gateway: Gateway, frames: list[tuple[bytes, bool]], handshake: bool
) -> None:
    async def run() -> Verdict:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            return await signalr_example(gateway, frames, handshake)

    gateway.run(run())


# ---------------------------------------------------------------- raw WebSocket frames

# The client's Close codes, valid or not; never 1011, which the gateway would echo and which
# is what it sends when it fails internally (the one code the verdict refuses).
CLOSE_CODES = st.one_of(
    st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 3000, 4999]),  # valid
    st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]),  # not
    st.integers(0, 65535),
).filter(lambda code: code != 1011)
REASONS = st.one_of(
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=20),  # mostly invalid UTF-8
    st.just(b"\xc3\x28"),
    st.just(b"x" * 200),  # a Close over 125 bytes
)


@st.composite
def raw_frame(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One client frame, valid or not; True if it claims a length beyond the frame limit
    (nothing after it can be read as a frame)."""
    opcode = draw(st.sampled_from([0, 1, 2, 8, 9, 10]) | st.integers(0, 15))
    if opcode == CLOSE and draw(st.booleans()):
        payload = struct.pack("!H", draw(CLOSE_CODES)) + draw(REASONS)
    elif opcode in (9, 10) and draw(st.integers(0, 3)) == 0:
        payload = b"p" * draw(st.integers(126, 300))  # a control frame over 125 bytes
    elif opcode in (1, 0) and draw(st.booleans()):
        payload = draw(st.sampled_from([PROBE[:-1], b'{"type":6}', RS, b"\xc3", b"\x28"]))
    else:
        payload = draw(st.binary(max_size=200))
    huge = draw(st.integers(0, 9)) == 0
    length = (
        draw(st.sampled_from([MAX_FRAME_SIZE + 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]))
        if huge
        else None
    )
    frame = encode_frame(
        opcode,
        payload,
        fin=draw(st.integers(0, 3)) > 0,
        rsv=draw(st.integers(0, 7)) if draw(st.integers(0, 4)) == 0 else 0,
        masked=draw(st.integers(0, 9)) > 0,
        length=length,
        length_form=draw(st.sampled_from([7, 7, 16, 64])),
        mask_key=draw(st.binary(min_size=4, max_size=4)),
    )
    return frame, huge


@st.composite
def raw_frames(draw: st.DrawFn) -> list[bytes]:
    """Up to 6 frames; none after one that claims a huge length."""
    frames: list[bytes] = []
    for frame, huge in draw(st.lists(raw_frame(), min_size=1, max_size=6)):
        frames.append(frame)
        if huge:
            break
    return frames


async def raw_example(gw: Gateway, frames: list[bytes], handshake: bool, pieces: int) -> Verdict:
    """The frames written in ``pieces`` writes (split anywhere), then the probe."""
    sock = await upgrade(gw, client_token("fuzzer", JOINER))
    try:
        if handshake:
            sock.write(encode_frame(TEXT, HANDSHAKE))
            answer = await verdict_of_handshake(sock)
            assert answer == b"{}" + RS, answer
        data = b"".join(frames)
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            sock.write(data[start : start + step])
            await asyncio.sleep(0)  # let each piece go out on its own
        sock.write(encode_frame(TEXT, PROBE))
        outcome = await verdict(sock)
        await finish(sock, outcome)
        return outcome
    finally:
        sock.close()


@fuzz_settings(300)
@given(
    frames=raw_frames(),
    handshake=st.integers(0, 7).map(lambda n: n < 7),
    pieces=st.integers(1, 4),
)
@example(frames=[encode_frame(0x3, b"reserved opcode")], handshake=True, pieces=1)
@example(frames=[encode_frame(TEXT, b'{"type":6}\x1e', rsv=4)], handshake=True, pieces=1)
@example(frames=[encode_frame(TEXT, b'{"type":6}\x1e', masked=False)], handshake=True, pieces=1)
@example(frames=[encode_frame(9, b"p" * 126)], handshake=True, pieces=1)
@example(frames=[encode_frame(TEXT, b"x", length=2**63 - 1)], handshake=True, pieces=1)
@example(frames=[encode_frame(BINARY, b"x", length=MAX_FRAME_SIZE + 1)], handshake=False, pieces=1)
@example(frames=[encode_frame(CLOSE, struct.pack("!H", 1005))], handshake=True, pieces=1)
@example(frames=[encode_frame(CLOSE, struct.pack("!H", 1000) + b"\xff")], handshake=True, pieces=1)
@example(frames=[encode_frame(CLOSE, b"\x03")], handshake=True, pieces=1)
@example(frames=[encode_frame(TEXT, b'{"type":', fin=False)], handshake=True, pieces=1)
@example(
    frames=[
        encode_frame(TEXT, b'{"type":', fin=False),
        encode_frame(9, b"ping"),
        encode_frame(0, b"6}\x1e"),
    ],
    handshake=True,
    pieces=3,
)
@example(frames=[encode_frame(0, b"continuation first")], handshake=True, pieces=1)
@example(
    frames=[encode_frame(TEXT, b"\xc3", fin=False), encode_frame(0, b"\x28")],
    handshake=True,
    pieces=2,
)
def test_raw_frames(gateway: Gateway, frames: list[bytes], handshake: bool, pieces: int) -> None:
    async def run() -> Verdict:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            return await raw_example(gateway, frames, handshake, pieces)

    gateway.run(run())


# ---------------------------------------------------------------- afterwards


def test_the_gateway_still_serves_after_the_fuzzing(gateway: Gateway) -> None:
    """Last in this module: the fuzz tests above ran against this process."""
    asyncio.run(still_serves(gateway))
    gateway.check_log()
    assert "Traceback" not in gateway.proc.output()
