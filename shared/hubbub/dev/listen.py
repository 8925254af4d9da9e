"""``hubbub listen``: a terminal SignalR client, to see messages without Node.

It negotiates, opens the WebSocket (the ``websockets`` asyncio client), shakes hands in the
JSON hub protocol, joins the groups it was asked to, then prints every Invocation it receives
as one JSON line on stdout (``{"target": ..., "arguments": [...]}``) and answers pings. Status
goes to stderr, so stdout can be piped to ``jq``. The records are read and written with the
sans-I/O helpers of :mod:`hubbub.protocol.signalr` (its parser reads any hub message, whichever
side sent it); this module only adds the client's side of the handshake.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from hubbub.protocol.signalr import (
    PING_RECORD,
    RS,
    Close,
    Completion,
    Invocation,
    Ping,
    ProtocolError,
    RecordBuffer,
    encode_invocation,
    parse_message,
)
from hubbub.tokens import mint_token

HANDSHAKE = orjson.dumps({"protocol": "json", "version": 1}) + RS
MAX_RECORD = 16 * 1024 * 1024  # what this client will buffer of one record
PING_EVERY = 15.0  # seconds; the gateway closes a client silent for its client_timeout (30)
JOIN_ROLE = "hubbub.joinLeaveGroup"


class ListenError(Exception):
    """The gateway refused or closed the connection: one line for stderr says why."""


@dataclass
class Listener:
    """One connection's options. ``out`` gets the JSON lines, ``err`` the status lines."""

    url: str
    hub: str
    access_key: str
    user: str | None = None
    groups: list[str] = field(default_factory=list)
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr

    def token(self) -> str:
        """A client token minted with the access key (as ``hubbub token`` does), with the
        role to join each of :attr:`groups` and nothing more."""
        roles = [f"{JOIN_ROLE}.{group}" for group in self.groups]
        return mint_token(
            self.access_key,
            f"{self.url.rstrip('/')}/client",
            user_id=self.user,
            hub=self.hub.lower(),
            roles=roles or None,
        )

    async def negotiate(self, token: str) -> str:
        """The WebSocket URL of a new connection (negotiate version 1)."""
        base = self.url.rstrip("/")
        url = f"{base}/hubs/{quote(self.hub, safe='')}/negotiate?negotiateVersion=1"
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.post(url, headers={"Authorization": f"Bearer {token}"})
        shown = " ".join(response.text.split())[:300]  # one line, bounded
        if response.status_code != 200:
            raise ListenError(f"negotiate answered {response.status_code}: {shown}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ListenError(f"negotiate answered no JSON object: {shown}")
        connection = body.get("connectionToken") or body.get("connectionId")
        if not isinstance(connection, str):
            raise ListenError(f"negotiate answered no connection token: {shown}")
        parts = urlsplit(base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = f"{parts.path}/hubs/{quote(self.hub, safe='')}"
        query = urlencode({"id": connection, "access_token": token})
        return urlunsplit((scheme, parts.netloc, path, query, ""))

    async def run(self) -> None:
        """Until the gateway closes the connection (then :class:`ListenError`) or the task is
        cancelled (Ctrl-C)."""
        token = self.token()
        ws_url = await self.negotiate(token)
        async with connect(ws_url, max_size=MAX_RECORD, compression=None) as ws:
            records = RecordBuffer(MAX_RECORD)
            await ws.send(HANDSHAKE)
            early = await self._handshake(ws, records)
            who = f"user {self.user!r}" if self.user else "an anonymous client"
            print(f"connected to hub {self.hub!r} as {who}", file=self.err, flush=True)
            joins = {f"join-{n}": group for n, group in enumerate(self.groups)}
            for invocation_id, group in joins.items():
                await ws.send(encode_invocation("JoinGroup", [group], invocation_id))
            pinger = asyncio.create_task(_ping(ws))
            try:
                for record in early:
                    await self._handle(ws, record, joins)
                await self._receive(ws, records, joins)
            finally:
                pinger.cancel()

    async def _handshake(self, ws: ClientConnection, records: RecordBuffer) -> list[bytes]:
        while True:
            frame = await ws.recv()
            parts = records.feed(frame.encode() if isinstance(frame, str) else frame)
            if parts:
                try:
                    answer = orjson.loads(parts[0])
                except orjson.JSONDecodeError:
                    raise ListenError("the handshake answer is not JSON") from None
                if not isinstance(answer, dict):
                    raise ListenError("the handshake answer is not a JSON object")
                if answer.get("error"):
                    raise ListenError(f"handshake refused: {answer['error']}")
                return parts[1:]

    async def _receive(
        self, ws: ClientConnection, records: RecordBuffer, pending: dict[str, str]
    ) -> None:
        try:
            async for frame in ws:
                for record in records.feed(frame.encode() if isinstance(frame, str) else frame):
                    await self._handle(ws, record, pending)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            raise ListenError(f"connection closed (WebSocket code {code})") from None
        raise ListenError("connection closed")

    async def _handle(self, ws: ClientConnection, record: bytes, pending: dict[str, str]) -> None:
        try:
            message = parse_message(record)
        except ProtocolError as exc:
            print(f"ignored a record: {exc}", file=self.err, flush=True)
            return
        if isinstance(message, Invocation):
            line = orjson.dumps({"target": message.target, "arguments": message.arguments})
            print(line.decode(), file=self.out, flush=True)
        elif isinstance(message, Ping):
            await ws.send(PING_RECORD)
        elif isinstance(message, Completion) and message.invocation_id in pending:
            group = pending.pop(message.invocation_id)
            if message.error is not None:
                raise ListenError(f"cannot join group {group!r}: {message.error}")
            print(f"joined group {group!r}", file=self.err, flush=True)
        elif isinstance(message, Close):
            raise ListenError(f"closed by the gateway: {message.error or 'no reason given'}")


async def _ping(ws: ClientConnection) -> None:
    """Keep the connection alive whether or not messages come."""
    while True:
        await asyncio.sleep(PING_EVERY)
        await ws.send(PING_RECORD)


def listen(listener: Listener) -> int:
    """Run ``listener`` until Ctrl-C (exit 0, quietly) or a refusal (one line, exit 1)."""
    try:
        asyncio.run(listener.run())
    except KeyboardInterrupt:
        return 0
    except (ListenError, ProtocolError) as exc:
        print(f"hubbub listen: {exc}", file=listener.err, flush=True)
        return 1
    except WebSocketException as exc:  # the upgrade was refused, or the peer broke WebSocket
        print(f"hubbub listen: {exc}", file=listener.err, flush=True)
        return 1
    except (httpx.TransportError, OSError) as exc:
        print(f"hubbub listen: cannot reach {listener.url}: {exc}", file=listener.err, flush=True)
        return 1
    return 0
