"""Publish from Python straight into the publish stream, without the REST hop.

For internal Python services that can reach Redis: the same messages, ids,
ordering and guarantees as the REST API (a returned id means the message is stored), the way
python-socketio's write-only ``AsyncRedisManager`` or Azure's transient SDK mode serve theirs.
Messages are built by the REST edge's own :func:`~hubbub.wire.messages.build_message`, so
what REST refuses with a 400 this refuses with the same error
(:class:`~hubbub.protocol.names.InvalidName`, :class:`~hubbub.wire.messages.InvalidArguments`,
:class:`~hubbub.wire.messages.TooManyExcluded`),
before anything is written. There is no caller authentication: whoever can write to Redis is
trusted, so keep it inside the cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hubbub.protocol import names
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.pipe import Pipe
from hubbub.redis.stream import PublishStream
from hubbub.settings import Settings
from hubbub.telemetry import current_traceparent
from hubbub.wire.envelopes import Kind
from hubbub.wire.messages import build_message


class Publisher:
    """``async with Publisher.from_settings(Settings()) as p: await p.send_to_all(...)``"""

    def __init__(self, pipe: Pipe, settings: Settings, hub: str) -> None:
        self.pipe = pipe
        self.hub = names.hub_name(hub)
        self.max_excluded = settings.max_excluded
        self.stream = PublishStream.from_settings(pipe, settings)

    @classmethod
    def from_settings(cls, settings: Settings, hub: str) -> Publisher:
        return cls(Pipe(RedisEndpoint.from_settings(settings, "hubbub-publisher")), settings, hub)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.pipe.aclose()

    async def _send(
        self,
        kind: Kind,
        target: str,
        method: str,
        arguments: Sequence[Any],
        excluded: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> str:
        message = build_message(
            kind,
            self.hub,
            target,
            method,
            list(arguments),
            excluded,
            max_excluded=self.max_excluded,
            traceparent=current_traceparent(),
        )
        if idempotency_key is not None:
            idempotency_key = names.idempotency_key(idempotency_key)
        return await self.stream.append(message, idempotency_key)

    # ``idempotency_key``: the same key within HUBBUB_IDEMPOTENCY_WINDOW answers the first
    # message id and appends nothing, so a call retried after a lost answer sends once.

    async def send_to_all(
        self,
        method: str,
        arguments: Sequence[Any] = (),
        excluded: Sequence[str] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._send(Kind.ALL, "", method, arguments, excluded, idempotency_key)

    async def send_to_group(
        self,
        group: str,
        method: str,
        arguments: Sequence[Any] = (),
        excluded: Sequence[str] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._send(Kind.GROUP, group, method, arguments, excluded, idempotency_key)

    async def send_to_user(
        self,
        user: str,
        method: str,
        arguments: Sequence[Any] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._send(Kind.USER, user, method, arguments, (), idempotency_key)

    async def send_to_connection(
        self,
        connection: str,
        method: str,
        arguments: Sequence[Any] = (),
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return await self._send(Kind.CONNECTION, connection, method, arguments, (), idempotency_key)
