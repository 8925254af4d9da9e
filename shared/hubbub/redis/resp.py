"""RESP2 without I/O: commands to bytes, bytes to replies.

The hot path (publish appends, the worker's reads and deliveries, the gateway's inbox reads)
speaks to Redis through :class:`hubbub.redis.pipe.Pipe`, which is this module plus a socket. Parsing
is hiredis's; error replies come back as :class:`redis.exceptions.ResponseError` instances, so
callers handle the same exceptions as with redis-py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import hiredis
from redis.exceptions import InvalidResponse, ResponseError

Arg = bytes | str | int | float
Command = Sequence[Arg]


def _encode(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):  # a bool is an int: refuse it rather than send "True"
        raise TypeError("bool is not a Redis argument")
    if isinstance(arg, int | float):
        return repr(arg).encode()
    raise TypeError(f"{type(arg).__name__} is not a Redis argument")


def bulk(args: Iterable[Arg]) -> bytes:
    """Arguments as RESP bulk strings, without the array header: see :class:`Prefix`."""
    out = []
    for arg in args:
        if arg.__class__ is not bytes:
            arg = _encode(arg)
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def pack(command: Command) -> bytes:
    """One command as a RESP array of bulk strings."""
    return b"*%d\r\n%b" % (len(command), bulk(command))


def pack_many(commands: Iterable[Command]) -> bytes:
    return b"".join(pack(c) for c in commands)


class Prefix:
    """The first arguments of many commands (``XADD key MAXLEN ~ n *``), packed once."""

    __slots__ = ("count", "data")

    def __init__(self, *args: Arg) -> None:
        self.count = len(args)
        self.data = bulk(args)

    def pack(self, args: Sequence[Arg]) -> bytes:
        """The prefix and then ``args``, as one command."""
        return b"*%d\r\n%b%b" % (self.count + len(args), self.data, bulk(args))


class Replies:
    """Feed bytes as they arrive; iterate over the replies they complete."""

    __slots__ = ("_reader",)

    def __init__(self) -> None:
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)

    def __iter__(self) -> Iterator[object]:
        gets = self._reader.gets
        while (reply := gets()) is not False:
            yield reply


def stream_entries(raw: object) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """``[[id, [field, value, ...]], ...]`` as ``[(id, {field: value})]``.

    An entry deleted while pending comes back from ``XREADGROUP 0`` with no fields: ``{}``.
    """
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entry_id, flat in raw:  # type: ignore[attr-defined]
        it = iter(flat or ())
        entries.append((entry_id, dict(zip(it, it, strict=True))))
    return entries


def streams_reply(raw: object) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """An ``XREAD``/``XREADGROUP`` reply (``None`` on timeout) as ``[(stream, entries)]``."""
    if raw is None:
        return []
    return [(stream, stream_entries(entries)) for stream, entries in raw]  # type: ignore[attr-defined]


def first_error(replies: Sequence[object]) -> ResponseError | None:
    for reply in replies:
        if isinstance(reply, ResponseError):
            return reply
    return None
