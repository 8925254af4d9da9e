"""A bare SignalR JSON client on ``websockets``, for tests that must send bad input on purpose
or read exactly what the server wrote. Official clients are tested in ``tests/e2e``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from hubbub.tokens import mint_token

from .processes import ACCESS_KEY

RS = b"\x1e"


def client_token(
    user: str | None = None, roles: list[str] | None = None, key: str = ACCESS_KEY
) -> str:
    return mint_token(key, "http://test/client", user_id=user, roles=roles)


class RawClient:
    def __init__(self, ws: ClientConnection, connection_id: str | None) -> None:
        self.ws = ws
        self.connection_id = connection_id
        self._pending: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        base: str,
        hub: str = "chat",
        token: str | None = None,
        handshake: bool = True,
        negotiate: bool = True,
        negotiate_base: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> RawClient:
        """Negotiate at ``negotiate_base`` (default ``base``), then open the socket at ``base``.
        ``http`` is reused for negotiate when given (a new client per call costs CPU)."""
        token = token if token is not None else client_token()
        connection_id = None
        query = f"access_token={token}"
        if negotiate:
            url = f"{negotiate_base or base}/hubs/{hub}/negotiate?negotiateVersion=1"
            headers = {"Authorization": f"Bearer {token}"}
            if http is not None:
                r = await http.post(url, headers=headers)
            else:
                async with httpx.AsyncClient() as own:
                    r = await own.post(url, headers=headers)
            r.raise_for_status()
            body = r.json()
            connection_id = body["connectionId"]
            query += f"&id={body['connectionToken']}"
        ws_url = base.replace("http://", "ws://") + f"/hubs/{hub}?{query}"
        ws = await websockets.connect(ws_url, max_size=None, ping_interval=None)
        client = cls(ws, connection_id)
        if handshake:
            await client.send_raw(b'{"protocol":"json","version":1}' + RS)
            answer = await client.recv()
            assert answer == {}, answer
        return client

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data.decode() if isinstance(data, bytes) else data)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send((orjson.dumps(message) + RS).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next record, skipping Pings."""
        while True:
            if not self._pending:
                frame = await asyncio.wait_for(self.ws.recv(), timeout)
                data = frame.encode() if isinstance(frame, str) else frame
                self._pending = [orjson.loads(r) for r in data.split(RS) if r]
            message = self._pending.pop(0)
            if message.get("type") != 6:
                return message

    async def invoke(self, target: str, *args: Any, invocation_id: str = "1") -> dict[str, Any]:
        await self.send(
            {"type": 1, "invocationId": invocation_id, "target": target, "arguments": list(args)}
        )
        while True:
            message = await self.recv()
            if message.get("type") == 3 and message.get("invocationId") == invocation_id:
                return message

    async def close(self) -> None:
        await self.ws.close()
