"""Publish from Python straight into the publish stream, without the REST hop.

For internal Python services that can reach Redis: the same messages, ids,
ordering and guarantees as the REST API (a returned id means the message is stored), the way
python-socketio's write-only ``AsyncRedisManager`` or Azure's transient SDK mode serve theirs.
Validation is the same as at the REST edge. There is no caller authentication: whoever can
write to Redis is trusted, so keep it inside the cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hubbub.protocol import names
from hubbub.protocol.signalr import encode_invocation
from hubbub.redis.endpoint import RedisEndpoint
from hubbub.redis.pipe import Pipe
from hubbub.redis.stream import PublishStream
from hubbub.settings import Settings
from hubbub.wire.envelopes import Kind, MessageEntry
from hubbub.wire.keys import KeySchema


class Publisher:
    """``async with Publisher.from_settings(Settings()) as p: await p.send_to_all(...)``"""

    def __init__(self, pipe: Pipe, settings: Settings, hub: str) -> None:
        self.pipe = pipe
        self.hub = names.hub_name(hub)
        self.stream = PublishStream(
            pipe,
            KeySchema(settings.key_prefix),
            settings.publish_partitions,
            settings.publish_stream_maxlen,
        )

    @classmethod
    def from_settings(cls, settings: Settings, hub: str) -> Publisher:
        return cls(Pipe(RedisEndpoint.from_settings(settings, "hubbub-publisher")), settings, hub)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.pipe.aclose()

    def _message(
        self,
        kind: Kind,
        target: str,
        method: str,
        arguments: Sequence[Any],
        excluded: Sequence[str],
    ) -> MessageEntry:
        for conn in excluded:
            names.connection_id(conn)
        frame = encode_invocation(method, list(arguments))
        return MessageEntry(kind, self.hub, target, frame, tuple(excluded))

    async def send_to_all(
        self, method: str, arguments: Sequence[Any] = (), excluded: Sequence[str] = ()
    ) -> str:
        return await self.stream.append(self._message(Kind.ALL, "", method, arguments, excluded))

    async def send_to_group(
        self, group: str, method: str, arguments: Sequence[Any] = (), excluded: Sequence[str] = ()
    ) -> str:
        target = names.group_name(group)
        return await self.stream.append(
            self._message(Kind.GROUP, target, method, arguments, excluded)
        )

    async def send_to_user(self, user: str, method: str, arguments: Sequence[Any] = ()) -> str:
        target = names.user_id(user)
        return await self.stream.append(self._message(Kind.USER, target, method, arguments, ()))

    async def send_to_connection(
        self, connection: str, method: str, arguments: Sequence[Any] = ()
    ) -> str:
        target = names.connection_id(connection)
        return await self.stream.append(
            self._message(Kind.CONNECTION, target, method, arguments, ())
        )
