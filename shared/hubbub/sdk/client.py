"""A small async client for Hubbub's REST API, used by ``hubbub send`` and the tests.

It signs each request with a short-lived JWT whose ``aud`` is the request URL, the way the
Azure SignalR Management SDK does, so it works against any gateway.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from hubbub.tokens import mint_token


class HubbubError(httpx.HTTPStatusError):
    """A gateway refused a call: its status and its ``{"code", "message"}`` body.

    A subclass of ``httpx.HTTPStatusError``, so callers catching that keep working;
    ``str()`` reads ``404 Error.Connection.NotFound: connection ... does not exist``.
    ``code`` and ``message`` are ``None`` when the body is not Hubbub's (a proxy's page)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.code: str | None = None
        self.message: str | None = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            code, message = body.get("code"), body.get("message")
            self.code = code if isinstance(code, str) else None
            self.message = message if isinstance(message, str) else None
        if self.code is not None:
            text = f"{self.status_code} {self.code}: {self.message or ''}".rstrip(": ")
        else:
            text = f"{self.status_code} {response.reason_phrase}".rstrip()
        super().__init__(text, request=response.request, response=response)


def raise_for_status(response: httpx.Response) -> httpx.Response:
    """``response`` if it is a success, else :class:`HubbubError` (body read first)."""
    if response.is_success:
        return response
    raise HubbubError(response)


class ServiceAuth(httpx.Auth):
    """Signs each request for its URL: ``aud`` is the URL without its query, except
    ``application``, which names part of the hub (docs/security.md, "Audiences")."""

    def __init__(self, access_key: str) -> None:
        self.access_key = access_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        application = request.url.params.get_list("application")
        query = urlencode({"application": application[-1]}) if application else None
        audience = str(request.url.copy_with(query=query.encode() if query else None))
        token = mint_token(self.access_key, audience, minutes=5)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _q(name: str) -> str:
    return quote(name, safe="")


KEEPALIVE_EXPIRY = 2.0  # seconds; below the gateways' 5 s keep-alive timeout


class HubbubClient:
    """REST calls for one hub. ``async with HubbubClient(url, key, hub) as c: ...``"""

    def __init__(self, base_url: str, access_key: str, hub: str, *, timeout: float = 10.0) -> None:
        self.hub = hub
        # Gateways (uvicorn) close a keep-alive connection idle for 5 s, httpx's default expiry
        # too: a request sent on one just as the server closes it fails with "Server
        # disconnected without sending a response". Idle connections are dropped sooner here.
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=ServiceAuth(access_key),
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY),
        )

    async def __aenter__(self) -> HubbubClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    def _path(self, tail: str) -> str:
        return f"/api/hubs/{_q(self.hub)}{tail}"

    async def _send(
        self,
        tail: str,
        target: str,
        arguments: Sequence[Any],
        excluded: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> str:
        response = await self.http.post(
            self._path(tail),
            json={"target": target, "arguments": list(arguments)},
            params=[("excluded", c) for c in excluded],
            headers={"Idempotency-Key": idempotency_key} if idempotency_key else None,
        )
        raise_for_status(response)
        message_id: str = response.json()["messageId"]
        return message_id

    # ``idempotency_key``: sent again within HUBBUB_IDEMPOTENCY_WINDOW, the call answers the
    # first message id and sends nothing, so retrying after a lost answer is safe.

    async def send_to_all(
        self,
        target: str,
        arguments: Sequence[Any] = (),
        excluded: Sequence[str] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._send("/:send", target, arguments, excluded, idempotency_key)

    async def send_to_group(
        self,
        group: str,
        target: str,
        arguments: Sequence[Any] = (),
        excluded: Sequence[str] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        tail = f"/groups/{_q(group)}/:send"
        return await self._send(tail, target, arguments, excluded, idempotency_key)

    async def send_to_user(
        self,
        user: str,
        target: str,
        arguments: Sequence[Any] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        tail = f"/users/{_q(user)}/:send"
        return await self._send(tail, target, arguments, (), idempotency_key)

    async def send_to_connection(
        self,
        connection: str,
        target: str,
        arguments: Sequence[Any] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        tail = f"/connections/{_q(connection)}/:send"
        return await self._send(tail, target, arguments, (), idempotency_key)

    async def send_batch(self, messages: Sequence[dict[str, Any]]) -> list[str]:
        """Items: ``{"to": "all"|"group"|"user"|"connection", "name": ..., "target": ...,
        "arguments": [...], "excluded": [...], "idempotencyKey": ...}``. One request, one
        Redis round trip."""
        response = await self.http.post(self._path("/:batch"), json={"messages": list(messages)})
        raise_for_status(response)
        ids: list[str] = response.json()["messageIds"]
        return ids

    async def add_connection_to_group(self, group: str, connection: str) -> None:
        url = self._path(f"/groups/{_q(group)}/connections/{_q(connection)}")
        raise_for_status(await self.http.put(url))

    async def remove_connection_from_group(self, group: str, connection: str) -> None:
        url = self._path(f"/groups/{_q(group)}/connections/{_q(connection)}")
        raise_for_status(await self.http.delete(url))

    async def add_user_to_group(self, group: str, user: str, ttl: int | None = None) -> None:
        params = {"ttl": ttl} if ttl is not None else {}
        url = self._path(f"/users/{_q(user)}/groups/{_q(group)}")
        raise_for_status(await self.http.put(url, params=params))

    async def remove_user_from_group(self, group: str, user: str) -> None:
        url = self._path(f"/users/{_q(user)}/groups/{_q(group)}")
        raise_for_status(await self.http.delete(url))

    async def remove_user_from_all_groups(self, user: str) -> None:
        raise_for_status(await self.http.delete(self._path(f"/users/{_q(user)}/groups")))

    async def close_connection(self, connection: str, reason: str | None = None) -> None:
        params = {"reason": reason} if reason else {}
        url = self._path(f"/connections/{_q(connection)}")
        raise_for_status(await self.http.delete(url, params=params))

    async def _exists(self, tail: str) -> bool:
        response = await self.http.head(self._path(tail))
        if response.status_code == 404:
            return False
        raise_for_status(response)
        return True

    async def connection_exists(self, connection: str) -> bool:
        return await self._exists(f"/connections/{_q(connection)}")

    async def user_exists(self, user: str) -> bool:
        return await self._exists(f"/users/{_q(user)}")

    async def group_exists(self, group: str) -> bool:
        return await self._exists(f"/groups/{_q(group)}")

    async def user_in_group(self, group: str, user: str) -> bool:
        return await self._exists(f"/users/{_q(user)}/groups/{_q(group)}")

    async def generate_token(
        self, user_id: str | None = None, minutes: int = 60, roles: Sequence[str] = ()
    ) -> str:
        params: list[tuple[str, str | int | float | bool | None]] = [("minutesToExpire", minutes)]
        if user_id is not None:
            params.append(("userId", user_id))
        params += [("role", r) for r in roles]
        response = await self.http.post(self._path("/:generateToken"), params=params)
        raise_for_status(response)
        token: str = response.json()["token"]
        return token
