"""Building a message: the checks every publisher passes, and its SignalR frame, encoded once.

The REST API (single sends and batches) and the Python publisher (:mod:`hubbub.sdk.publisher`)
both build their messages with :func:`build_message`, so they refuse the same things with the
same errors: :class:`~hubbub.protocol.names.InvalidName` for a bad recipient, excluded id or
method name, :class:`InvalidArguments` for arguments that JSON cannot carry,
:class:`TooManyExcluded` for more excluded ids than ``max_excluded``. The REST edge answers
each with a ``400``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from hubbub.protocol import names
from hubbub.protocol.signalr import encode_invocation
from hubbub.settings import DEFAULT_MAX_EXCLUDED
from hubbub.wire.envelopes import Kind, MessageEntry

MAX_METHOD_LENGTH = 1024  # the REST body model's ``target`` has the same bound
EXCLUDABLE = frozenset({Kind.ALL, Kind.GROUP})  # the kinds whose sends take ``excluded``

# How each kind's recipient is checked; a broadcast has none (its target is ignored).
_RECIPIENT: dict[Kind, Callable[[str], str] | None] = {
    Kind.ALL: None,
    Kind.GROUP: names.group_name,
    Kind.USER: names.user_id,
    Kind.CONNECTION: names.connection_id,
}


_SEQUENCES = (list, tuple)


class InvalidArguments(ValueError):
    """Arguments that cannot be sent as JSON, e.g. an integer beyond 64 bits or a set."""


class TooManyExcluded(ValueError):
    """More excluded connection ids than a send may carry (``HUBBUB_MAX_EXCLUDED``)."""


def build_message(
    kind: Kind,
    hub: str,
    target: str,
    method: str,
    arguments: list[Any] | tuple[Any, ...],
    excluded: Sequence[str] = (),
    traceparent: str | None = None,
    *,
    max_excluded: int = DEFAULT_MAX_EXCLUDED,
) -> MessageEntry:
    """Check a message and encode its frame; the envelope to append to the publish stream.

    ``hub`` is a canonical hub name (:func:`hubbub.protocol.names.hub_name`); ``target`` the
    group, user or connection id (ignored for :attr:`Kind.ALL`); ``method`` the client method
    to invoke. Checked in this order, the first failure raised: ``excluded`` only for ALL and
    GROUP, the target, the number of excluded ids (at most ``max_excluded``), each excluded id,
    the method name, the arguments.
    """
    try:
        check = _RECIPIENT[kind]
    except KeyError:
        raise ValueError(f"{kind!r} is not a message kind") from None
    if excluded and kind not in EXCLUDABLE:
        raise names.InvalidName("'excluded' applies to 'all' and 'group' only")
    recipient = check(target) if check is not None else ""
    if len(excluded) > max_excluded:
        raise TooManyExcluded(
            f"excluded: at most {max_excluded} connection ids per send, got {len(excluded)}"
        )
    for conn in excluded:
        names.connection_id(conn)
    if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LENGTH:
        raise names.InvalidName(f"method name must be 1-{MAX_METHOD_LENGTH} characters")
    if not isinstance(arguments, _SEQUENCES):
        raise InvalidArguments("arguments: must be a list")
    try:
        frame = encode_invocation(method, arguments)
    except orjson.JSONEncodeError as exc:
        raise InvalidArguments(f"arguments: {exc}") from None
    return MessageEntry(kind, hub, recipient, frame, tuple(excluded), traceparent)
