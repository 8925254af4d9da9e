"""``hubbub.wire.messages.build_message``, which every publisher uses, and the bearer parser:
what they accept, what they refuse, with which error, in which order. (No Redis needed: the
Publisher refuses before it writes anything.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from hubbub.protocol.names import InvalidName
from hubbub.protocol.signalr import encode_invocation
from hubbub.redis.pipe import Pipe
from hubbub.sdk.publisher import Publisher
from hubbub.settings import Settings
from hubbub.tokens import bearer
from hubbub.wire.envelopes import Kind, MessageEntry, Op
from hubbub.wire.messages import InvalidArguments, build_message

CONN_ID = "connection id must be 1-128 characters of A-Z a-z 0-9 _ -"


def test_a_message_carries_its_frame_encoded_once() -> None:
    message = build_message(Kind.GROUP, "chat", "room", "news", [1, "two"], ["a", "b"], "tp")
    assert message == MessageEntry(
        Kind.GROUP, "chat", "room", encode_invocation("news", [1, "two"]), ("a", "b"), "tp"
    )
    # A broadcast has no recipient: its target is ignored, as the REST batch always did.
    assert build_message(Kind.ALL, "chat", "ignored", "m", ()).target == ""


@pytest.mark.parametrize(
    ("kind", "target", "method", "arguments", "excluded", "error", "text"),
    [
        (Kind.USER, "u", "m", [], ["c"], InvalidName, "'excluded' applies to 'all' and 'group'"),
        (Kind.CONNECTION, "bad id", "m", [], ["c"], InvalidName, "'excluded' applies"),
        (Kind.GROUP, " ", "", [2**70], ["bad id"], InvalidName, "group name must be"),
        (Kind.USER, "", "m", [], [], InvalidName, "user id must be"),
        (Kind.CONNECTION, "a/b", "m", [], [], InvalidName, CONN_ID),
        (Kind.ALL, "", "m", [2**70], ["ok", ""], InvalidName, CONN_ID),
        (Kind.GROUP, "g", "", [2**70], [], InvalidName, "method name must be 1-1024 characters"),
        (Kind.ALL, "", "m" * 1025, [], [], InvalidName, "method name must be"),
        (Kind.ALL, "", 5, [], [], InvalidName, "method name must be"),
        (Kind.ALL, "", "m", {"a": 1}, [], InvalidArguments, "arguments: must be a list"),
        (Kind.ALL, "", "m", [2**70], [], InvalidArguments, "arguments: Integer exceeds 64-bit"),
        (Kind.ALL, "", "m", [{1, 2}], [], InvalidArguments, "arguments: Type is not JSON"),
        (Op.JOIN, "g", "m", [], [], ValueError, "<Op.JOIN: b'J'> is not a message kind"),
    ],
)  # fmt: skip
def test_refusals_in_order(
    kind: Kind,
    target: str,
    method: Any,
    arguments: Any,
    excluded: Sequence[str],
    error: type[Exception],
    text: str,
) -> None:
    with pytest.raises(error) as raised:
        build_message(kind, "chat", target, method, arguments, excluded)
    assert str(raised.value).startswith(text)


async def test_the_publisher_refuses_before_writing() -> None:
    """Nothing listens at this address: each call fails on its message, not on Redis."""
    pipe = Pipe.from_url("redis://127.0.0.1:9/0")
    async with Publisher(pipe, Settings(), "Chat") as publisher:
        with pytest.raises(InvalidName, match="method name"):
            await publisher.send_to_all("")
        with pytest.raises(InvalidName, match="connection id"):
            await publisher.send_to_group("g", "m", excluded=["bad id"])
        with pytest.raises(InvalidName, match="user id"):
            await publisher.send_to_user(" ", "m")
        with pytest.raises(InvalidArguments, match="64-bit"):
            await publisher.send_to_connection("c", "m", [2**70])


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer ", ""),
        ("Basic abc", None),
        ("Bearerabc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer(header: str | None, token: str | None) -> None:
    assert bearer(header) == token
